"""The execution environment (lab/ee.py, execution-environment.yml), built and used as AWX uses it: ansible-builder
builds the image from the Debian 13 base debootstrapped here (no registry), and the collection's site.yml and
report.yml run from inside it (ansible-runner, process isolation in Docker) against a fleet of two workstations
(lab/fleet.py), whose state is then read inside them with Firefox's NSS."""
import json
import os
import re
import shutil
import subprocess

import pytest

from lab import controller, ee
from lab import fleet as fleetlab
from tests.fleet.conftest import recap
from tests.support.fleet_checks import assert_provisioned, small_fleet

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

PINS = ee.controller_pins()
SITE, REPORT = f"{ee.FQCN}.site", f"{ee.FQCN}.report"
EE_COLLECTION = "/usr/share/ansible/collections/ansible_collections/tokentrust/workstation"


def test_the_definition_agrees_with_the_repository_and_says_what_differs():
    info = ee.check_definition()
    assert info["base"] == controller.base_tag() and info["ansible_core"] == PINS["ansible-core"]
    d = ee.definition()
    d["images"]["base_image"]["name"] = "docker.io/library/debian:latest"
    d["dependencies"]["ansible_core"]["package_pip"] = "ansible-core"
    with pytest.raises(ee.EEError) as e:
        ee.check_definition(d)
    assert f"the Debian 13 base is {controller.base_tag()}" in str(e.value)
    assert f"ansible_core is unpinned, requirements-controller.txt pins {PINS['ansible-core']}" in str(e.value)


