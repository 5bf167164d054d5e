"""Item 6 of issue 10: what the NSS modules need on the target (python3-apt first, then python3-cffi) is checked
and installed before ANY change; a host that cannot get it is left untouched, with a message saying what to do.
"""
import re

import pytest

from lab import fleet as fleetlab
from tests.fleet.conftest import recap

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def odd_host(fleet):
    """A host of the image without python3-cffi (and without python3-apt): fleet-ws-01."""
    h = fleet.m["hosts"][0]
    assert not h["python3_cffi"]
    return h["name"]


def untouched(fleet, host):
    out = fleet.sh(host, "ls /etc/firefox/policies/policies.json /usr/local/share/tokentrust 2>&1; "
                         "python3 -c 'import cffi' 2>&1 | tail -1", check=False).stdout
    assert "No such file" in out and out.count("No such file") == 2, out
    assert "No module named 'cffi'" in out, out
    for dirs in fleet.profiles(host).values():
        for p in dirs:
            assert not [n for n in fleet.certutil(host, p) if n.startswith("Lab ")], p


def test_nss_provision_says_what_is_missing_and_changes_nothing(fleet):
    """The module by itself, on the host's own Python without cffi: `fail` (the default) fails with what is
    missing; `report` (what role firefox_nss uses) returns it without failing; neither touches a profile."""
    host = odd_host(fleet)
    fleetlab.reset_host(fleet.m, host)
    args = {"certificates": [{"name": "Lab Root CA", "path": "/etc/ssl/certs/ca-certificates.crt"}]}
    rc, res = fleet.module(host, "nss_provision", args)
    assert rc != 0 and res["failed"], res
    assert "cffi for Python missing for /usr/bin/python3" in res["msg"] and "Nothing was changed" in res["msg"], res
    assert res["prerequisites"]["unmet"] == ["cffi"] and res["prerequisites"]["family"] == "Debian", res
    assert res["prerequisites"]["python_apt"] is False
    rc, res = fleet.module(host, "nss_provision", dict(args, prerequisites="report"))
    assert rc == 0 and not res.get("failed") and res["changed"] is False, res
    assert res["prerequisites"]["unmet"] == ["cffi"] and res["databases"] == [], res
    untouched(fleet, host)


def test_no_package_source_changes_nothing(fleet):
    host = odd_host(fleet)
    fleetlab.reset_host(fleet.m, host)
    fleet.sh(host, "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* && rm -rf /var/lib/apt/lists/*")
    run = fleet.playbook("site.yml", "-l", host)
    assert run.returncode != 0, run.stdout[-3000:]
    assert "Nothing was changed on this host" in run.stdout, run.stdout[-3000:]
    assert "python3-apt" in run.stdout and "python3-cffi" in run.stdout
    untouched(fleet, host)


def test_prerequisites_installed_first_then_converged(fleet):
    host = odd_host(fleet)
    fleetlab.reset_host(fleet.m, host)
    run = fleet.playbook("site.yml", "-l", host)
    assert run.returncode == 0, run.stdout[-4000:]
    out = run.stdout
    apt_at = out.index("Install python3-apt first")
    assert "changed: [%s]" % host in out[apt_at:out.index("TASK", apt_at + 10)]
    # the first call (prerequisites: report) changed nothing, the policies included; the call after the install
    # applied the profiles and the policies together (nss_provision's policies option)
    first = out.index("TASK [firefox_nss : Apply the CA set")
    assert "ok: [%s]" % host in out[first:out.index("TASK", first + 10)]
    installed = out.index("Install what the NSS modules need")
    assert first < apt_at < installed
    second = out.index("TASK [firefox_nss : Apply the CA set", installed)
    assert "changed: [%s]" % host in re.split(r"\n(?:TASK|PLAY|RUNNING) ", out[second + 10:])[0]
    assert "Deploy the CA files and merge our entries into policies.json" not in out  # no call of its own
    fleet.sh(host, "grep -q SecurityDevices /etc/firefox/policies/policies.json")
    fleet.sh(host, "python3 -c 'import apt, cffi'")
    again = fleet.playbook("site.yml", "-l", host)
    assert recap(again.stdout)[host]["changed"] == 0, again.stdout[-4000:]
    # satisfied: no install step and no separate check (ansible.cfg hides skipped tasks): firefox_nss's one
    # nss_provision call per host found them there, and firefox_policies, after it, did not look again
    assert "Install python3-apt first" not in again.stdout and "Install what the NSS modules need" not in again.stdout
    assert "Check what the NSS modules need on this host" not in again.stdout
    ran = [t for t in re.findall(r"^TASK \[firefox_nss : (.*?)\]", again.stdout, re.M)
           if not t.startswith("Validating")]
    assert ran == ["Apply the CA set and the token's module to every profile (one call, in-process NSS)"], ran


def test_packages_tag_installs_them_and_touches_no_profile(fleet):
    """`--tags firefox_nss:packages`: the prerequisites alone (the read-only look, then the install), no profile."""
    host = odd_host(fleet)
    fleetlab.reset_host(fleet.m, host)
    run = fleet.playbook("site.yml", "-l", host, "--tags", "firefox_nss:packages")
    assert run.returncode == 0, run.stdout[-4000:]
    assert "Check what the NSS modules need on this host" in run.stdout
    fleet.sh(host, "python3 -c 'import apt, cffi'")
    for dirs in fleet.profiles(host).values():
        for p in dirs:
            assert not [n for n in fleet.certutil(host, p) if n.startswith("Lab ")], p
    assert "No such file" in fleet.sh(host, "ls /etc/firefox/policies/policies.json 2>&1", check=False).stdout
