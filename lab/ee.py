"""The execution environment (EE): the image AWX / Automation Platform runs a job in, built here with ansible-builder
from execution-environment.yml, and jobs run with it the way AWX runs them (ansible-runner, process isolation).

    python -m lab.ee image [--no-cache]            # build (or find) the EE image (`make ee`); prints its tag and labels
    python -m lab.ee run PLAYBOOK -i INVENTORY_DIR [-e @VARS.yml] [--mount DIR]...
                                                   # one job: ansible-runner with the EE, as AWX runs it

No container registry is reachable here, so nothing is pulled: the base is the Debian 13 (trixie) rootfs that
lab/controller.py debootstraps from Debian's packages (shared with the Debian 13 controller image), the system
packages come from Debian (apt-get is ansible-builder's package manager), the Python packages from PyPI, and the two
collections from files made here:
  build/collection/tokentrust-workstation-<version>.tar.gz   scripts/build_collection.py
  build/ee/ansible-windows.tar.gz      ansible.windows out of the `ansible` wheel pinned in requirements-controller.txt
                                       (PyPI; Galaxy is not reachable), the collection as that release ships it
  build/ee/pip-ca.crt                  the host's CA bundle: pip in the build trusts what pip on the host trusts
The image is tagged tokentrust-ee/ee:<hash> (the definition, the base tag and the inputs' contents, not their
mtimes): built once, a changed input builds a new one. Docker here has no bridge network: builds run with
`docker build --network host` (ansible-builder --extra-build-cli-args), with the classic builder (no buildx here).

A job (run_job): a private data directory as AWX writes one (project/, inventory/, env/extravars, env/envvars), then
`ansible-runner run --process-isolation --process-isolation-executable docker --container-image <EE>`: ansible-runner
starts the EE container (host networking: the fleet's sshd listens on 127.0.0.1) and ansible-playbook runs inside it.
The playbook is the collection's, by FQCN (tokentrust.workstation.site): the collection ships its playbooks, and a
project that uses the collection (AWX: the collection from the EE or requirements.yml) runs those, not a copy of this
repository. project/ holds only the project's ansible.cfg (the collection's fleet-state callback enabled). Files the
inventory or the extra variables name by absolute path (SSH key, known_hosts, CA files, report folders) are mounted
at the same path (--mount), as AWX mounts credentials and paths it is told to expose.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from lab import controller
from lab import fleet as fleetlab

ROOT = Path(__file__).resolve().parent.parent
EE_FILE = ROOT / "execution-environment.yml"
CONTROLLER_REQUIREMENTS = ROOT / "requirements-controller.txt"
COLLECTION_OUT = ROOT / "build" / "collection"
INPUTS = ROOT / "build" / "ee"
CACHE = ROOT / ".cache" / "ee"
IMAGE_REPO = "tokentrust-ee"
RECIPE_VERSION = 1
LABEL = "tokentrust.ee"
FQCN = "tokentrust.workstation"
WINDOWS_TARBALL = "ansible-windows.tar.gz"
WINDOWS_MIN = (2, 8, 0)  # requirements.yml and galaxy.yml: ansible.windows >=2.8.0
EE_PYTHON = "3.13"  # Debian 13's
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
BIN = Path(sys.executable).parent
# The project's ansible.cfg in a job (what an AWX project using the collection would hold): no library/roles paths
# into this repository; the collection's callback keeps the controller-side fleet state that report.yml reads.
PROJECT_CFG = """[defaults]
callbacks_enabled = tokentrust.workstation.tokentrust_state
interpreter_python = auto_silent
retry_files_enabled = false
forks = 20

