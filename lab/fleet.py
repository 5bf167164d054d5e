"""The fleet lab: N real Debian 12 and/or 13 workstations as Docker containers, reached over SSH on 127.0.0.1.

    python -m lab.fleet create [--hosts 3] [--dir lab/fleet] [--inventory inventories/fleet]
                               [--suites bookworm,trixie | --mixed] [--key token|card]
    python -m lab.fleet destroy [--dir lab/fleet]
    python -m lab.fleet status [--dir lab/fleet]
    python -m lab.fleet image                      # only build (or find) the workstation image
    python -m lab.fleet firefox HOST USER          # start real Firefox as USER on HOST (a user's day)
    python -m lab.fleet stop HOST...               # switch workstations off (container killed: sshd gone at once)
    python -m lab.fleet start HOST...              # switch them on again (same container, port, key, profiles)

The images are built here, from Debian's own packages, one per release (SUITES: bookworm = Debian 12, trixie =
Debian 13): a `debootstrap --variant=minbase <suite>` rootfs imported into Docker, then Firefox ESR, softhsm2,
openssh-server, sudo, python3 and libnss3-tools (and on bookworm opensc: the trixie image leaves all of OpenSC to
site.yml) installed with apt, and the users made:

    admin      SSH key login (the fleet's key), passwordless sudo: what Ansible connects as
    alice      Firefox profiles in ~/.mozilla/firefox (the install's default + "work2"), made by Firefox
    bob        a Firefox profile in ~/.config/mozilla/firefox (Firefox's XDG layout for a fresh home)
    carol      never started Firefox (no profile)

System Python only; python3-cffi and python3-apt are NOT in the image (the roles install what they need);
hosts with an even number get a variant with python3-cffi installed, so both paths run.
Images are tagged by a hash of their recipe (suite, package list, script, this file's recipe version): a second
`create` reuses them, a changed recipe builds new ones. `create(suites=[...])` (CLI `--suites bookworm,trixie`,
or `--mixed`) makes a mixed fleet: host i runs suites[(i - 1) % len(suites)]; the manifest (`release`, `debian`)
and the inventory (host variable `tokentrust_lab_release`) record each host's release.

Network rule: every container runs with host networking (no bridge, no container address), and its sshd
listens on 127.0.0.1 only, on a port of its own. Everything goes to 127.0.0.1: SSH from the controller,
and the test page (lab/testpage.py, on the controller's 127.0.0.1) from the workstations.

The USB key of each workstation is its own SoftHSM2 token behind pin_guard (lab/token.py), made on the
controller under <dir>/tokens/<host>/ and mounted into that container at TOKEN_MOUNT: "the key plugged in"; and
its PIV card (lab/piv_card.py) in vpcd's reader. `key="card"` (CLI `--key card`, what `make demo` uses) writes lab
vars whose key is the card: no library named (site.yml installs OpenSC and each role resolves the library on the
host), the card's label and PIN for the test login.

Written under <dir> (git-ignored): fleet.json (the manifest), ssh/ (the admin key pair, known_hosts),
pki/, tokens/, testpage/, lab_vars.yml (the lab's stand-ins: CA list, token module, test page URL, lab
PIN; give it with `-e @<dir>/lab_vars.yml`). The inventory is a copy of inventories/example in which only
the hosts and their connection values differ.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from lab import build as labbuild
from lab import piv_card
from lab import reader as labreader
from lab import token as labtoken

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "lab" / "fleet"
DEFAULT_INVENTORY = ROOT / "inventories" / "fleet"
EXAMPLE_INVENTORY = ROOT / "inventories" / "example"
MANIFEST = "fleet.json"
SUITE = "bookworm"
SUITES = ("bookworm", "trixie")
DEBIAN = {"bookworm": "12", "trixie": "13"}
RECIPE_VERSION = 2
IMAGE_REPO = "tokentrust-fleet"
TOKEN_MOUNT = "/srv/tokentrust-lab/token"
TOKEN_MODULE = TOKEN_MOUNT + "/libpin_guard.so"
CARD_MODULE = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"  # what token_middleware_linux installs (Debian, amd64)
CARD_HOLDER_USER = "alice"  # the workstation user whose key the card is (polkit rule, Firefox login)
LABEL = "tokentrust.fleet"
PACKAGES = ("firefox-esr", "opensc", "softhsm2", "openssh-server", "sudo", "python3", "libnss3-tools",
            "ca-certificates")
# Per release. Checked with apt-cache policy inside both images: the names are the same on Debian 12 and 13 for
# everything the lab and the roles install (firefox-esr 153.8.0esr-1~deb12u1 / ~deb13u1; python3-cffi 1.15.1 / 1.17.1;
# libpcsclite1 1.9.9 / 2.3.3 and pcscd, libccid, opensc-pkcs11 0.23 / 0.26; polkitd 122 / 126, which pcscd 2.3.3
# Depends on; policykit-1 only exists on 12, as a transitional package, and nothing here names it). The trixie image
# has no opensc: site.yml installs all of OpenSC there.
SUITE_PACKAGES = {"bookworm": PACKAGES,
                  "trixie": tuple(p for p in PACKAGES if p != "opensc")}
CFFI_PACKAGES = ("python3-cffi",)
KEYS = ("token", "card")
USERS = {"alice": "mozilla", "bob": "xdg", "carol": None}  # user -> profile layout made by Firefox (None: never)
ADMIN = "admin"
# The card reader (lab/reader.py): Debian's vsmartcard-vpcd driver unpacked from its package without pcscd (pcscd,
# libccid and OpenSC are what site.yml installs), the bind-to-127.0.0.1 shim preloaded into pcscd by
# /etc/default/pcscd, and per host a reader.conf naming its own port (the containers share the host's network).
READER_PACKAGE = "vsmartcard-vpcd"
SHIM_PATH = "/usr/local/lib/tokentrust-lab/libvpcd_loopback.so"
READER_CONF = "/etc/reader.conf.d/vpcd"
FIREFOX_ENV = ("MOZ_HEADLESS=1", "MOZ_CRASHREPORTER_DISABLE=1", "MOZ_DISABLE_NONLOCAL_CONNECTIONS=1")

# Run inside the imported rootfs (host networking) to make the workstation image. $MIRROR comes from the
# controller's own apt sources. Profiles are made by Firefox itself, as each user.
BUILD_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
echo "deb $MIRROR $SUITE main" > /etc/apt/sources.list
[ -z "$SECURITY" ] || echo "deb $SECURITY $SUITE-security main" >> /etc/apt/sources.list
apt-get update -qq
apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
# the card reader: vpcd's driver only (dpkg-deb -x: its package depends on pcscd, which site.yml installs)
cd /tmp && apt-get download -qq "$READER_PACKAGE"
dpkg-deb -x "$READER_PACKAGE"_*.deb / && rm -f "$READER_PACKAGE"_*.deb
rm -f /etc/reader.conf.d/vpcd  # written per host (its own port) when the container starts
cd /
install -D -m 0755 /tmp/tokentrust-shim/libvpcd_loopback.so "$SHIM_PATH"
printf '# tokentrust lab: vpcd binds 0.0.0.0; this keeps it on 127.0.0.1 (lab/vpcd_loopback)\nexport LD_PRELOAD=%s\n' \
  "$SHIM_PATH" > /etc/default/pcscd
mkdir -p /run/sshd
ssh-keygen -A >/dev/null
cat > /etc/ssh/sshd_config.d/tokentrust-lab.conf <<'EOF'
# tokentrust fleet lab: key login only; the port and 127.0.0.1 address are given on sshd's command line
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM yes
EOF
useradd -m -s /bin/bash "$ADMIN"
echo "$ADMIN ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/tokentrust-admin
chmod 0440 /etc/sudoers.d/tokentrust-admin
install -d -m 0700 -o "$ADMIN" -g "$ADMIN" "/home/$ADMIN/.ssh"
ff() {  # ff USER ARGS...: real headless Firefox as USER
  u=$1; shift
  runuser -u "$u" -- env HOME="/home/$u" MOZ_HEADLESS=1 MOZ_CRASHREPORTER_DISABLE=1 \
    MOZ_DISABLE_NONLOCAL_CONNECTIONS=1 timeout 120 firefox-esr --headless --no-remote "$@" >/dev/null 2>&1
}
for spec in $USERS; do
  u=${spec%%:*}; kind=${spec#*:}
  useradd -m -s /bin/bash "$u"
  case "$kind" in
    mozilla)
      runuser -u "$u" -- mkdir -p "/home/$u/.mozilla/firefox"
      ff "$u" --screenshot /tmp/shot.png about:blank
      ff "$u" -CreateProfile work2
      p=$(sed -n 's/^Path=\(.*work2\)$/\1/p' "/home/$u/.mozilla/firefox/profiles.ini")
      ff "$u" --profile "/home/$u/.mozilla/firefox/$p" --screenshot /tmp/shot.png about:blank
      ;;
    xdg)
      ff "$u" --screenshot /tmp/shot.png about:blank
      ;;
  esac
  rm -f /tmp/shot.png
done
# Firefox's screenshot mode leaves its lock symlinks behind: remove them (no Firefox runs now)
find /home -name lock -type l -delete
for spec in $USERS; do
  u=${spec%%:*}; kind=${spec#*:}
  case "$kind" in
    mozilla) ls /home/$u/.mozilla/firefox/*/cert9.db >/dev/null ;;
    xdg) ls /home/$u/.config/mozilla/firefox/*/cert9.db >/dev/null ;;
  esac
done
apt-get clean
"""


