"""site.yml over SSH + become on the container fleet, from a copy of inventories/example (issue 10).

Each workstation is a Debian 12 container (lab/fleet.py) with its own sshd on 127.0.0.1, system Python only,
real users whose profiles Firefox made. What is checked is read inside the containers with certutil/modutil
of Firefox's own NSS, not through our bindings.
"""
import os
import shutil

import pytest
import yaml
from ansible.module_utils.tokentrust_trust import encoded_trust

from lab import fleet as fleetlab
from tests.fleet.conftest import recap
from tests.support.ansible_run import ROOT

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def expected_trust(fleet):
    """{CA name: trust as certutil prints it}: roots C,, (trusted for TLS servers), intermediates ,, ."""
    out = {}
    for ca in fleet.m["pki"]["cas"]:
        out[ca["name"]] = encoded_trust("C,," if ca["subject"] == ca["issuer"] else ",,")
    return out


@pytest.fixture(scope="module")
def converged(fleet):
    for h in fleet.hosts:  # fresh workstations, whatever other fleet tests did before
        fleetlab.reset_host(fleet.m, h)
    first = fleet.playbook("site.yml")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    second = fleet.playbook("site.yml")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    return recap(first.stdout), recap(second.stdout)


def test_a_copy_of_the_example_inventory_provisions_the_linux_hosts(fleet, converged):
    """Item 1: the hosts of group `linux` of a copy of inventories/example are provisioned (no -e needed)."""
    first, second = converged
    for h in fleet.hosts:
        assert first[h]["changed"] > 0, first
        assert first[h]["failed"] == 0
        assert second[h]["changed"] == 0, second
    # the copy differs from inventories/example only in its hosts file
    inv = fleet.inventory
    for root, _dirs, files in os.walk(os.path.join(ROOT, "inventories", "example")):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), os.path.join(ROOT, "inventories", "example"))
            if rel != "hosts.yml":
                with open(os.path.join(root, f)) as a, open(os.path.join(inv, rel)) as b:
                    assert a.read() == b.read(), rel


def test_profiles_read_by_firefox_nss_inside_the_containers(fleet, converged):
    want = expected_trust(fleet)
    for h in fleet.hosts:
        profiles = fleet.profiles(h)
        assert sorted(profiles) == ["alice", "bob"], profiles  # carol never started Firefox
        assert len(profiles["alice"]) >= 2 and all("/.mozilla/firefox/" in p for p in profiles["alice"])
        assert profiles["bob"] and all("/.config/mozilla/firefox/" in p for p in profiles["bob"])
        for user, dirs in profiles.items():
            for p in dirs:
                listed = fleet.certutil(h, p)
                assert {n: listed.get(n) for n in want} == want, (h, p, listed)
                assert fleet.modutil(h, p).get("gem") == fleet.m["token_module"]
                owners = fleet.sh(h, "stat -c %%U '%s'/cert9.db '%s'/pkcs11.txt" % (p, p)).stdout.split()
                assert owners == [user, user]
        assert fleet.sh(h, "test ! -e /home/carol/.mozilla && test ! -e /home/carol/.config/mozilla && echo none"
                        ).stdout.strip() == "none"
        pol = fleet.read_json(h, "/etc/firefox/policies/policies.json")["policies"]
        assert pol["SecurityDevices"]["Add"] == {"gem": fleet.m["token_module"]}


def test_second_run_unchanged_after_the_users_started_firefox(fleet, converged):
    """Item 4: real Firefox started as each user between runs; the next site.yml changes nothing."""
    want = expected_trust(fleet)
    for h in fleet.hosts:
        for user in ("alice", "bob"):
            fleet.firefox(h, user)
    after_firefox = {h: {p: fleet.certutil(h, p) for ps in fleet.profiles(h).values() for p in ps}
                     for h in fleet.hosts}
    run = fleet.playbook("site.yml", "--diff")
    assert run.returncode == 0, run.stdout[-4000:]
    rc = recap(run.stdout)
    assert all(rc[h]["changed"] == 0 for h in fleet.hosts), run.stdout[-6000:]
    for h, profiles in after_firefox.items():
        for p, listed in profiles.items():
            assert {n: listed.get(n) for n in want} == want, (h, p, listed)


