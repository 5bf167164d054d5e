#!/usr/bin/env bash
# tokentrust set-up: the system packages and the Python virtualenv the project needs.
# Idempotent and quick on a second call: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libnss3 libnss3-tools firefox-esr softhsm2 opensc openssl gcc libc6-dev python3-venv
              publicsuffix libkrb5-dev    # IE zones planner (registrable domains); pywinrm[kerberos] builds on krb5
              python3-cffi python3-cryptography   # the target side on the system Python (token test login)
              docker.io debootstrap               # the fleet lab (lab/fleet.py)
              pcscd vsmartcard-vpcd               # the lab card's reader (lab/reader.py, lab/piv_card.py)
              qemu-system-x86 qemu-utils e2fsprogs libcacard-dev)  # the VM lab (lab/vm.py, lab/vscard.py: VSCard)
STAMP_DIR=.stamps
VENV=.venv

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get: install them with your system's package manager, then run this again."
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  elif command -v sudo >/dev/null && [ -t 0 ]; then
    SUDO=(sudo)
  else
    die "missing packages: ${missing[*]}. Not root and no usable sudo: ask an administrator to run
    apt-get install -y ${missing[*]}
then run this again."
  fi
  say "installing system packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get could not install: ${missing[*]} (see the output above)."
else
  say "system packages present"
fi

# The fleet lab's containers need a running Docker daemon. Started here when it does not answer (no init
# system is assumed): host networking only, so no bridge and no iptables rules are made.
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    die "the Docker daemon does not answer and this user cannot start it: ask an administrator to start dockerd
(or add you to the docker group), then run this again."
  fi
  say "starting dockerd (log: /var/log/tokentrust-dockerd.log)"
  "${SUDO[@]}" sh -c 'nohup setsid dockerd --bridge=none --iptables=false --ip-masq=false \
      >>/var/log/tokentrust-dockerd.log 2>&1 </dev/null &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || die "dockerd did not start: see /var/log/tokentrust-dockerd.log"
else
  say "docker daemon running"
fi

mkdir -p "$STAMP_DIR"
req_sum=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP_DIR/venv" 2>/dev/null)" != "$req_sum" ]; then
  say "creating $VENV from requirements.txt"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  echo "$req_sum" > "$STAMP_DIR/venv"
else
  say "$VENV up to date"
fi