[ssh_connection]
pipelining = true
"""


class EEError(fleetlab.FleetError):
    """The execution environment could not be built or a job could not be started; the message says why."""


def definition() -> dict:
    with open(EE_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def controller_pins() -> dict:
    return dict(re.findall(r"^([\w-]+)==(\S+)$", CONTROLLER_REQUIREMENTS.read_text(), re.M))


def _pin(spec: str) -> str:
    return spec.split("==", 1)[1] if "==" in spec else ""


def check_definition(d: Optional[dict] = None) -> dict:
    """What execution-environment.yml must agree on with this repository: the base is the controller's trixie base,
    ansible-core the pin of requirements-controller.txt, the tokentrust tarball the version of galaxy.yml."""
    d = d or definition()
    problems = []
    base = d["images"]["base_image"]["name"]
    if base != controller.base_tag():
        problems.append(f"images.base_image.name is {base}, the Debian 13 base is {controller.base_tag()}")
    core = _pin(d["dependencies"]["ansible_core"]["package_pip"])
    want = controller_pins().get("ansible-core")
    if core != want:
        problems.append(f"ansible_core is {core or 'unpinned'}, requirements-controller.txt pins {want}")
    with open(ROOT / "collection" / "galaxy.yml", encoding="utf-8") as f:
        version = yaml.safe_load(f)["version"]
    names = [c["name"] for c in d["dependencies"]["galaxy"]["collections"] if c.get("type") == "file"]
    if f"collections/tokentrust-workstation-{version}.tar.gz" not in names:
        problems.append(f"no galaxy file entry collections/tokentrust-workstation-{version}.tar.gz (galaxy.yml's)")
    if f"collections/{WINDOWS_TARBALL}" not in names:
        problems.append(f"no galaxy file entry collections/{WINDOWS_TARBALL}")
    if problems:
        raise EEError("execution-environment.yml: " + "; ".join(problems))
    return {"base": base, "ansible_core": core, "collection_version": version,
            "ansible_runner": _pin(d["dependencies"]["ansible_runner"]["package_pip"])}


def _members_hash(tarball: Path) -> str:
    """A hash of a tarball's file names, modes and contents (not its mtimes: a rebuilt identical collection agrees)."""
    h = hashlib.sha256()
    with tarfile.open(tarball) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            h.update(f"{m.name}\0{m.type!r}\0{m.mode & 0o777}\0".encode())
            if m.isfile():
                h.update(t.extractfile(m).read())
    return h.hexdigest()


def build_collection(log: Callable[[str], None]) -> Path:
    log("ee: building the tokentrust.workstation collection (scripts/build_collection.py)")
    p = fleetlab._run([sys.executable, str(ROOT / "scripts" / "build_collection.py"), "--out", str(COLLECTION_OUT)],
                      "building the collection", timeout=600)
    m = re.search(r"^tarball:\s+(\S+)$", p.stdout, re.M)
    if not m:
        raise EEError(f"scripts/build_collection.py printed no tarball: {p.stdout[-500:]}")
    return Path(m.group(1))


def ansible_wheel(log: Callable[[str], None]) -> Path:
    """The `ansible` wheel pinned in requirements-controller.txt (PyPI, for Python 3.13), cached in .cache/ee."""
    version = controller_pins().get("ansible")
    if not version:
        raise EEError("requirements-controller.txt pins no `ansible` release (ansible.windows comes from it)")
    dest = CACHE / "wheels"
    found = sorted(dest.glob(f"ansible-{version}-py3-none-any.whl"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    log(f"ee: downloading ansible {version} from PyPI (its ansible.windows goes into the EE)")
    fleetlab._run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                   "--python-version", EE_PYTHON, "--only-binary=:all:", "-d", str(dest), f"ansible=={version}"],
                  f"pip download ansible=={version}", timeout=900)
    found = sorted(dest.glob(f"ansible-{version}-py3-none-any.whl"))
    if not found:
        raise EEError(f"pip download ansible=={version} left no wheel in {dest}")
    return found[0]


