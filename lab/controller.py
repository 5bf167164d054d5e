"""A Debian 13 (trixie) Ansible controller as a container, built here from Debian's packages: the controller a team
gets today when it installs Ansible from PyPI on Debian stable (Python 3.13, the newest ansible-core).

    python -m lab.controller image                  # build (or find) the image; prints its tag and build time
    python -m lab.controller run -- CMD ARGS...      # CMD in it, this repository mounted at its own path

The image: a `debootstrap --variant=minbase trixie` rootfs imported into Docker (as lab/fleet.py builds the
bookworm fleet), then python3, python3-venv, openssh-client, libnss3 and publicsuffix from Debian, a virtual
environment /opt/venv with requirements-controller.txt from PyPI (ansible, the newest ansible-core, pytest...),
and ansible-test's sanity environments for that ansible-core made ready (scripts/sanity.py --prime), so that a run
installs nothing. Tagged by a hash of this recipe (script, packages, requirements-controller.txt): built once.

A container runs with host networking (it reaches the fleet's sshd on 127.0.0.1 ports, and nothing by a container
address), the repository and any given directory mounted at the same path as on the host, so inventories, keys
and lab files written by lab/fleet.py are used as they are. The host's CA bundle is given to pip, so that pip
inside reaches the package registry the way pip on the host does.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from lab import fleet as fleetlab

ROOT = Path(__file__).resolve().parent.parent
SUITE = "trixie"
RECIPE_VERSION = 1
IMAGE_REPO = "tokentrust-controller"
REQUIREMENTS = ROOT / "requirements-controller.txt"
PACKAGES = ("python3", "python3-venv", "openssh-client", "libnss3", "libnss3-tools", "publicsuffix",
            "ca-certificates", "locales")
VENV = "/opt/venv"
SANITY_HOME = "/opt/ansible-test-home"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
CA_IN = "/etc/tokentrust/host-ca.crt"

BUILD_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
cat > /etc/apt/sources.list <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
EOF
[ -z "$SECURITY" ] || echo "deb $SECURITY $SUITE-security main" >> /etc/apt/sources.list
apt-get update -qq
apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
apt-get clean
python3 -m venv $VENV
# pip's certificate bundle for every pip run (ansible-test passes pip no PIP_* variable): the host's, mounted
[ ! -f "$CA_IN" ] || printf '[global]\ncert = %s\n' "$CA_IN" > /etc/pip.conf
$VENV/bin/pip install -q --disable-pip-version-check -r /recipe/requirements-controller.txt
# ansible-test's sanity environments for this ansible-core, made now (from the package registry) so runs install nothing
TOKENTRUST_SANITY_HOME=$SANITY_HOME $VENV/bin/python $SRC/scripts/sanity.py --out /tmp/sanity-prime --prime \
  >/tmp/prime.log 2>&1 || { tail -40 /tmp/prime.log; exit 1; }
rm -rf /tmp/sanity-prime /tmp/prime.log /root/.cache
$VENV/bin/ansible --version | head -1
"""


