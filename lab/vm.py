"""The VM lab: a Debian workstation as a QEMU virtual machine (systemd, logind, udev, a USB CCID reader).

    python -m lab.vm image [--suite bookworm]           # build (or find) the image: debootstrap -> ext4 -> qcow2
    python -m lab.vm create [--dir lab/vm] [--suite bookworm] [--inventory inventories/vm]
    python -m lab.vm destroy [--dir lab/vm]
    python -m lab.vm status [--dir lab/vm]
    python -m lab.vm ssh [--dir lab/vm] -- CMD...       # a command in the guest as admin
    python -m lab.vm card insert|remove [--dir lab/vm]  # through the VSCard bridge (lab/vscard.py)
    python -m lab.vm reader unplug|plug [--dir lab/vm]  # QMP device_del / device_add of the usb-ccid reader

What a container cannot show, a VM does: systemd as PID 1, socket-activated pcscd (pcscd.socket), udev, logind
with alice logged in at the seat (getty autologin on tty1: her session is the active one on seat0, an Xvfb display
in it), and the key in a USB reader: QEMU's `usb-ccid` on an xHCI controller (the guest sees a Gemalto GemPC433-Swap,
08e6:4433, driven by libccid) whose card is `ccid-card-passthru`, a chardev speaking libcacard's VSCard protocol to
lab/vscard.py, which answers with the project's PIV card (lab/piv_card.py, its counters persisted).

The image (one per release) is built here from Debian's packages: `debootstrap --variant=minbase` into a directory,
the rest installed with apt in a chroot (the mirror is the one this machine's apt uses, lab.fleet.apt_mirrors), the
users made (admin: SSH key + passwordless sudo; alice, bob, carol; Firefox makes alice's and bob's profiles, as in
the fleet), then `mkfs.ext4 -d` and `qemu-img convert` to qcow2; the kernel and initrd are the image's own. The guest
has no network beyond QEMU's user-mode stack with `restrict=on`: everything site.yml installs is in the image, and the
only way in is one hostfwd 127.0.0.1:<port> -> 22. The test page runs on this machine's 127.0.0.1 and the guest reaches
it on its own 127.0.0.1 through an SSH reverse forward (the same URL on both sides). Cached under
.cache/vm/<suite>-<hash> (the hash of the recipe: suite, packages, script, this file's recipe version); the
admin SSH key is made with the image (lab only: the guest listens on 127.0.0.1 only).

Each VM boots from a qcow2 overlay on the cached image (the image stays pristine). Acceleration: KVM when /dev/kvm
opens and a probe boot gets past the kernel's early start (nested KVM here stalls right after the boot stub), else
TCG (`-smp 2`). QMP on a unix socket controls it: reader unplug/plug, powerdown.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TOKENTRUST_VM_CACHE", str(ROOT / ".cache" / "vm")))
DEFAULT_DIR = ROOT / "lab" / "vm"
DEFAULT_INVENTORY = ROOT / "inventories" / "vm"
MANIFEST = "vm.json"
SUITE = "bookworm"
SUITES = ("bookworm", "trixie")
DEBIAN = {"bookworm": "12", "trixie": "13"}
RECIPE_VERSION = 1
ADMIN = "admin"
USERS = {"alice": "mozilla", "bob": "xdg", "carol": None}  # as lab/fleet.py: user -> profile layout (None: never)
SEAT_USER = "alice"
HOSTNAME = "vm-ws-01"
DISK_SIZE = "4G"
MEMORY_MB = 2048
# Everything the roles install is in the image (the guest cannot reach a mirror): pcscd, libccid, OpenSC, python3-apt,
# python3-cffi, python3-cryptography, libnss3(-tools); plus what a workstation seat needs (systemd, dbus, logind's PAM
# module, udev, Xvfb) and the tools the checks use (pcsc-tools, usbutils).
PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "libpam-systemd", "linux-image-amd64", "initramfs-tools",
            "openssh-server", "python3", "python3-apt", "python3-cffi", "python3-cryptography", "sudo",
            "pcscd", "libccid", "opensc", "opensc-pkcs11", "pcsc-tools", "usbutils", "libnss3", "libnss3-tools",
            "firefox-esr", "xvfb", "xauth", "ca-certificates", "procps", "iproute2", "kmod")
SUITE_PACKAGES = {"bookworm": PACKAGES, "trixie": PACKAGES + ("polkitd",)}
READER_ID = "ccid-reader"
CARD_ID = "ccid-card"
SEAT_AGENT = "/usr/local/bin/tokentrust-seat-agent"
SEAT_JOBS = f"/home/{SEAT_USER}/.tokentrust-seat"

# Run in the chroot (after debootstrap minbase), as root, with /proc /sys /dev mounted. $PACKAGES $USERS $ADMIN
# $SEAT_USER $HOSTNAME come from the environment; the admin's public key is at /tmp/tokentrust-admin.pub.
BUILD_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
echo "deb $MIRROR $SUITE main" > /etc/apt/sources.list
[ -z "$SECURITY" ] || echo "deb $SECURITY $SUITE-security main" >> /etc/apt/sources.list
apt-get update -qq
apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
rm -f /usr/sbin/policy-rc.d
echo "$HOSTNAME" > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost\n' "$HOSTNAME" > /etc/hosts
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > /etc/fstab
# the network: DHCP from QEMU's user-mode stack (restrict=on: nothing beyond it); no wait for "online"
mkdir -p /etc/systemd/network
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' > /etc/systemd/network/20-wired.network
systemctl enable systemd-networkd.service >/dev/null 2>&1
systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_reap.service >/dev/null 2>&1 || true
# sshd: keys only
ssh-keygen -A >/dev/null
cat > /etc/ssh/sshd_config.d/tokentrust-lab.conf <<'EOF'
# tokentrust VM lab: key login only (reached through QEMU's hostfwd on the host's 127.0.0.1)
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM yes
UseDNS no
EOF
useradd -m -s /bin/bash "$ADMIN"
echo "$ADMIN ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/tokentrust-admin
chmod 0440 /etc/sudoers.d/tokentrust-admin
install -d -m 0700 -o "$ADMIN" -g "$ADMIN" "/home/$ADMIN/.ssh"
install -m 0600 -o "$ADMIN" -g "$ADMIN" /tmp/tokentrust-admin.pub "/home/$ADMIN/.ssh/authorized_keys"
ff() {  # ff USER ARGS...: real headless Firefox as USER (as the fleet does)
  u=$1; shift
  runuser -u "$u" -- env HOME="/home/$u" MOZ_HEADLESS=1 MOZ_CRASHREPORTER_DISABLE=1 \
    MOZ_DISABLE_NONLOCAL_CONNECTIONS=1 timeout 180 firefox-esr --headless --no-remote "$@" >/dev/null 2>&1
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
find /home -name lock -type l -delete
for spec in $USERS; do
  u=${spec%%:*}; kind=${spec#*:}
  case "$kind" in
    mozilla) ls /home/$u/.mozilla/firefox/*/cert9.db >/dev/null ;;
    xdg) ls /home/$u/.config/mozilla/firefox/*/cert9.db >/dev/null ;;
  esac
done
# QEMU's usb-ccid announces a PIN pad (bPINSupport) but leaves PC_to_RDR_Secure unanswered: OpenSC would then flag
# the token CKF_PROTECTED_AUTHENTICATION_PATH, NSS would log in with no PIN (the pad) and get CKR_GENERAL_ERROR. A
# lab quirk of the emulated reader (a real pad reader would take the PIN on its keys): OpenSC told not to use pads.
cat > /etc/opensc/opensc.conf <<'EOF'
app default {
	framework pkcs15 {
	}
	# tokentrust VM lab (lab/vm.py): QEMU's usb-ccid claims a PIN pad it cannot serve
	reader_driver pcsc {
		enable_pinpad = false;
	}
}
EOF
# the seat: alice logged in on tty1 by getty (logind: her session is the active one on seat0)
mkdir -p /etc/systemd/system/getty@tty1.service.d
cat > /etc/systemd/system/getty@tty1.service.d/autologin.conf <<EOF
[Service]
ExecStart=
ExecStart=-/sbin/agetty -o '-p -f -- \\\\u' --noclear --autologin $SEAT_USER %I \$TERM
EOF
install -m 0755 /tmp/tokentrust-seat-agent "$SEAT_AGENT"
cat >> "/home/$SEAT_USER/.bash_profile" <<EOF
# tokentrust VM lab: on the seat's console, an X display (Xvfb) and the seat agent in this logind session
if [ "\$(tty)" = /dev/tty1 ]; then
  Xvfb :0 -nolisten tcp -screen 0 1280x800x24 >/tmp/tokentrust-xvfb.log 2>&1 &
  export DISPLAY=:0
  exec $SEAT_AGENT $SEAT_JOBS
fi
EOF
chown "$SEAT_USER:" "/home/$SEAT_USER/.bash_profile"
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/*
"""