def windows_collection(log: Callable[[str], None]) -> tuple:
    """build/ee/ansible-windows.tar.gz: ansible.windows as the pinned `ansible` release ships it (its MANIFEST.json
    and FILES.json at the top, as a collection artifact has them); members sorted, mtimes 0. (path, version)."""
    wheel = ansible_wheel(log)
    prefix = "ansible_collections/ansible/windows/"
    INPUTS.mkdir(parents=True, exist_ok=True)
    out = INPUTS / WINDOWS_TARBALL
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/"))
        if prefix + "MANIFEST.json" not in names:
            raise EEError(f"{wheel.name} holds no ansible.windows collection")
        version = json.loads(z.read(prefix + "MANIFEST.json"))["collection_info"]["version"]
        if tuple(int(x) for x in re.findall(r"\d+", version)[:3]) < WINDOWS_MIN:
            raise EEError(f"{wheel.name} ships ansible.windows {version}, the roles need >= "
                          + ".".join(map(str, WINDOWS_MIN)))
        content = {n[len(prefix):]: z.read(n) for n in names}
    # The `ansible` package leaves out the collection's CI and test files that its FILES.json still lists, and
    # ansible-galaxy extracts every listed file: FILES.json is rewritten to what is there (every checksum it keeps is
    # checked against the content first), and MANIFEST.json to FILES.json's new checksum.
    files = json.loads(content["FILES.json"])
    present = {n for n in content if n not in ("FILES.json", "MANIFEST.json")}
    dirs = {"."} | {"/".join(n.split("/")[:i]) for n in present for i in range(1, n.count("/") + 1)}
    kept = []
    for e in files["files"]:
        if e["ftype"] == "file" and e["name"] in present:
            if hashlib.sha256(content[e["name"]]).hexdigest() != e["chksum_sha256"]:
                raise EEError(f"{wheel.name}: ansible.windows/{e['name']} differs from its FILES.json checksum")
            kept.append(e)
        elif e["ftype"] == "dir" and e["name"] in dirs:
            kept.append(e)
    unlisted = present - {e["name"] for e in kept}
    if unlisted:
        raise EEError(f"{wheel.name}: ansible.windows files not in its FILES.json: {sorted(unlisted)[:5]}")
    content["FILES.json"] = json.dumps(dict(files, files=kept), indent=4).encode()
    manifest = json.loads(content["MANIFEST.json"])
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(content["FILES.json"]).hexdigest()
    content["MANIFEST.json"] = json.dumps(manifest, indent=4).encode()
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as t:
            for n in sorted(dirs - {"."}):  # ansible-galaxy extracts FILES.json's directories as tar members
                info = tarfile.TarInfo(n)
                info.type, info.mtime, info.mode = tarfile.DIRTYPE, 0, 0o755
                t.addfile(info)
            for n in sorted(content):
                info = tarfile.TarInfo(n)
                info.size, info.mtime, info.mode = len(content[n]), 0, 0o644
                t.addfile(info, io.BytesIO(content[n]))
    os.replace(tmp, out)
    return out, version


def pip_ca() -> Path:
    """build/ee/pip-ca.crt: the host's CA bundle (what pip here trusts), else pip's own."""
    INPUTS.mkdir(parents=True, exist_ok=True)
    out = INPUTS / "pip-ca.crt"
    src = os.environ.get("PIP_CERT") or HOST_CA
    if not os.path.isfile(src):
        from pip._vendor import certifi  # pip's bundle, when this machine has no system bundle
        src = certifi.where()
    data = Path(src).read_bytes()
    if not out.exists() or out.read_bytes() != data:
        out.write_bytes(data)
    return out


def prepare(log: Callable[[str], None] = lambda s: None) -> dict:
    """Every input of the build, made; with the image tag they hash to."""
    info = check_definition()
    tarball = build_collection(log)
    if tarball.name != f"tokentrust-workstation-{info['collection_version']}.tar.gz":
        raise EEError(f"the collection built as {tarball.name}, execution-environment.yml names version "
                      f"{info['collection_version']}")
    windows, windows_version = windows_collection(log)
    ca = pip_ca()
    parts = {"v": RECIPE_VERSION, "definition": EE_FILE.read_text(), "base": info["base"],
             "collection": _members_hash(tarball), "windows": _members_hash(windows),
             "pip_ca": hashlib.sha256(ca.read_bytes()).hexdigest()}
    recipe = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    labels = {f"{LABEL}.recipe": recipe, f"{LABEL}.base": info["base"],
              f"{LABEL}.ansible-core": info["ansible_core"], f"{LABEL}.ansible-runner": info["ansible_runner"],
              f"{LABEL}.collection": f"{FQCN}:{info['collection_version']}",
              f"{LABEL}.ansible-windows": windows_version}
    return {"image": f"{IMAGE_REPO}/ee:{recipe}", "recipe": recipe, "labels": labels, "base": info["base"],
            "collection": str(tarball), "windows": str(windows)}