class FleetError(RuntimeError):
    """The fleet could not be built, started or removed; the message says what and where."""


def _run(cmd: Sequence[str], what: str, *, timeout: float = 900, input_text: Optional[str] = None,
         check: bool = True) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input_text, check=False)
    except FileNotFoundError as e:
        raise FleetError(f"{what}: {cmd[0]} is not installed "
                         "(scripts/setup.sh installs docker.io and debootstrap)") from e
    except subprocess.TimeoutExpired as e:
        raise FleetError(f"{what}: no answer within {timeout:.0f}s ({' '.join(cmd[:3])} ...)") from e
    if check and p.returncode != 0:
        raise FleetError(f"{what}: `{' '.join(cmd[:4])} ...` exited {p.returncode}: "
                         f"{(p.stderr or p.stdout).strip()[-1500:]}")
    return p


def docker(*args: str, what: str = "docker", **kw) -> subprocess.CompletedProcess:
    return _run(["docker", *args], what, **kw)


def docker_ready() -> Optional[str]:
    """None when the Docker daemon answers, else why not (with what to do)."""
    if not shutil.which("docker"):
        return "docker is not installed: run scripts/setup.sh (installs docker.io and starts dockerd)"
    p = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                       check=False, timeout=60)
    if p.returncode != 0:
        return f"the Docker daemon does not answer ({p.stderr.strip()[-300:]}): run scripts/setup.sh, which starts it"
    return None


