"""The controller of today: Debian 13 (trixie, Python 3.13) with the newest ansible-core from PyPI
(requirements-controller.txt), as a container built here from Debian's packages (lab/controller.py). From inside it,
the same runs as on this Debian 12 controller: the unit tests, the collection's `ansible-test sanity` in full, and
site.yml (twice: the second changes nothing) + verify.yml + report.yml over SSH against a fleet of its own
(lab/fleet.py), whose state is then read inside the workstations with certutil/modutil of Firefox's NSS."""
import json
import os
import re

import pytest

from lab import controller
from lab import fleet as fleetlab
from tests.fleet.conftest import FIREFOX_NSS, recap
from tests.support.ansible_run import ROOT
from tests.support.fleet_checks import assert_provisioned, small_fleet

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

with open(os.path.join(ROOT, "requirements-controller.txt"), encoding="utf-8") as _f:
    PINS = dict(re.findall(r"^([\w-]+)==(\S+)$", _f.read(), re.M))


@pytest.fixture(scope="module")
def image():
    why = fleetlab.docker_ready()
    if why:
        pytest.fail("the controller tests need Docker: " + why)
    return controller.build_image()["image"]


@pytest.fixture(scope="module")
def base_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("controller")


def in_controller(image, base_tmp, *cmd, env=None, timeout=1800):
    return controller.run(list(cmd), image=image, mounts=[str(base_tmp)], env=env, timeout=timeout)


def test_it_is_debian13_with_the_newest_ansible_core(image, base_tmp):
    p = in_controller(image, base_tmp, "sh", "-c", ". /etc/os-release; echo $VERSION_CODENAME; python3 -c "
                      "'import sys; print(\"%d.%d\" % sys.version_info[:2])'; ansible --version | head -1; "
                      "python -c 'import ansible_collections.ansible.windows as w; print(w.__path__[0])'")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    assert lines[0] == "trixie" and lines[1] == "3.13", p.stdout
    assert "core %s]" % PINS["ansible-core"] in lines[2], p.stdout  # `ansible [core 2.21.5]`
    assert lines[3].startswith("/opt/venv/"), p.stdout  # ansible.windows comes with the `ansible` package


def test_unit_tests_pass_on_the_debian13_controller(image, base_tmp):
    """All of tests/unit but test_role_meta.py, which checks the roles' metadata against the facts of the machine that
    runs `make test` (its Debian release, where the folder lab runs; requirements.txt's ansible-core): inside this
    container those facts are the container's, which runs no folder lab."""
    p = in_controller(image, base_tmp, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit",
                      "--ignore", "tests/unit/test_role_meta.py", timeout=1200)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert re.search(r"^\d+ passed", p.stdout.splitlines()[-1]), p.stdout[-500:]


def test_collection_sanity_in_full_on_the_debian13_controller(image, base_tmp):
    p = in_controller(image, base_tmp, "python", "scripts/sanity.py", "--out", str(base_tmp / "sanity"),
                      timeout=1800)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:]
    assert "Running sanity test \"pylint\"" in log and "Running sanity test \"import\" on Python 3.13" in log
    assert "Installing requirements" not in log  # the image holds ansible-test's environments: nothing downloaded
    ver = PINS["ansible-core"].rsplit(".", 1)[0]
    assert os.path.exists(os.path.join(ROOT, "collection", "tests", "sanity", f"ignore-{ver}.txt"))


@pytest.fixture(scope="module")
def fleet(base_tmp):
    with small_fleet(base_tmp) as f:
        yield f


def playbook(image, base_tmp, fleet, name, *args):
    p = in_controller(image, base_tmp, "ansible-playbook", "-i", fleet.inventory, os.path.join("playbooks", name),
                      "-e", "@" + fleet.lab_vars, *args,
                      env={"ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
                      timeout=900)
    assert p.returncode == 0, f"{name}: {p.stdout[-4000:]}{p.stderr[-2000:]}"
    return p


def test_site_verify_report_from_the_debian13_controller(image, base_tmp, fleet):
    first = recap(playbook(image, base_tmp, fleet, "site.yml").stdout)
    second = recap(playbook(image, base_tmp, fleet, "site.yml").stdout)
    for h in fleet.hosts:
        assert first[h]["changed"] > 0 and first[h]["failed"] == 0, first
        assert second[h]["changed"] == 0, second
    # the workstations' state, read inside them with Firefox's own NSS
    assert_provisioned(fleet)
    reports = base_tmp / "token"
    playbook(image, base_tmp, fleet, "verify.yml", "-e", "token_verify_report_dir=%s" % reports)
    for h in fleet.hosts:
        saved = json.loads((reports / f"{h}.json").read_text())
        assert saved["ok"] is True and saved["client_cert_accepted"] is True, saved
    dest = base_tmp / "report"
    playbook(image, base_tmp, fleet, "report.yml", "-e", "fleet_report_dest=%s" % dest,
             "-e", "token_verify_report_dir=%s" % reports)
    rep = json.loads((dest / "fleet.json").read_text())
    assert sorted(h["name"] for h in rep["hosts"]) == sorted(fleet.hosts)
    for h in rep["hosts"]:
        assert h["status"] == "ok", h["reasons"]
    assert FIREFOX_NSS  # certutil/modutil above ran with Firefox's NSS (tests.fleet.conftest)