def labels_of(image: str) -> dict:
    p = fleetlab.docker("image", "inspect", "-f", "{{json .Config.Labels}}", image, what=f"inspecting {image}")
    return json.loads(p.stdout) or {}


def build_image(log: Callable[[str], None] = lambda s: None, no_cache: bool = False) -> dict:
    """The EE image, built when its tag is missing (or always, with no_cache: a cold build of the EE, the base
    kept): {image, base, labels, built, seconds, log}."""
    why = fleetlab.docker_ready()
    if why:
        raise EEError(why)
    t0 = time.monotonic()
    info = prepare(log)
    image, built = info["image"], []
    with fleetlab.build_lock(f"ee-{image}", log):
        if no_cache or not fleetlab.image_exists(image):
            built = _build(info, no_cache, log)
    return {"image": image, "base": info["base"], "labels": labels_of(image), "built": built,
            "seconds": round(time.monotonic() - t0, 1)}


def _build(info: dict, no_cache: bool, log: Callable[[str], None]) -> list:
    """build_image's work, under its lock: the tags it built."""
    image, built = info["image"], []
    if not fleetlab.image_exists(info["base"]):
        log("ee: the Debian 13 base (debootstrap trixie) first")
        controller.ensure_base(log)
        built.append(info["base"])
    builder = BIN / "ansible-builder"
    if not builder.exists():
        raise EEError(f"{builder} is missing: run scripts/setup.sh (requirements.txt pins ansible-builder)")
    INPUTS.mkdir(parents=True, exist_ok=True)
    # ansible-builder's context outside the repository (its generated YAML is not ours to lint)
    context = Path(tempfile.mkdtemp(prefix="tokentrust-ee-context-"))
    logfile = INPUTS / "build.log"
    extra = ["--network", "host"]
    for k, v in info["labels"].items():
        extra += ["--label", f"{k}={v}"]
    cmd = [str(builder), "build", "-f", str(EE_FILE), "-c", str(context), "-t", image,
           "--container-runtime", "docker", "-v", "3", "--extra-build-cli-args", " ".join(extra)]
    if no_cache:
        cmd.append("--no-cache")
    log(f"ee: ansible-builder build -t {image} (log: {logfile})")
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the classic builder: no buildx here
    try:
        with open(logfile, "w", encoding="utf-8") as out:
            p = subprocess.run(cmd, cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3600,
                               check=False)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    if p.returncode != 0 or not fleetlab.image_exists(image):
        tail = logfile.read_text(errors="replace")[-4000:]
        raise EEError(f"ansible-builder build exited {p.returncode} (full log {logfile}):\n{tail}")
    built.append(image)
    return built


def runner_bin() -> str:
    for cand in (BIN / "ansible-runner", shutil.which("ansible-runner")):
        if cand and os.access(str(cand), os.X_OK):
            return str(cand)
    raise EEError("ansible-runner is not installed: run scripts/setup.sh (requirements.txt pins it)")