def test_ansible_windows_from_the_pinned_ansible_release_installs_offline(tmp_path):
    """The file the EE's galaxy stage installs: ansible-galaxy --offline takes it (with the collection, which depends
    on it) and `collection verify --offline` finds its files and its FILES.json/MANIFEST.json consistent."""
    path, version = ee.windows_collection(lambda s: None)
    tarball = ee.build_collection(lambda s: None)
    req = tmp_path / "requirements.yml"
    req.write_text(f"collections:\n  - {{name: {path}, type: file}}\n  - {{name: {tarball}, type: file}}\n")
    env = dict(os.environ, ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1", ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "c"))
    bindir = str(ee.BIN)
    p = subprocess.run([os.path.join(bindir, "ansible-galaxy"), "collection", "install", "--offline", "-r", str(req),
                        "-p", str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert p.returncode == 0 and f"ansible.windows:{version} was installed successfully" in p.stdout, p.stderr
    p = subprocess.run([os.path.join(bindir, "ansible-galaxy"), "collection", "verify", "--offline", "ansible.windows",
                        "-p", str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert p.returncode == 0 and "internally consistent" in p.stdout, p.stdout + p.stderr
    assert (tmp_path / "c" / "ansible_collections" / "ansible" / "windows" / "plugins" / "modules"
            / "win_certificate_store.ps1").is_file()


@pytest.fixture(scope="module")
def image():
    why = fleetlab.docker_ready()
    if why:
        pytest.fail("the EE tests need Docker: " + why)
    return ee.build_image()


def in_ee(image, script):
    return subprocess.run(["docker", "run", "--rm", "--network", "host", image["image"], "bash", "-c", script],
                          capture_output=True, text=True, timeout=600, check=False)


def test_the_image_is_pinned_and_built_on_the_debian13_base(image):
    tag, labels = image["image"], image["labels"]
    assert re.fullmatch(r"tokentrust-ee/ee:[0-9a-f]{16}", tag), tag
    assert labels["tokentrust.ee.recipe"] == tag.rsplit(":", 1)[1] == ee.prepare()["recipe"]  # inputs unchanged
    assert labels["ansible-execution-environment"] == "true"  # ansible-builder's own label
    assert labels["tokentrust.ee.base"] == controller.base_tag() == ee.definition()["images"]["base_image"]["name"]
    assert labels["tokentrust.ee.ansible-core"] == PINS["ansible-core"]
    # the EE's layers start with the base's: it was built FROM the trixie rootfs debootstrapped here, nothing pulled
    layers = {}
    for name in (tag, controller.base_tag()):
        p = fleetlab.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", name, what="layers")
        layers[name] = json.loads(p.stdout)
    base = layers[controller.base_tag()]
    assert layers[tag][:len(base)] == base and len(layers[tag]) > len(base)


def test_inside_debian13_the_newest_ansible_core_and_the_collections(image):
    p = in_ee(image, ". /etc/os-release; echo $VERSION_CODENAME; python3 -c 'import sys; print(\"%d.%d\" % "
                     "sys.version_info[:2])'; ansible --version | head -1; ansible-runner --version; "
                     "ansible-galaxy collection list --format json")
    assert p.returncode == 0, p.stdout + p.stderr
    codename, python, core, runner, listing = p.stdout.split("\n", 4)
    assert (codename, python) == ("trixie", "3.13"), p.stdout[:300]
    assert f"core {PINS['ansible-core']}]" in core, core
    assert runner.strip() == image["labels"]["tokentrust.ee.ansible-runner"]
    colls = json.loads(listing[listing.index("{"):])["/usr/share/ansible/collections/ansible_collections"]
    assert colls["tokentrust.workstation"]["version"] == ee.check_definition()["collection_version"]
    assert colls["ansible.windows"]["version"] == image["labels"]["tokentrust.ee.ansible-windows"]
    # the controller-side Python packages the roles use (ca_certificates: cryptography; WinRM: pywinrm + kerberos)
    p = in_ee(image, "python3 -c 'import cryptography, winrm.transport as t; print(cryptography.__version__, "
                     "t.HAVE_KERBEROS, t.HAVE_CREDSSP)'; command -v ssh kinit")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[0] == f"{PINS['cryptography']} True True", p.stdout
    assert [os.path.basename(x) for x in p.stdout.split()[3:]] == ["ssh", "kinit"], p.stdout


@pytest.fixture(scope="module")
def base_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("ee")


@pytest.fixture(scope="module")
def fleet(base_tmp):
    with small_fleet(base_tmp) as f:
        yield f


def job(image, fleet, base_tmp, playbook, *extra, mounts=()):
    """One AWX-style job: the collection's playbook by FQCN, the fleet's inventory and lab variables; the test's
    folder (the fleet's SSH key, known_hosts, CA files, reports) mounted at its own path."""
    assert fleet.m["dir"].startswith(str(base_tmp) + os.sep)
    return ee.run_job(image["image"], playbook, fleet.inventory, extra_vars=["@" + fleet.lab_vars, *extra],
                      mounts=[str(base_tmp), *mounts], pdd=base_tmp / "job", timeout=1200)


def _ok(j):
    assert j["rc"] == 0 and j["status"] == "successful", j["stdout"][-5000:] + j["runner_stderr"][-2000:]
    return recap(j["stdout"])


@pytest.fixture(scope="module")
def converged(image, fleet, base_tmp):
    return [job(image, fleet, base_tmp, SITE) for _ in range(2)]


def test_site_from_inside_the_ee_converges_the_fleet(image, fleet, converged):
    first, second = (_ok(j) for j in converged)
    for h in fleet.hosts:
        assert first[h]["changed"] > 0 and first[h]["failed"] == 0 and first[h]["unreachable"] == 0, first
        assert second[h]["changed"] == 0 and second[h]["failed"] == 0, second
    # ansible-runner ran ansible-playbook inside the EE container, in the job's project folder
    with open(os.path.join(converged[0]["artifacts"], "command"), encoding="utf-8") as f:
        command = json.load(f)["command"]
    assert command[:2] == ["docker", "run"] and image["image"] in command, command
    assert command[command.index(image["image"]) + 1:][:2] == ["ansible-playbook", "-i"], command
    assert "--network=host" in command and SITE in command
    # the workstations' state, read inside them with Firefox's own NSS
    assert_provisioned(fleet)


def test_report_from_inside_the_ee_finds_every_host_green(image, fleet, base_tmp, converged):
    dest = base_tmp / "report"
    _ok(job(image, fleet, base_tmp, REPORT, {"fleet_report_dest": str(dest)}))
    rep = json.loads((dest / "fleet.json").read_text())
    assert sorted(h["name"] for h in rep["hosts"]) == sorted(fleet.hosts)
    for h in rep["hosts"]:
        assert h["status"] == "ok", h["reasons"]
    assert (dest / "fleet.html").is_file()


def test_the_job_runs_the_ee_collection_a_broken_one_fails(image, fleet, base_tmp, converged, tmp_path):
    """The same site.yml job with a copy of the EE's own collection mounted over it, one module of it broken: the job
    fails on every host at that module. What runs is the collection in the EE, not this repository's files."""
    copy = tmp_path / "workstation"
    p = subprocess.run(["docker", "create", image["image"]], capture_output=True, text=True, check=True)
    cid = p.stdout.strip()
    try:
        subprocess.run(["docker", "cp", f"{cid}:{EE_COLLECTION}", str(copy)], capture_output=True, check=True)
    finally:
        subprocess.run(["docker", "rm", cid], capture_output=True, check=False)
    mod = copy / "plugins" / "modules" / "nss_provision.py"
    text = mod.read_text()
    assert "def main():" in text
    mod.write_text(text.replace("def main():", "def main():\n    raise SystemExit('tokentrust-ee-mutation')", 1))
    j = job(image, fleet, base_tmp, SITE, mounts=[f"{copy}:{EE_COLLECTION}:ro"])
    assert j["rc"] != 0 and j["status"] == "failed", j["stdout"][-3000:]
    assert "tokentrust-ee-mutation" in j["stdout"], j["stdout"][-3000:]
    failed = recap(j["stdout"])
    assert all(failed[h]["failed"] > 0 for h in fleet.hosts), failed
    shutil.rmtree(copy)