# The seat agent: runs, inside alice's console session (logind: seat0, active), the jobs the test side drops in her
# job folder (<id>.sh written as alice over SSH), output to <id>.out, exit code to <id>.rc. What runs from it is a
# process of her seat session, which is what polkit's "active local session" means.
SEAT_AGENT_SRC = r"""#!/bin/sh
# tokentrust VM lab: the seat agent (lab/vm.py). Runs the jobs dropped in $1 inside this login session.
d=$1
mkdir -p "$d" && chmod 0700 "$d"
echo "$XDG_SESSION_ID" > "$d/session"
while :; do
  for j in "$d"/*.sh; do
    [ -e "$j" ] || continue
    id=${j%.sh}
    mv "$j" "$id.run"
    sh "$id.run" > "$id.tmp" 2>&1; echo $? > "$id.rct"
    mv "$id.tmp" "$id.out"; mv "$id.rct" "$id.rc"; rm -f "$id.run"
  done
  sleep 0.3
done
"""


class VMError(RuntimeError):
    """The VM could not be built, started, reached or stopped; the message says what and what to do."""


def _run(cmd: Sequence[str], what: str, *, timeout: float = 900, check: bool = True,
         input_text: Optional[str] = None, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                           input=input_text, env=env)
    except FileNotFoundError as e:
        raise VMError(f"{what}: {cmd[0]} is not installed (scripts/setup.sh installs qemu-system-x86, qemu-utils, "
                      "debootstrap)") from e
    except subprocess.TimeoutExpired as e:
        raise VMError(f"{what}: no answer within {timeout:.0f}s ({' '.join(map(str, cmd[:3]))} ...)") from e
    if check and p.returncode != 0:
        raise VMError(f"{what}: `{' '.join(map(str, cmd[:4]))} ...` exited {p.returncode}: "
                      f"{(p.stderr or p.stdout).strip()[-1500:]}")
    return p