def test_play_hosts_from_group_vars(fleet, converged, tmp_path):
    """Item 1: tokentrust_firefox_hosts set in group_vars (not -e) selects the hosts."""
    inv = tmp_path / "inv"
    shutil.copytree(fleet.inventory, inv)
    data = yaml.safe_load((inv / "hosts.yml").read_text())
    children = data["all"]["children"]
    children["postes"] = children.pop("linux")
    (inv / "hosts.yml").write_text(yaml.safe_dump(data))
    shutil.move(str(inv / "group_vars" / "linux"), str(inv / "group_vars" / "postes"))  # become etc.
    (inv / "group_vars" / "all" / "select.yml").write_text("---\ntokentrust_firefox_hosts: postes\n")
    run = fleet.playbook("firefox.yml", inventory=str(inv))
    assert run.returncode == 0, run.stdout[-4000:]
    rc = recap(run.stdout)
    for h in fleet.hosts:
        assert rc[h]["ok"] >= 3 and rc[h]["changed"] == 0, rc
    assert "nss_provision" in run.stdout or "Apply the CA set" in run.stdout


def test_no_host_selected_fails_loudly(tmp_path):
    """Item 1: an inventory whose groups match no stage stops with an error, not rc=0 "no hosts matched"."""
    import subprocess

    from tests.support.ansible_run import BIN, ansible_env

    (tmp_path / "hosts.yml").write_text("---\nall:\n  children:\n    desktops:\n      hosts:\n"
                                        "        pc-01:\n          ansible_connection: local\n")
    for pb in ("site.yml", "firefox.yml", "verify.yml"):
        p = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                            os.path.join("playbooks", pb)], cwd=ROOT, env=ansible_env(), capture_output=True,
                           text=True, timeout=300)
        assert p.returncode != 0, (pb, p.stdout[-3000:])
        assert "No host selected" in p.stdout and "desktops" in p.stdout, p.stdout[-3000:]


def test_report_green_after_the_users_started_firefox(fleet, converged):
    """Item 4: provisioning and the compliance rule agree with what Firefox leaves behind (the report was red:
    intermediates re-imported CT,C, by Firefox, or missing from Certificates.Install)."""
    import json

    for h in fleet.hosts:
        fleet.firefox(h, "alice")
    run = fleet.playbook("report.yml")
    assert run.returncode == 0, run.stdout[-4000:]
    rc = recap(run.stdout)
    assert all(rc[h]["changed"] == 0 for h in fleet.hosts)
    with open(os.path.join(fleet.m["dir"], "reports", "fleet.json")) as f:
        rep = json.load(f)
    assert sorted(h["name"] for h in rep["hosts"]) == sorted(fleet.hosts)
    for h in rep["hosts"]:
        assert h["status"] == "ok", h["reasons"]
        assert not [r for r in h["reasons"] if r["level"] in ("warning", "failed")], h["reasons"]
        assert h["counts"]["profiles_ok"] == h["counts"]["profiles"] >= 3


def remote_calls(fleet, stdout):
    """{host: how many commands Ansible ran on it over SSH} from -vvv output (one per module with pipelining)."""
    import re

    by_port = {str(h["port"]): h["name"] for h in fleet.m["hosts"]}
    out = {h: 0 for h in fleet.hosts}
    for port in re.findall(r"SSH: EXEC ssh .*?-o '?Port=(\d+)", stdout):
        if port in by_port:
            out[by_port[port]] += 1
    return out


def test_second_run_costs_few_remote_calls(fleet, converged):
    """Item 7 (and issue 21): a second site.yml makes two remote calls per host: pcsc_middleware (role
    token_middleware_linux, on by default since issue 18: its one call reads packages, polkit rule, pcscd and library
    and checks pcscd) and nss_provision, whose call also finds the prerequisites and applies the policies that role
    firefox_policies handed it (playbooks/firefox.yml); with the middleware off, ONE. No fact gathering, no package
    task, no separate check. The report reads a host's files in one call, not one per file."""
    run = fleet.playbook("site.yml", "-vvv")
    assert run.returncode == 0, run.stdout[-4000:]
    assert remote_calls(fleet, run.stdout) == {h: 2 for h in fleet.hosts}, run.stdout[-3000:]
    off = fleet.playbook("site.yml", "-vvv", "-e", "tokentrust_token_middleware_linux=false")
    assert off.returncode == 0, off.stdout[-4000:]
    assert remote_calls(fleet, off.stdout) == {h: 1 for h in fleet.hosts}, off.stdout[-3000:]
    assert "Gathering Facts" not in run.stdout
    rep = fleet.playbook("report.yml", "-vvv")
    assert rep.returncode == 0, rep.stdout[-4000:]
    calls = remote_calls(fleet, rep.stdout)
    assert all(1 <= n <= 4 for n in calls.values()), calls  # minimal facts, profiles, NSS read, files (one call)