# ---------------------------------------------------------------------------------------------
# the image


def apt_mirrors(sources: Sequence[Path] = (Path("/etc/apt/sources.list"),
                                           Path("/etc/apt/sources.list.d/debian.sources"))) -> tuple:
    """(Debian mirror, security mirror or "") as this machine's own apt configuration names them."""
    env = os.environ.get("TOKENTRUST_FLEET_MIRROR")
    if env:
        return env, os.environ.get("TOKENTRUST_FLEET_SECURITY_MIRROR", "")
    urls = []
    for src in sources:
        try:
            text = src.read_text()
        except OSError:
            continue
        urls += re.findall(r"^\s*URIs:\s*(\S+)", text, re.M)
        urls += re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s", text, re.M)
    main = next((u for u in urls if u.rstrip("/").endswith("/debian")), None)
    sec = next((u for u in urls if u.rstrip("/").endswith("/debian-security")), "")
    if not main:
        raise FleetError("no Debian mirror found in /etc/apt/sources.list(.d): set TOKENTRUST_FLEET_MIRROR to one")
    return main, sec


def recipe_hash(extra: str = "", suite: str = SUITE) -> str:
    """The recipe's hash: the suite and its packages in it (bookworm's text is what it was before trixie came, so
    that its cached image stays valid)."""
    text = json.dumps({"v": RECIPE_VERSION, "suite": suite, "packages": SUITE_PACKAGES[suite], "users": USERS,
                       "admin": ADMIN,
                       "script": BUILD_SCRIPT, "extra": extra, "reader": READER_PACKAGE, "shim_path": SHIM_PATH,
                       "shim": labreader.SHIM_SRC.read_text()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def build_lock(name: str, log: Callable[[str], None] = lambda s: None) -> Iterator[None]:
    """Held while an image called `name` is built: Docker's images are the machine's, so two runs at once (make
    test's two lanes, a demo beside the tests) build each image once; the second waits, then finds it built.
    The lock files live in a folder of this user's (~/.cache/tokentrust/locks, mode 0700), opened without
    following symlinks."""
    d = Path.home() / ".cache" / "tokentrust" / "locks"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = d.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise FleetError(f"{d} is not this user's own folder (owner {st.st_uid}, mode {oct(st.st_mode & 0o777)}): "
                         "remove it, it holds only lock files")
    path = d / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another run that is building {name}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build_base(tag: str, mirror: str, log: Callable[[str], None], suite: str = SUITE) -> None:
    """debootstrap minbase rootfs of `suite` -> `docker import` as `tag` (lab/controller.py uses it for trixie),
    under the tag's build lock; nothing when another run built it meanwhile."""
    with build_lock(f"base-{tag}", log):
        if not image_exists(tag):
            _build_base(tag, mirror, log, suite)


def _build_base(tag: str, mirror: str, log: Callable[[str], None], suite: str) -> None:
    if not shutil.which("debootstrap"):
        raise FleetError("debootstrap is not installed: run scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix="tokentrust-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"fleet: debootstrap {suite} (minbase)")
        _run(["debootstrap", "--variant=minbase", suite, str(rootfs), mirror], f"debootstrap {suite}", timeout=1800)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            p = subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, capture_output=True, text=True,
                               timeout=900, check=False)
        finally:
            tar.stdout.close()
            tar.wait()
        if p.returncode != 0 or tar.returncode != 0:
            raise FleetError(f"docker import of the {suite} rootfs failed: {p.stderr.strip()[-800:]}")


def image_tags(suite: str = SUITE) -> dict:
    """{base, ws, ws_cffi, recipe} of `suite` (bookworm keeps the names it had: ws:<hash>; others ws-<suite>:<hash>)."""
    if suite not in SUITES:
        raise FleetError(f"unknown suite {suite!r}: one of {', '.join(SUITES)}")
    h = recipe_hash(suite=suite)
    tail = "" if suite == SUITE else f"-{suite}"
    return {"base": f"{IMAGE_REPO}/base:{hashlib.sha256(suite.encode()).hexdigest()[:12]}",
            "ws": f"{IMAGE_REPO}/ws{tail}:{h}", "ws_cffi": f"{IMAGE_REPO}/ws-cffi{tail}:{h}", "recipe": h}


def build_image(log: Callable[[str], None] = lambda s: None, suite: str = SUITE) -> dict:
    """The workstation images of `suite` (without and with python3-cffi), built when their recipe tag is missing."""
    t0 = time.monotonic()
    tags = image_tags(suite)
    base, ws, ws_cffi, h = tags["base"], tags["ws"], tags["ws_cffi"], tags["recipe"]
    built = []
    if not image_exists(ws) or not image_exists(ws_cffi):
        with build_lock(f"fleet-{suite}-{h}", log):
            _build_ws(tags, suite, log, built)
    return {"ws": ws, "ws_cffi": ws_cffi, "base": base, "recipe": h, "built": built, "suite": suite,
            "seconds": round(time.monotonic() - t0, 1)}


def _build_ws(tags: dict, suite: str, log: Callable[[str], None], built: list) -> None:
    """build_image's work, under its lock: what is still missing once it is held (another run may have built it)."""
    base, ws, ws_cffi = tags["base"], tags["ws"], tags["ws_cffi"]
    if not image_exists(ws) or not image_exists(ws_cffi):
        mirror, security = apt_mirrors()
        if not image_exists(base):
            build_base(base, mirror, log, suite=suite)
            built.append(base)
        if not image_exists(ws):
            log(f"fleet: installing Firefox ESR, softhsm2, sshd in the {suite} image; Firefox makes the profiles")
            name = f"tokentrust-fleet-build-{os.getpid()}"
            users = " ".join(f"{u}:{k or 'none'}" for u, k in USERS.items())
            shim = labreader.build_loopback()
            try:
                docker("run", "--name", name, "--network", "host", "-v", f"{shim.parent}:/tmp/tokentrust-shim:ro",
                       "-e", f"READER_PACKAGE={READER_PACKAGE}", "-e", f"SHIM_PATH={SHIM_PATH}",
                       "-e", f"MIRROR={mirror}", "-e", f"SECURITY={security}", "-e", f"SUITE={suite}",
                       "-e", f"PACKAGES={' '.join(SUITE_PACKAGES[suite])}", "-e", f"USERS={users}",
                       "-e", f"ADMIN={ADMIN}",
                       base, "bash", "-c", BUILD_SCRIPT, what="building the workstation image", timeout=1800)
                docker("commit", "--change", 'CMD ["/usr/sbin/sshd", "-D", "-e"]', name, ws,
                       what="committing the workstation image")
            finally:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
            built.append(ws)
        if not image_exists(ws_cffi):
            name = f"tokentrust-fleet-build-cffi-{os.getpid()}"
            try:
                docker("run", "--name", name, "--network", "host", ws, "bash", "-c",
                       "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                       + " ".join(CFFI_PACKAGES) + " >/dev/null && apt-get clean",
                       what="installing python3-cffi in the image variant", timeout=900)
                docker("commit", name, ws_cffi, what="committing the python3-cffi variant")
            finally:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
            built.append(ws_cffi)


# ---------------------------------------------------------------------------------------------
# containers


def _fleet_id(run: Path) -> str:
    return hashlib.sha256(str(run).encode()).hexdigest()[:10]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def container_running(name: str) -> bool:
    p = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True,
                       check=False)
    return p.returncode == 0 and p.stdout.strip() == "true"