def need(*tools: str) -> None:
    """A clear error when a tool is missing (instead of a FileNotFoundError deep inside)."""
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise VMError(f"{', '.join(missing)} not found: run scripts/setup.sh (it installs qemu-system-x86, "
                      "qemu-utils, debootstrap, e2fsprogs)")


# ---------------------------------------------------------------------------------------------
# the image


def recipe_hash(suite: str = SUITE) -> str:
    text = json.dumps({"v": RECIPE_VERSION, "suite": suite, "packages": SUITE_PACKAGES[suite], "users": USERS,
                       "admin": ADMIN, "seat": SEAT_USER, "hostname": HOSTNAME, "script": BUILD_SCRIPT,
                       "agent": SEAT_AGENT_SRC, "disk": DISK_SIZE}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_dir(suite: str = SUITE) -> Path:
    if suite not in SUITES:
        raise VMError(f"unknown suite {suite!r}: one of {', '.join(SUITES)}")
    return CACHE / f"{suite}-{recipe_hash(suite)}"


def image_ready(suite: str = SUITE) -> bool:
    d = image_dir(suite)
    return all((d / f).exists() for f in ("disk.qcow2", "vmlinuz", "initrd.img", "id_ed25519", "image.json"))


def _mounts(rootfs: Path) -> list:
    return [("proc", rootfs / "proc", ["-t", "proc", "proc"]), ("sys", rootfs / "sys", ["-t", "sysfs", "sysfs"]),
            ("dev", rootfs / "dev", ["--bind", "/dev"]), ("devpts", rootfs / "dev" / "pts", ["--bind", "/dev/pts"])]


def build_image(suite: str = SUITE, log: Callable[[str], None] = lambda s: None) -> dict:
    """The image of `suite` in the cache (built when missing): {dir, disk, kernel, initrd, key, seconds, built}."""
    from lab import fleet as labfleet  # apt_mirrors: the same mirror logic as the fleet's images

    t0 = time.monotonic()
    d = image_dir(suite)
    if image_ready(suite):
        info = json.loads((d / "image.json").read_text())
        return dict(info, built=False, seconds=0.0)
    if os.geteuid() != 0:
        raise VMError("building the VM image needs root (debootstrap, chroot, mount): run as root or with sudo")
    need("debootstrap", "mkfs.ext4", "qemu-img", "ssh-keygen")
    try:
        mirror, security = labfleet.apt_mirrors()
    except labfleet.FleetError as e:
        raise VMError(str(e)) from e
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"tokentrust-vm-{suite}-", dir="/var/tmp"))  # not in the repo: lint walks it
    rootfs = tmp / "rootfs"
    mounted = []
    try:
        log(f"vm: debootstrap {suite} (minbase) from {mirror}")
        _run(["debootstrap", "--variant=minbase", suite, str(rootfs), mirror], f"debootstrap {suite}", timeout=1800)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tokentrust-vm-admin", "-f",
              str(tmp / "id_ed25519")], "making the VM's admin SSH key")
        shutil.copy(tmp / "id_ed25519.pub", rootfs / "tmp" / "tokentrust-admin.pub")
        (rootfs / "tmp" / "tokentrust-seat-agent").write_text(SEAT_AGENT_SRC)
        for _name, target, args in _mounts(rootfs):
            _run(["mount", *args, str(target)], f"mounting {target}")
            mounted.append(target)
        log(f"vm: installing {len(SUITE_PACKAGES[suite])} packages (systemd, pcscd, libccid, OpenSC, Firefox ESR, "
            "Xvfb, the kernel) and making the users")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MIRROR": mirror, "SECURITY": security, "SUITE": suite,
               "PACKAGES": " ".join(SUITE_PACKAGES[suite]), "ADMIN": ADMIN, "SEAT_USER": SEAT_USER,
               "SEAT_AGENT": SEAT_AGENT, "SEAT_JOBS": SEAT_JOBS, "HOSTNAME": HOSTNAME,
               "USERS": " ".join(f"{u}:{k or 'none'}" for u, k in USERS.items())}
        _run(["chroot", str(rootfs), "/bin/bash", "-c", BUILD_SCRIPT], f"installing the {suite} image", timeout=3600,
             env=env)
        for target in reversed(mounted):
            _run(["umount", "-l", str(target)], f"unmounting {target}", check=False)
        mounted = []
        boot = rootfs / "boot"
        kernels = sorted(boot.glob("vmlinuz-*"))
        initrds = sorted(boot.glob("initrd.img-*"))
        if not kernels or not initrds:
            raise VMError(f"no kernel/initrd in the {suite} image's /boot (linux-image-amd64 not installed?)")
        shutil.copy(kernels[-1], tmp / "vmlinuz")
        shutil.copy(initrds[-1], tmp / "initrd.img")
        host_key = (rootfs / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        log("vm: mkfs.ext4 -d (the rootfs as a disk) and qemu-img convert to qcow2")
        raw = tmp / "disk.raw"
        _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(raw), DISK_SIZE], "mkfs.ext4 -d",
             timeout=1800)
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp / "disk.qcow2")],
             "qemu-img convert", timeout=1800)
        raw.unlink()
        shutil.rmtree(rootfs)
        info = {"suite": suite, "debian": DEBIAN[suite], "recipe": recipe_hash(suite), "dir": str(d),
                "disk": str(d / "disk.qcow2"), "kernel": str(d / "vmlinuz"), "initrd": str(d / "initrd.img"),
                "key": str(d / "id_ed25519"), "host_key": " ".join(host_key), "kernel_version": kernels[-1].name,
                "build_seconds": round(time.monotonic() - t0, 1),
                "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        (tmp / "image.json").write_text(json.dumps(info, indent=2) + "\n")
        if d.exists():
            shutil.rmtree(d)
        shutil.move(str(tmp), str(d))
        log(f"vm: image {d.name} built in {info['build_seconds']}s")
        return dict(info, built=True, seconds=info["build_seconds"])
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        if tmp.exists():
            # never rm -rf through a still-mounted /dev
            if not any(str(t) in Path("/proc/mounts").read_text() for t in (rootfs / "dev", rootfs / "proc")):
                shutil.rmtree(tmp, ignore_errors=True)



# ---------------------------------------------------------------------------------------------
# QEMU: acceleration, start, QMP, stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def kvm_works(kernel: Path, timeout: float = 20.0) -> tuple:
    """(True, why) when KVM gets this kernel past its early start; (False, why) otherwise. Nested KVM here stalls
    right after the boot stub, so /dev/kvm opening is not enough: the kernel must print that it switched clocksource
    (a few seconds into the boot) on the serial line. TOKENTRUST_VM_ACCEL=tcg|kvm skips the probe."""
    forced = os.environ.get("TOKENTRUST_VM_ACCEL", "")
    if forced in ("tcg", "kvm"):
        return forced == "kvm", f"TOKENTRUST_VM_ACCEL={forced}"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return False, f"/dev/kvm cannot be opened ({e.strerror})"
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
           "-no-reboot", "-serial", "stdio", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"]
    try:
        # stdin never QEMU's: with -serial stdio it makes the descriptor non-blocking, for every process sharing it
        # (ansible-playbook then refuses to start: "Ansible requires blocking IO on stdin").
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError as e:
        raise VMError("qemu-system-x86_64 is not installed: run scripts/setup.sh (qemu-system-x86)") from e
    seen = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(p.stdout.fileno(), False)
    try:
        while time.monotonic() < deadline and p.poll() is None:
            chunk = p.stdout.read() or b""
            seen += chunk
            if b"clocksource: Switched to clocksource" in seen:
                return True, "KVM boots the kernel"
            time.sleep(0.2)
    finally:
        p.kill()
        p.wait()
    tail = seen.decode(errors="replace").strip().splitlines()[-1:] or ["nothing on the serial line"]
    return False, f"KVM probe: the kernel did not get past its early start in {timeout:.0f}s ({tail[0][:120]})"


def accel_choice(kernel: Path) -> tuple:
    """kvm_works, its answer kept for a day in the cache (the probe costs up to 20 s when KVM stalls)."""
    if os.environ.get("TOKENTRUST_VM_ACCEL", "") in ("tcg", "kvm"):
        return kvm_works(kernel)
    key = f"{kernel}:{os.uname().release}"
    path = CACHE / "kvm-probe.json"
    try:
        seen = json.loads(path.read_text())
        if seen.get("key") == key and time.time() - seen.get("at", 0) < 86400:
            return seen["kvm"], seen["why"] + " (probed earlier)"
    except (OSError, ValueError, KeyError):
        pass
    ok, why = kvm_works(kernel)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "at": time.time(), "kvm": ok, "why": why}))
    return ok, why