def _yaml_vars(spec: str) -> dict:
    if spec.startswith("@"):
        with open(spec[1:], encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    else:
        data = yaml.safe_load(spec) if spec.lstrip().startswith("{") else dict(
            kv.split("=", 1) for kv in spec.split())
    if not isinstance(data, dict):
        raise EEError(f"extra variables {spec!r}: not a mapping")
    return data


def run_job(image: str, playbook: str, inventory: Path, *, extra_vars: Sequence = (), mounts: Sequence = (),
            pdd: Optional[Path] = None, cmdline: Sequence[str] = (), timeout: float = 1800) -> dict:
    """One job with the EE, as AWX runs it: a private data directory (project/ansible.cfg, inventory/ = a copy of
    `inventory`, env/extravars = the merged `extra_vars` ("@file.yml", "k=v ...", or dicts)), then ansible-runner
    with process isolation in Docker (host networking; `mounts`: host paths mounted at their own paths, or
    SRC:DEST[:ro]). Returns {rc, status, stdout, runner_stderr, pdd, artifacts, command}; not checked."""
    inventory = Path(inventory).resolve()
    pdd = Path(pdd or tempfile.mkdtemp(prefix="tokentrust-ee-job-")).resolve()
    (pdd / "project").mkdir(parents=True, exist_ok=True)
    (pdd / "project" / "ansible.cfg").write_text(PROJECT_CFG)
    if (pdd / "inventory").exists():
        shutil.rmtree(pdd / "inventory")
    if inventory.is_dir():
        shutil.copytree(inventory, pdd / "inventory")
    else:
        (pdd / "inventory").mkdir()
        shutil.copy(inventory, pdd / "inventory" / inventory.name)
    merged = {}
    for spec in extra_vars:
        merged.update(spec if isinstance(spec, dict) else _yaml_vars(spec))
    (pdd / "env").mkdir(exist_ok=True)
    (pdd / "env" / "extravars").write_text(yaml.safe_dump(merged))
    os.chmod(pdd / "env" / "extravars", 0o600)
    (pdd / "env" / "envvars").write_text(yaml.safe_dump({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}))
    name = playbook.rsplit("/", 1)[-1].removesuffix(".yml").removesuffix(".yaml")
    ident = f"{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}-{uuid.uuid4().hex[:8]}"
    cmd = [runner_bin(), "run", str(pdd), "-p", playbook, "--ident", ident,
           "--process-isolation", "--process-isolation-executable", "docker", "--container-image", image,
           "--container-option=--network=host"]
    for m in mounts:  # a host path (mounted at the same path), or docker's SRC:DEST[:OPTIONS]
        spec = str(m) if ":" in str(m) else "{0}:{0}".format(Path(m).resolve())
        cmd += ["--container-volume-mount", spec]
    if cmdline:
        cmd += ["--cmdline", " ".join(cmdline)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    art = pdd / "artifacts" / ident
    stdout = (art / "stdout").read_text(errors="replace") if (art / "stdout").exists() else p.stdout
    status = (art / "status").read_text().strip() if (art / "status").exists() else "unknown"
    return {"rc": p.returncode, "status": status, "stdout": stdout, "runner_stderr": p.stderr, "pdd": str(pdd),
            "artifacts": str(art), "command": cmd}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.ee", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("image", help="build (or find) the EE image")
    b.add_argument("--no-cache", action="store_true", help="rebuild the EE without Docker's layer cache")
    r = sub.add_parser("run", help="run a playbook in the EE with ansible-runner (process isolation)")
    r.add_argument("playbook", help="e.g. tokentrust.workstation.site")
    r.add_argument("-i", "--inventory", required=True, help="inventory directory or file (copied into the job)")
    r.add_argument("-e", "--extra-vars", action="append", default=[], help="@file.yml or k=v (repeatable)")
    r.add_argument("--mount", action="append", default=[], help="a host directory the job reads or writes "
                   "(mounted at the same path; repeatable)")
    r.add_argument("--pdd", help="private data directory (default: a new temporary one)")
    a = ap.parse_args(argv)
    try:
        info = build_image(lambda s: print(s, file=sys.stderr, flush=True),
                           no_cache=getattr(a, "no_cache", False))
        if a.cmd == "image":
            print(json.dumps(info, indent=2))
            return 0
        job = run_job(info["image"], a.playbook, Path(a.inventory), extra_vars=a.extra_vars, mounts=a.mount,
                      pdd=Path(a.pdd) if a.pdd else None)
        sys.stdout.write(job["stdout"])
        print(f"ee: job {job['status']} (rc {job['rc']}), private data directory {job['pdd']}", file=sys.stderr)
        return job["rc"]
    except fleetlab.FleetError as e:
        print(f"ee: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