def container_image(name: str) -> Optional[str]:
    p = subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", name], capture_output=True, text=True,
                       check=False)
    return p.stdout.strip() if p.returncode == 0 else None


def _ssh_key(d: Path) -> Path:
    key = d / "id_ed25519"
    if not key.exists():
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tokentrust-fleet-admin", "-f", str(key)],
             "making the fleet's SSH key")
    return key


def start_host(host: dict, key: Path, token_dir: Optional[Path], fid: str) -> None:
    """(Re)start one workstation container; its sshd on 127.0.0.1:<port>; the admin key installed."""
    name = host["container"]
    if container_running(name) and container_image(name) == host["image"]:
        return
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    args = ["run", "-d", "--name", name, "--network", "host", "--label", f"{LABEL}={fid}",
            "--label", f"{LABEL}.host={host['name']}"]
    if token_dir:
        args += ["-v", f"{token_dir}:{TOKEN_MOUNT}"]
    args += [host["image"], "/usr/sbin/sshd", "-D", "-e", "-o", "ListenAddress=127.0.0.1",
             "-o", f"Port={host['port']}"]
    docker(*args, what=f"starting {host['name']}")
    if host.get("card_port"):
        docker("exec", "-i", name, "sh", "-c", f"cat > {READER_CONF}",
               input_text=labreader.reader_conf(host["card_port"]),
               what=f"writing the card reader's configuration on {host['name']}")
    pub = Path(str(key) + ".pub").read_text()
    docker("exec", "-i", name, "sh", "-c",
           f"umask 077 && cat > /home/{ADMIN}/.ssh/authorized_keys"
           f" && chown {ADMIN}: /home/{ADMIN}/.ssh/authorized_keys",
           what=f"installing the admin key on {host['name']}", input_text=pub)
    deadline = time.monotonic() + 30
    while not _port_open(host["port"]):
        if time.monotonic() > deadline:
            logs = docker("logs", name, what="sshd log", check=False)
            raise FleetError(f"{host['name']}: sshd does not listen on 127.0.0.1:{host['port']}: "
                             f"{(logs.stderr + logs.stdout)[-800:]}")
        time.sleep(0.2)


def host_key_line(host: dict) -> str:
    p = docker("exec", host["container"], "cat", "/etc/ssh/ssh_host_ed25519_key.pub",
               what=f"reading {host['name']}'s host key")
    kind, blob = p.stdout.split()[:2]
    return f"[127.0.0.1]:{host['port']} {kind} {blob}\n"


def make_token(tok_dir: Path, pki: dict) -> labtoken.LabToken:
    """A SoftHSM2 token + pin_guard for one workstation, its configuration pointing at TOKEN_MOUNT."""
    if (tok_dir / "token.json").exists():
        tok = labtoken.LabToken.load(tok_dir)
        labtoken.refresh_module(tok)
        return tok
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    chain = {e["name"]: labbuild._load_issued(e) for e in pki["cas"]}
    tok = labtoken.create_token(tok_dir, pki=chain)
    tok.serial()
    tok._save()
    for f in (tok.conf, tok.guard_conf):  # the container sees this directory at TOKEN_MOUNT
        f.write_text(f.read_text().replace(str(tok.root), TOKEN_MOUNT))
    return tok