class QMP:
    """A minimal QMP client on a unix socket (one command at a time; events are skipped)."""

    def __init__(self, path: Path, timeout: float = 30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as e:
            raise VMError(f"QMP socket {path} does not answer ({e}): is the VM running?") from e
        self.f = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.f.readline()
        if not line:
            raise VMError("QMP closed the connection")
        return json.loads(line)

    def execute(self, cmd: str, **args) -> dict:
        self.f.write(json.dumps({"execute": cmd, "arguments": args} if args else {"execute": cmd}).encode() + b"\n")
        self.f.flush()
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise VMError(f"QMP {cmd}: {msg['error'].get('desc', msg['error'])}")

    def close(self) -> None:
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def qmp(m: dict, cmd: str, **args) -> dict:
    with QMP(Path(m["dir"]) / "qmp.sock") as q:
        return q.execute(cmd, **args)


def _pid_alive(pidfile: Path, marker: bytes) -> Optional[int]:
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


def qemu_pid(m: dict) -> Optional[int]:
    return _pid_alive(Path(m["dir"]) / "qemu.pid", str(Path(m["dir"]) / "qmp.sock").encode())


def qemu_command(m: dict, image: dict) -> list:
    d = Path(m["dir"])
    accel = ["-accel", "kvm", "-cpu", "host"] if m["accel"] == "kvm" else ["-accel", "tcg,thread=multi",
                                                                            "-cpu", "max"]
    return ["qemu-system-x86_64", "-name", f"tokentrust-{m['name']}", *accel, "-smp", "2", "-m", str(MEMORY_MB),
            "-machine", "q35", "-kernel", image["kernel"], "-initrd", image["initrd"],
            "-append", "root=/dev/vda rw console=tty1 console=ttyS0 quiet systemd.show_status=1",
            "-drive", f"file={d / 'disk.qcow2'},if=virtio,format=qcow2,cache=unsafe",
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{m['ssh_port']}-:22",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "qemu-xhci,id=xhci",
            "-chardev", f"socket,id=vscard,path={d / 'vscard.sock'},server=on,wait=off",
            "-device", f"usb-ccid,id={READER_ID},bus=xhci.0",
            "-device", f"ccid-card-passthru,id={CARD_ID},chardev=vscard",
            "-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off",
            "-serial", f"file:{d / 'console.log'}", "-display", "none", "-vga", "std",
            "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
            "-daemonize", "-pidfile", str(d / "qemu.pid")]


def ssh_args(m: dict) -> list:
    return ["ssh", "-i", m["ssh"]["key"], "-p", str(m["ssh_port"]),
            "-o", f"UserKnownHostsFile={m['ssh']['known_hosts']}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]


def ssh(m: dict, command: str, *, user: str = "root", timeout: float = 300, check: bool = True,
        input_text: Optional[str] = None) -> subprocess.CompletedProcess:
    """`command` (a shell line) in the guest as `user` (admin's SSH login, then sudo)."""
    if user == ADMIN:
        remote = command
    else:
        remote = f"sudo -n -H -u {shlex.quote(user)} sh -c {shlex.quote(command)}"
    return _run([*ssh_args(m), f"{ADMIN}@127.0.0.1", remote], f"`{command[:60]}` as {user} in the VM",
                timeout=timeout, check=check, input_text=input_text)


def console_tail(m: dict, lines: int = 30) -> str:
    """The guest console's last lines (its serial console, console.log), for an error that the folder's removal
    would otherwise leave without a trace."""
    try:
        text = (Path(m["dir"]) / "console.log").read_text(errors="replace")
    except OSError as e:
        return f"(no console log: {e.strerror})"
    tail = [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(tail) if tail else "(the console log is empty: the kernel wrote nothing)"


def wait_ssh(m: dict, timeout: float = 600) -> float:
    """Seconds until sshd in the guest answers (through the hostfwd)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = ""
    while time.monotonic() < deadline:
        if qemu_pid(m) is None:
            raise VMError(f"QEMU exited during the boot ({Path(m['dir']) / 'qemu.log'}); the console's last "
                          f"lines:\n{console_tail(m)}")
        if _port_open(m["ssh_port"]):
            try:
                p = subprocess.run([*ssh_args(m), f"{ADMIN}@127.0.0.1", "true"], capture_output=True, text=True,
                                   timeout=90, check=False)
            except subprocess.TimeoutExpired:  # sshd accepts but the loaded guest is slow to finish the login
                last = "ssh login took more than 90 s"
                continue
            if p.returncode == 0:
                return round(time.monotonic() - t0, 1)
            last = p.stderr.strip()[-300:]
        time.sleep(2)
    raise VMError(f"sshd in the VM did not answer on 127.0.0.1:{m['ssh_port']} within {timeout:.0f}s ({last}); "
                  f"the console's last lines ({Path(m['dir']) / 'console.log'}):\n{console_tail(m)}")


def wait_system(m: dict, timeout: float = 300) -> str:
    """systemd's view once the boot is over (`systemctl is-system-running --wait`: running or degraded)."""
    p = ssh(m, "systemctl is-system-running --wait", timeout=timeout, check=False)
    return p.stdout.strip()


# ---------------------------------------------------------------------------------------------
# the bridge and the test page forward (host-side processes of the VM)


def _spawn(m: dict, name: str, cmd: list) -> int:
    d = Path(m["dir"])
    with open(d / f"{name}.log", "ab") as log:
        p = subprocess.Popen(cmd, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
    (d / f"{name}.pid").write_text(str(p.pid))
    return p.pid


def _kill(pidfile: Path, marker: bytes) -> bool:
    pid = _pid_alive(pidfile, marker)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
    return True


def priority() -> list:
    """The command prefix that runs QEMU and the VSCard bridge at TOKENTRUST_VM_NICE (a nice value, -20..19; unset:
    the caller's own). The emulated USB reader is the timing-sensitive part of the lab: on a machine busy with other
    work (make test's second lane) a negative value (root only) keeps its APDUs answered in time."""
    raw = os.environ.get("TOKENTRUST_VM_NICE", "").strip()
    if not raw:
        return []
    try:
        n = int(raw)
    except ValueError:
        n = None
    if n is None or not -20 <= n <= 19:
        raise VMError(f"TOKENTRUST_VM_NICE={raw!r}: a whole number from -20 to 19 (a nice value), or unset")
    step = n - os.nice(0)  # nice(1) adds to the caller's own value: the value asked is where QEMU ends
    if step < 0 and os.geteuid() != 0:
        raise VMError(f"TOKENTRUST_VM_NICE={n}: only root may raise a priority (this process runs at nice "
                      f"{os.nice(0)}); unset it or give {os.nice(0)}..19")
    return ["nice", "-n", str(step)] if step else []


def start_bridge(m: dict, inserted: bool = True) -> None:
    d = Path(m["dir"])
    if _pid_alive(d / "vscard.pid", b"lab.vscard"):
        return
    cmd = [*priority(), sys.executable, "-m", "lab.vscard", "run", m["card_dir"], "--chardev", str(d / "vscard.sock"),
           "--control", str(d / "vscard.ctl")]
    _spawn(m, "vscard", cmd + ([] if inserted else ["--removed"]))
    deadline = time.monotonic() + 30
    while not (d / "vscard.ctl").exists():
        if time.monotonic() > deadline:
            raise VMError(f"the VSCard bridge did not start: see {d / 'vscard.log'}")
        time.sleep(0.1)


def bridge(m: dict, cmd: str) -> dict:
    from lab import vscard

    try:
        return vscard.control(Path(m["dir"]) / "vscard.ctl", cmd)
    except vscard.BridgeError as e:
        raise VMError(str(e)) from e


def start_forward(m: dict) -> None:
    """The test page (on this machine's 127.0.0.1) on the guest's 127.0.0.1, same port: an SSH reverse forward."""
    d = Path(m["dir"])
    if _pid_alive(d / "forward.pid", b"ExitOnForwardFailure"):
        return
    port = m["testpage"]["port"]
    _spawn(m, "forward", [*ssh_args(m), "-N", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15",
                          "-R", f"127.0.0.1:{port}:127.0.0.1:{port}", f"{ADMIN}@127.0.0.1"])
    deadline = time.monotonic() + 60
    while ssh(m, f"timeout 2 bash -c '</dev/tcp/127.0.0.1/{port}'", user=ADMIN, check=False).returncode != 0:
        if time.monotonic() > deadline or not _pid_alive(d / "forward.pid", b"ExitOnForwardFailure"):
            raise VMError(f"the test page's reverse forward to the guest's 127.0.0.1:{port} does not work: "
                          f"see {d / 'forward.log'}")
        time.sleep(1)


# ---------------------------------------------------------------------------------------------
# card, reader, seat


def card_insert(m: dict) -> dict:
    return bridge(m, "insert")


def card_remove(m: dict) -> dict:
    return bridge(m, "remove")


def reader_unplug(m: dict) -> None:
    """The USB reader pulled out: QMP device_del of the usb-ccid device (its card slot goes with it)."""
    qmp(m, "device_del", id=READER_ID)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(c.get("name") == READER_ID for c in qmp(m, "qom-list", path="/machine/peripheral")):
            return
        time.sleep(0.3)
    raise VMError("the reader did not go away within 30s of device_del")


def reader_plug(m: dict) -> None:
    """The USB reader plugged back: device_add usb-ccid and its passthru card slot, then the bridge re-announces
    its reader (and the card, if it is in)."""
    qmp(m, "device_add", driver="usb-ccid", id=READER_ID, bus="xhci.0")
    qmp(m, "device_add", driver="ccid-card-passthru", id=CARD_ID, chardev="vscard")
    bridge(m, "resync")


def seat_run(m: dict, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`script` (sh) run by the seat agent inside alice's console session (logind: seat0, active)."""
    job = f"j{int(time.time() * 1000)}{os.getpid()}"
    base = f"{SEAT_JOBS}/{job}"
    ssh(m, f"cat > {base}.part && mv {base}.part {base}.sh", user=SEAT_USER, input_text=script)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = ssh(m, f"cat {base}.rc 2>/dev/null && echo --- && cat {base}.out && rm -f {base}.rc {base}.out",
                user=SEAT_USER, check=False)
        if p.returncode == 0 and p.stdout.strip():
            rc, _, out = p.stdout.partition("---\n")
            return subprocess.CompletedProcess(script, int(rc.strip()), out, "")
        time.sleep(1)
    raise VMError(f"the seat agent did not finish the job within {timeout:.0f}s (is {SEAT_USER} logged in on tty1?)")


# ---------------------------------------------------------------------------------------------
# inventory and lab vars


def _yaml(s) -> str:
    return json.dumps(str(s))


MARKER = "Generated by `python -m lab.vm create`"


def write_inventory(inv: Path, m: dict) -> None:
    """A copy of inventories/example: only the hosts and their connection values differ (as lab.fleet's)."""
    from lab import fleet as labfleet

    if inv.exists():
        marker = inv / "hosts.yml"
        if not marker.exists() or MARKER not in marker.read_text():
            raise VMError(f"{inv} exists and was not written by lab.vm: refusing to overwrite it")
        shutil.rmtree(inv)
    shutil.copytree(labfleet.EXAMPLE_INVENTORY, inv)
    args = (f"-o UserKnownHostsFile={m['ssh']['known_hosts']} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes "
            "-o ControlMaster=auto -o ControlPersist=60s")
    text = ("---\n"
            f"# {MARKER} from inventories/example: the same group_vars; only the\n"
            "# hosts and their connection values differ. `python -m lab.vm destroy` removes it.\n"
            f"#   ansible-playbook -i {inv} playbooks/site.yml -e @{m['lab_vars']}\n"
            "all:\n  children:\n    windows:\n      hosts: {}\n      children:\n        windows_kerberos:\n"
            "          hosts: {}\n    linux:\n      hosts:\n"
            f"        {m['name']}:\n"
            f"          tokentrust_lab_release: {m['suite']}  # Debian {DEBIAN[m['suite']]}, a QEMU VM\n"
            "          ansible_host: 127.0.0.1\n"
            f"          ansible_port: {m['ssh_port']}\n"
            f"          ansible_user: {ADMIN}\n"
            f"          ansible_ssh_private_key_file: {_yaml(m['ssh']['key'])}\n"
            f"          ansible_ssh_common_args: {_yaml(args)}\n"
            "          ansible_python_interpreter: /usr/bin/python3\n"
            "          ansible_timeout: 60  # TCG: sudo's prompt can take more than the default 10 s under load\n")
    (inv / "hosts.yml").write_text(text)


def write_lab_vars(path: Path, m: dict) -> None:
    """lab.fleet's lab vars with key=card: the PIV card behind the USB CCID reader, OpenSC resolved on the host."""
    from lab import fleet as labfleet
    from lab import piv_card

    fm = {"token": {"label": piv_card.HOLDER,
                    "lab_only_secrets": {"pin": piv_card.DEFAULT_PIN, "puk": piv_card.DEFAULT_PUK}},
          "testpage": m["testpage"], "key": "card", "pki": m["pki"], "dir": m["dir"]}
    labfleet.write_lab_vars(path, fm)
    text = path.read_text().replace("`python -m lab.fleet create`", "`python -m lab.vm create`")
    # no SoftHSM2 stand-in in the VM: the lab's token module is the card's (OpenSC, which site.yml makes sure of)
    text = text.replace(f"tokentrust_token_module: {_yaml(labfleet.TOKEN_MODULE)}",
                        f"tokentrust_token_module: {_yaml(labfleet.CARD_MODULE)}")
    text = text.replace("a PIV card (lab/piv_card.py) in vpcd's reader under pcscd",
                        "a PIV card (lab/piv_card.py) in QEMU's USB CCID reader (lab/vscard.py), libccid, pcscd")
    path.write_text(text)


# ---------------------------------------------------------------------------------------------
# create / destroy / status


def _load(run: Path) -> Optional[dict]:
    try:
        return json.loads((Path(run) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def create(run: Path = DEFAULT_DIR, *, suite: str = SUITE, inventory: Path = DEFAULT_INVENTORY,
           port: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Build (or reuse) the image, boot a VM from an overlay, start the bridge and the test page; returns the
    manifest (also <run>/vm.json). A VM already running in <run> is kept."""
    from lab import build as labbuild
    from lab import fleet as labfleet

    t0 = time.monotonic()
    run, inventory = Path(run).resolve(), Path(inventory).resolve()
    need("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen")
    priority()  # a wrong TOKENTRUST_VM_NICE is said before anything is built
    old = _load(run)
    if run.exists() and any(run.iterdir()) and not old:
        raise VMError(f"{run} exists, is not empty and holds no {MANIFEST}: not a VM folder, refusing to use it")
    if old and qemu_pid(old):
        if old.get("seconds") is not None:  # a VM that came up completely: kept
            return old
        stop(old)  # one whose create did not finish: started again from its overlay
    if port is not None and port_in_use(port):
        raise VMError(f"127.0.0.1:{port} is already in use: choose another --port (or none: a free one is picked)")
    image = build_image(suite, log)
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    for stale in ("qmp.sock", "vscard.sock", "vscard.ctl", "vscard.ctl.new", "console.log"):
        (run / stale).unlink(missing_ok=True)
    pki = (old or {}).get("pki")
    if not labbuild._pki_ok(pki):
        log("vm: generating the stand-in PKI")
        pki = labbuild.build_pki(run / "pki")
        shutil.rmtree(run / "card", ignore_errors=True)
    page = labbuild.start_testpage(run, pki)
    labfleet.make_card(run / "card", pki)
    ssh_dir = run / "ssh"
    ssh_dir.mkdir(exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    shutil.copy(image["key"], ssh_dir / "id_ed25519")
    os.chmod(ssh_dir / "id_ed25519", 0o600)
    ssh_port = port or free_port()
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{ssh_port} {image['host_key']}\n")
    use_kvm, why = accel_choice(Path(image["kernel"]))
    log(f"vm: {'KVM' if use_kvm else 'TCG'} ({why})")
    name = HOSTNAME
    m = {"dir": str(run), "manifest": str(run / MANIFEST), "name": name, "suite": suite, "debian": DEBIAN[suite],
         "image": {k: image[k] for k in ("dir", "disk", "kernel", "initrd", "recipe", "kernel_version")},
         "image_built": image["built"], "image_seconds": image["seconds"],
         "accel": "kvm" if use_kvm else "tcg", "accel_why": why, "ssh_port": ssh_port,
         "ssh": {"key": str(ssh_dir / "id_ed25519"), "known_hosts": str(ssh_dir / "known_hosts"), "user": ADMIN},
         "inventory": str(inventory), "lab_vars": str(run / "lab_vars.yml"), "card_dir": str(run / "card"),
         "pki": pki, "testpage": {k: page[k] for k in ("pid", "host", "port", "url", "log", "pidfile", "state_file")},
         "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    (run / "disk.qcow2").unlink(missing_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image["disk"], "-F", "qcow2", str(run / "disk.qcow2")],
         "making the VM's overlay disk")
    start_bridge(m)
    log(f"vm: booting {name} (Debian {DEBIAN[suite]}, {m['accel'].upper()}, -smp 2), ssh on 127.0.0.1:{ssh_port}")
    t_boot = time.monotonic()
    with open(run / "qemu.log", "w") as qlog:
        p = subprocess.run([*priority(), *qemu_command(m, image)], stdin=subprocess.DEVNULL, stdout=qlog,
                           stderr=subprocess.STDOUT, check=False, timeout=120)
    if p.returncode != 0:
        _kill(run / "vscard.pid", b"lab.vscard")
        err = (run / "qemu.log").read_text().strip()[-800:]
        if "hostfwd" in err or "Could not set up host forwarding" in err:
            raise VMError(f"QEMU could not forward 127.0.0.1:{ssh_port} (in use?): {err}")
        raise VMError(f"QEMU did not start: {err}")
    (run / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
    m["ssh_seconds"] = wait_ssh(m)
    m["system_state"] = wait_system(m)
    m["boot_seconds"] = round(time.monotonic() - t_boot, 1)
    log(f"vm: sshd answered after {m['ssh_seconds']}s, systemd {m['system_state']} after {m['boot_seconds']}s")
    start_forward(m)
    write_inventory(inventory, m)
    write_lab_vars(run / "lab_vars.yml", m)
    m["seconds"] = round(time.monotonic() - t0, 1)
    (run / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
    os.chmod(run / MANIFEST, 0o600)
    return m


def stop(m: dict, timeout: float = 90) -> str:
    """Power the VM off: ACPI powerdown over QMP (systemd shuts down cleanly), QMP quit, then SIGKILL."""
    pid = qemu_pid(m)
    if pid is None:
        return "not running"
    how = "powerdown"
    try:
        qmp(m, "system_powerdown")
    except VMError:
        how = "quit"
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if Path(f"/proc/{pid}").exists():
        how = "quit"
        try:
            qmp(m, "quit")
        except VMError:
            pass
        time.sleep(2)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
        how = "killed"
    return how


def destroy(run: Path = DEFAULT_DIR, log: Callable[[str], None] = lambda s: None) -> list:
    """Stop the VM, the bridge, the forward and the test page; remove <run> and the inventory it wrote."""
    from lab import testpage as tp

    run = Path(run).resolve()
    m = _load(run)
    if m is None:
        if run.exists() and any(run.iterdir()):
            raise VMError(f"{run} holds no {MANIFEST}: not a VM folder, refusing to remove it")
        return []
    gone = []
    how = stop(m)
    if how != "not running":
        gone.append(f"vm ({how})")
    for name, marker in (("forward", b"ExitOnForwardFailure"), ("vscard", b"lab.vscard")):
        if _kill(run / f"{name}.pid", marker):
            gone.append(name)
    if tp.stop_daemon(run / "testpage" / "testpage.pid"):
        gone.append("testpage")
    inv = Path(m["inventory"])
    if (inv / "hosts.yml").exists() and MARKER in (inv / "hosts.yml").read_text():
        shutil.rmtree(inv)
        gone.append(str(inv))
    shutil.rmtree(run)
    gone.append(str(run))
    log(f"vm: removed {len(gone)} items")
    return gone


def status(run: Path = DEFAULT_DIR) -> dict:
    run = Path(run).resolve()
    m = _load(run)
    if not m:
        return {"dir": str(run), "exists": False}
    out = {"dir": str(run), "exists": True, "running": qemu_pid(m) is not None, "ssh_port": m["ssh_port"],
           "accel": m["accel"], "inventory": m["inventory"], "lab_vars": m["lab_vars"]}
    try:
        out["bridge"] = bridge(m, "status")
    except VMError as e:
        out["bridge"] = str(e)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.vm", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("image", "create", "destroy", "status", "ssh", "card", "reader"):
        p = sub.add_parser(name)
        if name != "image":
            p.add_argument("--dir", default=str(DEFAULT_DIR), help="VM folder (default lab/vm)")
        if name in ("image", "create"):
            p.add_argument("--suite", choices=SUITES, default=SUITE, help=f"Debian release (default {SUITE})")
        if name == "create":
            p.add_argument("--inventory", default=str(DEFAULT_INVENTORY), help="inventory (default inventories/vm)")
            p.add_argument("--port", type=int, help="the 127.0.0.1 port for SSH (default: a free one)")
        if name == "ssh":
            p.add_argument("--user", default="root")
            p.add_argument("command", nargs=argparse.REMAINDER)
        if name == "card":
            p.add_argument("action", choices=("insert", "remove", "status"))
        if name == "reader":
            p.add_argument("action", choices=("unplug", "plug"))
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(msg, flush=True)

    try:
        if args.cmd == "image":
            print(json.dumps(build_image(args.suite, say), indent=2))
            return 0
        if args.cmd == "create":
            m = create(Path(args.dir), suite=args.suite, inventory=Path(args.inventory), port=args.port, log=say)
            print(f"vm ready in {m.get('seconds', 0)}s (image {'built' if m.get('image_built') else 'reused'} "
                  f"{m.get('image_seconds', 0)}s, boot {m.get('boot_seconds', '?')}s, {m['accel'].upper()}): "
                  f"{m['name']} Debian {m['debian']} over SSH on 127.0.0.1:{m['ssh_port']}; inventory {m['inventory']};"
                  f" lab vars -e @{m['lab_vars']}")
            return 0
        if args.cmd == "destroy":
            gone = destroy(Path(args.dir), log=say)
            print(f"vm destroyed ({len(gone)} items)" if gone else "no vm to destroy")
            return 0
        if args.cmd == "status":
            print(json.dumps(status(Path(args.dir)), indent=2))
            return 0
        m = _load(Path(args.dir).resolve())
        if not m:
            raise VMError(f"no VM in {args.dir}: run `python -m lab.vm create` first")
        if args.cmd == "ssh":
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            p = ssh(m, " ".join(cmd), user=args.user, check=False)
            sys.stdout.write(p.stdout)
            sys.stderr.write(p.stderr)
            return p.returncode
        if args.cmd == "card":
            print(json.dumps(bridge(m, args.action)))
        elif args.cmd == "reader":
            (reader_unplug if args.action == "unplug" else reader_plug)(m)
            print(f"reader {args.action}ged")
    except VMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