def recipe_hash() -> str:
    text = json.dumps({"v": RECIPE_VERSION, "suite": SUITE, "packages": PACKAGES, "script": BUILD_SCRIPT,
                       "requirements": REQUIREMENTS.read_text()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pip_env() -> list:
    """docker arguments that give pip inside the host's CA bundle (and proxy settings, when the host has them)."""
    args = []
    if os.path.exists(HOST_CA):
        args += ["-v", f"{HOST_CA}:{CA_IN}:ro", "-e", f"PIP_CERT={CA_IN}", "-e", f"REQUESTS_CA_BUNDLE={CA_IN}"]
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        if os.environ.get(k):
            args += ["-e", f"{k}={os.environ[k]}"]
    return args


def build_base(tag: str, mirror: str, log: Callable[[str], None]) -> None:
    """debootstrap minbase trixie -> `docker import` as `tag`: lab/fleet.py's build_base for this suite."""
    fleetlab.build_base(tag, mirror, log, suite=SUITE)


def build_image(log: Callable[[str], None] = lambda s: None) -> dict:
    """The controller image, built when its recipe tag is missing: {image, base, built, seconds}."""
    why = fleetlab.docker_ready()
    if why:
        raise fleetlab.FleetError(why)
    t0 = time.monotonic()
    base = base_tag()
    image = f"{IMAGE_REPO}/{SUITE}:{recipe_hash()}"
    built = []
    with fleetlab.build_lock(f"controller-{image}", log):
        if not fleetlab.image_exists(image):
            built = _build(image, base, log)
    return {"image": image, "base": base, "built": built, "seconds": round(time.monotonic() - t0, 1)}


def _build(image: str, base: str, log: Callable[[str], None]) -> list:
    """build_image's work, under its lock: the tags it built."""
    built = []
    mirror, security = fleetlab.apt_mirrors()
    security = security.replace("bookworm", SUITE)
    if not fleetlab.image_exists(base):
        ensure_base(log)
        built.append(base)
    log("controller: Python 3.13 from Debian, ansible from PyPI, ansible-test's sanity environments")
    name = f"tokentrust-controller-build-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="tokentrust-controller-recipe-") as recipe:
        (Path(recipe) / "requirements-controller.txt").write_text(REQUIREMENTS.read_text())
        try:
            fleetlab.docker("run", "--name", name, "--network", "host", *_pip_env(),
                            "-v", f"{recipe}:/recipe:ro", "-v", f"{ROOT}:/src:ro",
                            "-e", f"MIRROR={mirror}", "-e", f"SECURITY={security}", "-e", f"SUITE={SUITE}",
                            "-e", f"PACKAGES={' '.join(PACKAGES)}", "-e", f"VENV={VENV}",
                            "-e", f"SANITY_HOME={SANITY_HOME}", "-e", "SRC=/src", "-e", f"CA_IN={CA_IN}",
                            base, "bash", "-c", BUILD_SCRIPT, what="building the controller image", timeout=3600)
            fleetlab.docker("commit", "--change", f"ENV PATH={VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "--change", "ENV LC_ALL=C.UTF-8", name, image, what="committing the controller image")
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    built.append(image)
    return built


def base_tag() -> str:
    """The Debian 13 base image's tag (a hash of its recipe: debootstrap minbase of SUITE), shared with lab/ee.py."""
    return f"{IMAGE_REPO}/base-{SUITE}:{hashlib.sha256(SUITE.encode()).hexdigest()[:12]}"


def ensure_base(log: Callable[[str], None] = lambda s: None) -> str:
    """The Debian 13 base (`debootstrap --variant=minbase trixie` imported into Docker by lab/fleet.py's build_base),
    built when missing; its tag. The controller image and the execution environment (lab/ee.py) start from it."""
    base = base_tag()
    if not fleetlab.image_exists(base):
        mirror, _security = fleetlab.apt_mirrors()
        build_base(base, mirror, log)
    return base


def run(cmd: Sequence[str], *, image: Optional[str] = None, mounts: Sequence = (), env: Optional[dict] = None,
        timeout: float = 1800, cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """`cmd` in a fresh controller container (removed afterwards), host networking, this repository and `mounts`
    at their own paths, working directory `cwd` (default: the repository). The CompletedProcess, not checked."""
    image = image or build_image()["image"]
    args = ["docker", "run", "--rm", "--network", "host", "-v", f"{ROOT}:{ROOT}", "-w", str(cwd or ROOT),
            "-e", "PYTHONDONTWRITEBYTECODE=1", "-e", f"TOKENTRUST_SANITY_HOME={SANITY_HOME}", *_pip_env()]
    for m in mounts:
        args += ["-v", f"{m}:{m}"]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    return subprocess.run([*args, image, *cmd], capture_output=True, text=True, timeout=timeout, check=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("image", help="build (or find) the controller image")
    r = sub.add_parser("run", help="run a command in the controller container")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    try:
        info = build_image(lambda s: print(s, file=sys.stderr))
        if a.cmd == "image":
            print(json.dumps(info, indent=2))
            return 0
        argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
        p = run(argv, image=info["image"])
        sys.stdout.write(p.stdout)
        sys.stderr.write(p.stderr)
        return p.returncode
    except fleetlab.FleetError as e:
        print(f"controller: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