def make_card(card_dir: Path, pki: dict) -> dict:
    """The workstation's PIV card (lab/piv_card.py) issued from the fleet's PKI, made once and kept."""
    if (card_dir / "card.json").exists():
        return piv_card.load_state(card_dir)
    chain = {e["name"]: labbuild._load_issued(e) for e in pki["cas"]}
    return piv_card.create_card(card_dir, pki=chain)


def _card_pid(card_dir: Path) -> Optional[int]:
    try:
        pid = int((card_dir / "card.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"lab.piv_card" in cmdline and str(card_dir).encode() in cmdline else None


def card_inserted(host: dict) -> bool:
    return _card_pid(Path(host["card_dir"])) is not None


def card_insert(host: dict, wait: float = 0.0) -> None:
    """Start the card process of `host` (= insert its card into the workstation's reader). `wait`: seconds to wait
    for the reader to talk to it (0: do not wait; the card keeps knocking until pcscd runs)."""
    d = Path(host["card_dir"])
    if _card_pid(d) is None:
        n0 = piv_card.apdu_count(d)
        with open(d / "card.log", "ab") as log:
            cmd = [sys.executable, "-m", "lab.piv_card", "run", str(d), "--port", str(host["card_port"])]
            p = subprocess.Popen(cmd, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
        (d / "card.pid").write_text(str(p.pid))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and piv_card.apdu_count(d) == n0:
            time.sleep(0.1)


def card_pull(host: dict) -> bool:
    """Stop the card process of `host` (= pull the card out); True when it was in."""
    d = Path(host["card_dir"])
    pid = _card_pid(d)
    if pid is None:
        return False
    os.kill(pid, 15)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    time.sleep(0.5)  # pcscd polls the reader: a removal is seen within 0.4 s
    return True


# ---------------------------------------------------------------------------------------------
# inventory and lab vars


def _yaml(s) -> str:
    return json.dumps(str(s))


def write_inventory(inv: Path, manifest: dict) -> None:
    """A copy of inventories/example: only the hosts and their connection values differ."""
    if inv.exists():
        marker = inv / "hosts.yml"
        if not marker.exists() or "Generated by `python -m lab.fleet create`" not in marker.read_text():
            raise FleetError(f"{inv} exists and was not written by lab.fleet: refusing to overwrite it")
        shutil.rmtree(inv)
    shutil.copytree(EXAMPLE_INVENTORY, inv)
    ssh = manifest["ssh"]
    lines = ["---\n",
             "# Generated by `python -m lab.fleet create` from inventories/example: the same group_vars; only the\n",
             "# hosts and their connection values differ. `python -m lab.fleet destroy` removes it.\n",
             f"#   ansible-playbook -i {inv} playbooks/site.yml -e @{manifest['lab_vars']}\n",
             "all:\n  children:\n    windows:\n      hosts: {}\n      children:\n        windows_kerberos:\n",
             "          hosts: {}\n    linux:\n      hosts:\n"]
    for h in manifest["hosts"]:
        lines.append(f"        {h['name']}:\n"
                     f"          tokentrust_lab_release: {h.get('release', SUITE)}  # Debian {h.get('debian', '12')}\n"
                     f"          ansible_host: 127.0.0.1\n"
                     f"          ansible_port: {h['port']}\n"
                     f"          ansible_user: {ADMIN}\n"
                     f"          ansible_ssh_private_key_file: {_yaml(ssh['key'])}\n"
                     f"          ansible_ssh_common_args: {_yaml(ssh['args'])}\n"
                     f"          ansible_python_interpreter: /usr/bin/python3\n")
    (inv / "hosts.yml").write_text("".join(lines))


def write_lab_vars(path: Path, manifest: dict) -> None:
    """The lab's stand-ins (what a real fleet sets to its real CAs, middleware and test page).

    key "token" (the default): every role names pin_guard's library (the SoftHSM2 stand-in). key "card": no library
    is named (the roles resolve it on the host: the OpenSC that site.yml installed), the test login uses the card's
    label and PIN, and the report expects OpenSC's library registered (fleet_report_module_library: what the lab
    expects to find, not what site.yml is told)."""
    tok, page = manifest["token"], manifest["testpage"]
    card = manifest.get("key") == "card"
    out = ["---\n# Generated by `python -m lab.fleet create`: the fleet lab's stand-ins, given with -e @this-file.\n",
           "# LAB ONLY: the PIN below is the SoftHSM2 stand-in's; never put a real PIN in a file (ansible-vault).\n",
           "tokentrust_lab: true\n", "ca_certificates_list:\n"]
    for ca in manifest["pki"]["cas"]:
        out.append(f"  - name: {_yaml(ca['name'])}\n    path: {_yaml(ca['path'])}\n    sha256: {_yaml(ca['sha256'])}\n")
    out += [
        f"ca_certificates_dest: {_yaml(Path(manifest['dir']) / 'cache' / 'ca')}\n",
        f"tokentrust_token_module: {_yaml(TOKEN_MODULE)}\n",
        f"tokentrust_token_label: {_yaml(piv_card.HOLDER if card else tok['label'])}\n",
        f"tokentrust_token_holder: {_yaml(labtoken.HOLDER)}\n",
        f"tokentrust_test_url: {_yaml(page['url'])}\n",
        f"tokentrust_lab_testpage_log: {_yaml(page['log'])}\n",
    ]
    if card:
        out += [
            "# The key is the card: no library named, each role resolves it on the host (site.yml installs OpenSC)\n",
            f"fleet_report_module_library: {_yaml(CARD_MODULE)}  # what the report must find registered\n",
        ]
    else:
        out += [
            "firefox_nss_module_library: \"{{ tokentrust_token_module }}\"\n",
            "firefox_policies_module_path: \"{{ tokentrust_token_module }}\"\n",
            "token_verify_module: \"{{ tokentrust_token_module }}\"\n",
        ]
    out += [
        "token_verify_token_label: \"{{ tokentrust_token_label }}\"\n",
        "token_verify_url: \"{{ tokentrust_test_url }}\"\n",
        f"token_verify_pin: {_yaml(piv_card.DEFAULT_PIN if card else tok['lab_only_secrets']['pin'])}\n",
        f"tokentrust_lab_token_pin: {_yaml(tok['lab_only_secrets']['pin'])}\n",
        f"tokentrust_lab_token_puk: {_yaml(tok['lab_only_secrets']['puk'])}\n",
        "# The key as it really is: a PIV card (lab/piv_card.py) in vpcd's reader under pcscd, OpenSC as middleware\n",
        f"tokentrust_lab_card_module: {_yaml(CARD_MODULE)}\n",
        f"tokentrust_lab_card_label: {_yaml(piv_card.HOLDER)}\n",
        f"tokentrust_lab_card_pin: {_yaml(piv_card.DEFAULT_PIN)}\n",
        f"tokentrust_lab_card_puk: {_yaml(piv_card.DEFAULT_PUK)}\n",
        f"token_middleware_linux_polkit_users: [{_yaml(CARD_HOLDER_USER)}]\n",
        f"fleet_report_dest: {_yaml(Path(manifest['dir']) / 'reports')}\n",
    ]
    path.write_text("".join(out))
    os.chmod(path, 0o600)


# ---------------------------------------------------------------------------------------------
# create / destroy / status


def _load(run: Path) -> Optional[dict]:
    try:
        return json.loads((run / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def create(run: Path = DEFAULT_DIR, *, hosts: int = 3, inventory: Path = DEFAULT_INVENTORY, cffi: str = "even",
           suites: Optional[Sequence[str]] = None, key_kind: str = "token",
           log: Callable[[str], None] = lambda s: None) -> dict:
    """Build (or bring up to date) the fleet; returns the manifest (also <run>/fleet.json).

    `cffi`: which hosts have python3-cffi already: "even" (fleet-ws-02, -04, ...), "all" or "none".
    `suites`: the Debian releases, host i running suites[(i - 1) % len(suites)] (default: bookworm only).
    `key_kind`: "token" (lab vars name pin_guard's SoftHSM2 token) or "card" (the PIV card through pcscd, OpenSC).
    """
    if cffi not in ("even", "all", "none"):
        raise FleetError(f"cffi must be even, all or none, not {cffi!r}")
    suites = list(suites or [SUITE])
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise FleetError(f"unknown suite(s) {', '.join(bad)}: the fleet knows {', '.join(SUITES)}")
    if key_kind not in KEYS:
        raise FleetError(f"the key must be one of {', '.join(KEYS)}, not {key_kind!r}")
    t0 = time.monotonic()
    run, inventory = Path(run).resolve(), Path(inventory).resolve()
    if hosts < 1:
        raise FleetError("--hosts must be at least 1")
    why = docker_ready()
    if why:
        raise FleetError(why)
    old = _load(run) or {}
    if run.exists() and any(run.iterdir()) and not old:
        raise FleetError(f"{run} exists, is not empty and holds no {MANIFEST}: not a fleet folder, refusing to use it")
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    fid = _fleet_id(run)
    by_suite = {}
    for suite in dict.fromkeys(suites):
        by_suite[suite] = build_image(log, suite)
    images = by_suite[suites[0]]

    pki = old.get("pki")
    if not labbuild._pki_ok(pki):
        log("fleet: generating the stand-in PKI")
        pki = labbuild.build_pki(run / "pki")
        if (run / "tokens").exists():
            shutil.rmtree(run / "tokens")
    page = labbuild.start_testpage(run, pki)

    key = _ssh_key(run / "ssh")
    known = run / "ssh" / "known_hosts"
    old_hosts = {h["name"]: h for h in old.get("hosts", [])}
    plan, tok = [], None
    for i in range(1, hosts + 1):
        name = f"fleet-ws-{i:02d}"
        prev = old_hosts.get(name, {})
        port = prev.get("port") if prev.get("port") and (container_running(prev.get("container", ""))
                                                        or not _port_open(prev["port"])) else free_port()
        with_cffi = cffi == "all" or (cffi == "even" and i % 2 == 0)
        suite = suites[(i - 1) % len(suites)]
        image = by_suite[suite]["ws_cffi"] if with_cffi else by_suite[suite]["ws"]
        h = {"name": name, "container": f"tokentrust-{fid}-{name}", "port": port, "image": image,
             "release": suite, "debian": DEBIAN[suite],
             "python3_cffi": with_cffi, "users": {u: k for u, k in USERS.items()}}
        tdir = run / "tokens" / name
        tok = make_token(tdir, pki)
        h["token_dir"] = str(tdir)
        cdir = run / "cards" / name
        make_card(cdir, pki)
        h["card_dir"] = str(cdir)
        h["card_port"] = prev.get("card_port") or free_port()
        start_host(h, key, tdir, fid)
        card_insert(h)
        plan.append(h)
    for name, prev in old_hosts.items():
        if name not in {h["name"] for h in plan}:
            subprocess.run(["docker", "rm", "-f", prev["container"]], capture_output=True, check=False)
            if prev.get("card_dir"):
                card_pull(prev)
                shutil.rmtree(prev["card_dir"], ignore_errors=True)
            shutil.rmtree(run / "tokens" / name, ignore_errors=True)
    known.write_text("".join(host_key_line(h) for h in plan))
    ssh_args = (f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes "
                "-o ControlMaster=auto -o ControlPersist=60s")
    manifest = {
        "dir": str(run), "manifest": str(run / MANIFEST), "fleet_id": fid,
        "created": old.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inventory": str(inventory), "lab_vars": str(run / "lab_vars.yml"),
        "images": dict({k: images[k] for k in ("ws", "ws_cffi", "base", "recipe")},
                       by_suite={s: {k: v[k] for k in ("ws", "ws_cffi", "base", "recipe")}
                                 for s, v in by_suite.items()}),
        "suites": suites, "key": key_kind,
        "ssh": {"key": str(key), "known_hosts": str(known), "args": ssh_args, "user": ADMIN},
        "pki": pki, "token": tok.to_json(), "token_module": TOKEN_MODULE,
        "testpage": {k: page[k] for k in ("pid", "host", "port", "url", "log", "pidfile", "state_file")},
        "hosts": plan,
    }
    write_inventory(inventory, manifest)
    write_lab_vars(run / "lab_vars.yml", manifest)
    (run / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(run / MANIFEST, 0o600)
    manifest["image_seconds"] = round(sum(v["seconds"] for v in by_suite.values()), 1)
    manifest["image_seconds_by_suite"] = {s: v["seconds"] for s, v in by_suite.items()}
    manifest["images_built"] = [b for v in by_suite.values() for b in v["built"]]
    manifest["seconds"] = round(time.monotonic() - t0, 1)
    return manifest


def destroy(run: Path = DEFAULT_DIR, log: Callable[[str], None] = lambda s: None) -> list:
    """Remove the containers, stop the test page, remove <run> and the inventory it wrote. Images stay."""
    run = Path(run).resolve()
    m = _load(run)
    gone = []
    fid = _fleet_id(run)
    p = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}={fid}"], capture_output=True, text=True,
                       check=False)
    ids = p.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
        gone += [f"container {i}" for i in ids]
    if m is None:
        if run.exists() and any(run.iterdir()):
            raise FleetError(f"{run} holds no {MANIFEST}: not a fleet folder, refusing to remove it")
        return gone
    from lab import testpage as tp

    for h in m.get("hosts", []):
        if h.get("card_dir") and card_pull(h):
            gone.append(f"card {h['name']}")
    if tp.stop_daemon(run / "testpage" / "testpage.pid"):
        gone.append("testpage")
    inv = Path(m["inventory"])
    hosts_yml = inv / "hosts.yml"
    if hosts_yml.exists() and "Generated by `python -m lab.fleet create`" in hosts_yml.read_text():
        shutil.rmtree(inv)
        gone.append(str(inv))
    shutil.rmtree(run)
    gone.append(str(run))
    log(f"fleet: removed {len(gone)} items")
    return gone


def status(run: Path = DEFAULT_DIR) -> dict:
    run = Path(run).resolve()
    m = _load(run)
    if not m:
        return {"dir": str(run), "exists": False}
    return {"dir": str(run), "exists": True, "inventory": m["inventory"], "lab_vars": m["lab_vars"],
            "hosts": [{"name": h["name"], "port": h["port"], "running": container_running(h["container"]),
                       "sshd": _port_open(h["port"])} for h in m["hosts"]]}


def host_of(m: dict, name: str) -> dict:
    for h in m["hosts"]:
        if h["name"] == name:
            return h
    raise FleetError(f"no host {name!r} in the fleet (hosts: {', '.join(h['name'] for h in m['hosts'])})")


def exec_in(m: dict, host: str, cmd: Sequence[str], user: str = "root", timeout: float = 180,
            check: bool = True) -> subprocess.CompletedProcess:
    """A command inside a workstation (the test side's look at it; Ansible itself goes over SSH)."""
    h = host_of(m, host)
    home = "/root" if user == "root" else f"/home/{user}"
    return docker("exec", "-u", user, "-e", f"HOME={home}", "-w", home, h["container"], *cmd,
                  what=f"{' '.join(cmd[:2])} as {user} on {host}", timeout=timeout, check=check)


def reset_host(m: dict, host: str) -> dict:
    """A fresh workstation in place of `host`: the container re-made from its image (same port, same key)."""
    h = host_of(m, host)
    subprocess.run(["docker", "rm", "-f", h["container"]], capture_output=True, check=False)
    start_host(h, Path(m["ssh"]["key"]), Path(h["token_dir"]), m["fleet_id"])
    return h


def reset_hosts(m: dict, hosts: Optional[Sequence[str]] = None, workers: int = 8) -> float:
    """reset_host on many workstations at once (`workers` docker calls in parallel: a 50-host fleet is re-made in
    about a quarter of the sequential time); returns the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    names = list(hosts) if hosts is not None else [h["name"] for h in m["hosts"]]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lambda n: reset_host(m, n), names))
    return round(time.monotonic() - t0, 1)


def stop_host(m: dict, host: str) -> dict:
    """The workstation is switched off: its container killed (SIGKILL, no grace: the SSH connection drops at once).
    Its disk (profiles, what a run wrote) stays: `resume_host` switches it on again."""
    h = host_of(m, host)
    p = docker("kill", h["container"], what=f"stopping {host}", check=False)
    if p.returncode != 0 and container_running(h["container"]):
        raise FleetError(f"{host}: could not be stopped: {(p.stderr or p.stdout).strip()[-500:]}")
    return h


def resume_host(m: dict, host: str, timeout: float = 60) -> dict:
    """The workstation is switched on again: the same container (its disk as it was), sshd on the same port."""
    h = host_of(m, host)
    if container_running(h["container"]):
        return h
    if container_image(h["container"]) is None:  # removed meanwhile: a fresh one in its place
        start_host(h, Path(m["ssh"]["key"]), Path(h["token_dir"]), m["fleet_id"])
        return h
    docker("start", h["container"], what=f"starting {host} again")
    deadline = time.monotonic() + timeout
    while not _port_open(h["port"]):
        if time.monotonic() > deadline:
            raise FleetError(f"{host}: sshd does not listen on 127.0.0.1:{h['port']} {timeout:.0f}s after the start")
        time.sleep(0.2)
    return h


def start_firefox(m: dict, host: str, user: str, seconds: float = 8) -> None:
    """A user's day: real Firefox ESR started as `user` (its policy engine runs), then closed."""
    exec_in(m, host, ["env", *FIREFOX_ENV, "timeout", "120", "firefox-esr", "--headless", "--no-remote",
                      "--screenshot", f"/tmp/tokentrust-shot-{user}.png", "about:blank"], user=user)
    exec_in(m, host, ["sh", "-c", "find \"$HOME\" -name lock -type l -delete; rm -f /tmp/tokentrust-shot-*.png"],
            user=user)


def _releases(m: dict) -> str:
    """'2 Debian 12 (bookworm), 1 Debian 13 (trixie)'."""
    counts = {}
    for h in m["hosts"]:
        counts[h.get("release", SUITE)] = counts.get(h.get("release", SUITE), 0) + 1
    return ", ".join(f"{n} Debian {DEBIAN[s]} ({s})" for s, n in counts.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.fleet", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("create", "destroy", "status", "image", "firefox", "stop", "start"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=str(DEFAULT_DIR), help="fleet folder (default lab/fleet)")
        if name == "create":
            p.add_argument("--hosts", type=int, default=3, help="workstations (default 3)")
            p.add_argument("--inventory", default=str(DEFAULT_INVENTORY), help="inventory (default inventories/fleet)")
            p.add_argument("--cffi", choices=("even", "all", "none"), default="even",
                           help="hosts with python3-cffi already installed (default even)")
            g = p.add_mutually_exclusive_group()
            g.add_argument("--suites", default=SUITE,
                           help=f"Debian releases, comma-separated, hosts alternating ({', '.join(SUITES)}; "
                                f"default {SUITE})")
            g.add_argument("--mixed", action="store_true", help="Debian 12 and 13 alternating (--suites "
                                                                "bookworm,trixie)")
            p.add_argument("--key", choices=KEYS, default="token",
                           help="the key the lab vars name: token (SoftHSM2 + pin_guard, default) or card (the PIV "
                                "card through pcscd, the library resolved on the host)")
            p.add_argument("--json", action="store_true", help="print the manifest")
        if name == "image":
            p.add_argument("--suite", choices=SUITES, default=SUITE, help=f"Debian release (default {SUITE})")
        if name == "firefox":
            p.add_argument("host")
            p.add_argument("user")
        if name in ("stop", "start"):
            p.add_argument("hosts", nargs="+", metavar="HOST")
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(msg, flush=True)

    try:
        if args.cmd == "create":
            suites = list(SUITES) if args.mixed else [s.strip() for s in args.suites.split(",") if s.strip()]
            m = create(Path(args.dir), hosts=args.hosts, inventory=Path(args.inventory), cffi=args.cffi,
                       suites=suites, key_kind=args.key, log=say)
            if args.json:
                print(json.dumps(m, indent=2))
            else:
                print(f"fleet ready in {m['seconds']}s (image {m['image_seconds']}s"
                      f"{', built ' + ', '.join(m['images_built']) if m['images_built'] else ', reused'}): "
                      f"{len(m['hosts'])} workstations ({_releases(m)}) over SSH on 127.0.0.1 ports "
                      f"{', '.join(str(h['port']) for h in m['hosts'])}; inventory {m['inventory']}; "
                      f"lab vars -e @{m['lab_vars']}")
        elif args.cmd == "destroy":
            gone = destroy(Path(args.dir), log=say)
            print(f"fleet destroyed ({len(gone)} items)" if gone else "no fleet to destroy")
        elif args.cmd == "image":
            why = docker_ready()
            if why:
                raise FleetError(why)
            print(json.dumps(build_image(say, args.suite), indent=2))
        elif args.cmd == "firefox":
            m = _load(Path(args.dir).resolve())
            if not m:
                raise FleetError(f"no fleet in {args.dir}: run `python -m lab.fleet create` first")
            start_firefox(m, args.host, args.user)
            print(f"Firefox started and closed as {args.user} on {args.host}")
        elif args.cmd in ("stop", "start"):
            m = _load(Path(args.dir).resolve())
            if not m:
                raise FleetError(f"no fleet in {args.dir}: run `python -m lab.fleet create` first")
            for h in args.hosts:
                (stop_host if args.cmd == "stop" else resume_host)(m, h)
                print(f"{h}: {'off' if args.cmd == 'stop' else 'on'}")
        else:
            print(json.dumps(status(Path(args.dir)), indent=2))
    except (FleetError, labbuild.LabError, labtoken.LabTokenError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
