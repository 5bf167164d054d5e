"""The lab's card reader: Debian's vsmartcard-vpcd driver under the real pcscd, kept on 127.0.0.1.

    lib = build_loopback()                      # lab/build/libvpcd_loopback.so (LD_PRELOAD for pcscd only)
    text = reader_conf(port)                    # /etc/reader.conf.d/ entry: the vpcd reader on that port
    with local_pcscd(tmpdir, port) as env:      # a pcscd of our own on this machine (tests, the first proof)
        subprocess.run(["pkcs11-tool", "-L"], env=env)

vpcd listens (normal mode) and the card (lab/piv_card.py) connects: reverse mode (the card listens) crashes
pcscd 1.9.9 when a slot is empty. vpcd binds INADDR_ANY with no option; the preloaded shim
(lab/vpcd_loopback/vpcd_loopback.c) turns that into 127.0.0.1. Each workstation has its own port, since
the fleet's containers share the host's network.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIM_SRC = ROOT / "lab" / "vpcd_loopback" / "vpcd_loopback.c"
BUILD_DIR = ROOT / "lab" / "build"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
PCSCD = "/usr/sbin/pcscd"
DEFAULT_PORT = 0x8C7B


class ReaderError(RuntimeError):
    """The virtual reader could not be set up; the message says what to do."""


def build_loopback(out_dir: Path = BUILD_DIR, cc: str = "gcc") -> Path:
    """Compile the bind-to-127.0.0.1 shim when missing or older than its source."""
    lib = Path(out_dir) / "libvpcd_loopback.so"
    if lib.exists() and lib.stat().st_mtime >= SHIM_SRC.stat().st_mtime:
        return lib
    if shutil.which(cc) is None:
        raise ReaderError(f"cannot build the vpcd loopback shim: {cc!r} is not installed (apt-get install gcc)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libvpcd_loopback.", suffix=".so", dir=lib.parent)
    os.close(fd)
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-o", tmp, str(SHIM_SRC), "-ldl"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        os.unlink(tmp)
        raise ReaderError(f"cannot build the vpcd loopback shim: {p.stderr.strip()}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, lib)
    return lib


def reader_conf(port: int, driver: str = VPCD_DRIVER) -> str:
    return ("# tokentrust lab: the virtual reader (vsmartcard-vpcd, normal mode: it listens, the card connects)\n"
            f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME   /dev/null:0x{port:04X}\nLIBPATH      {driver}\n'
            f"CHANNELID    0x{port:04X}\n")


def listening(port: int) -> list:
    """The local addresses listening on TCP `port` (from /proc/net/tcp{,6})."""
    out = []
    for f, fam in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, st = parts[1], parts[3]
            host, p = addr.split(":")
            if st == "0A" and int(p, 16) == port:
                if fam == 4:
                    out.append(".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    out.append("ipv6:" + host)
    return out


def pcscd_running_here() -> bool:
    """A pcscd in this machine's own mount namespace (its socket is ours). The fleet's workstations run pcscd too,
    in containers that share this kernel: `pgrep` lists theirs, which take nothing of ours."""
    p = subprocess.run(["pgrep", "-x", "pcscd"], capture_output=True, text=True, check=False)
    try:
        ours = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return bool(p.stdout.split())
    for pid in p.stdout.split():
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") == ours:
                return True
        except OSError:
            continue
    return False


@contextlib.contextmanager
def local_pcscd(workdir: Path, port: int):
    """A pcscd of our own on this machine with one vpcd reader on 127.0.0.1:`port`, in the foreground of a child
    process; yields the environment for clients. Requires root (pcscd's socket is /run/pcscd/pcscd.comm) and no
    other pcscd running."""
    if not Path(VPCD_DRIVER).exists():
        raise ReaderError(f"{VPCD_DRIVER} is missing: apt-get install vsmartcard-vpcd")
    if pcscd_running_here():
        raise ReaderError("a pcscd already runs on this machine: stop it first (the lab needs its own)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "reader.conf"
    conf.write_text(reader_conf(port))
    env = dict(os.environ, LD_PRELOAD=str(build_loopback()))
    log = open(workdir / "pcscd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([PCSCD, "--foreground", "--config", str(conf), "--debug"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ReaderError(f"pcscd did not open the vpcd reader on port {port}: see {workdir}/pcscd.log")
            time.sleep(0.05)
        yield dict(os.environ)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
