"""Two runs at once over SSH, on real workstations: nothing lost, both right about what they did.

Two ansible-playbook processes start together against the same fresh containers, each with HALF of the CA set
(so that an update lost to the other run shows as a missing certificate), then two whole site.yml runs at once.
Both must succeed (our per-profile lock serialises the NSS work, policies.json and the CA files are replaced
atomically), every profile ends with the whole CA set and the token's module, read inside the containers with
certutil/modutil of Firefox's own NSS, policies.json is one valid document with our entries, and a run after
them changes nothing.
"""
import json
import os
import subprocess

import pytest
import yaml

from lab import fleet as fleetlab
from tests.fleet.conftest import recap
from tests.support.ansible_run import BIN, ROOT, ansible_env

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def at_once(fleet, runs):
    """Start every (playbook, extra args) together; their CompletedProcess-like (rc, stdout) when all ended."""
    procs = []
    for name, args in runs:
        cmd = [os.path.join(BIN, "ansible-playbook"), "-i", fleet.inventory, os.path.join("playbooks", name),
               "-e", "@" + fleet.lab_vars, *args]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        outs.append((p.returncode, out))
    return outs


def whole_state(fleet, names):
    """Every profile of every host holds every CA of `names` and module gem with the lab token's library."""
    for h in fleet.hosts:
        profiles = fleet.profiles(h)
        assert sum(len(v) for v in profiles.values()) >= 3, profiles
        for dirs in profiles.values():
            for p in dirs:
                got = fleet.certutil(h, p)
                assert set(names) <= set(got), (h, p, sorted(got))
                mods = fleet.modutil(h, p)
                assert mods.get("gem") == fleet.m["token_module"], (h, p, mods)


def test_two_runs_at_once_lose_nothing(fleet):
    for h in fleet.hosts:
        fleetlab.reset_host(fleet.m, h)
    with open(fleet.lab_vars) as f:
        listed = yaml.safe_load(f)["ca_certificates_list"]
    assert len(listed) >= 4, listed
    half = len(listed) // 2
    a, b = listed[:half], listed[half:]
    # the profiles' part only (site.yml --tags firefox_nss, as docs/ca-certificates.md shows it: the CA set is
    # still proven first), each run with its own half of the CA set
    outs = at_once(fleet, [("site.yml", ["--tags", "firefox_nss", "-e", json.dumps({"ca_certificates_list": a})]),
                           ("site.yml", ["--tags", "firefox_nss", "-e", json.dumps({"ca_certificates_list": b})])])
    for rc, out in outs:
        assert rc == 0, out[-4000:]
        assert all(r["changed"] > 0 for r in recap(out).values() if r["ok"] > 2), out[-3000:]
    whole_state(fleet, [c["name"] for c in listed])
    # then two whole site.yml runs at once (same inputs): both succeed, nothing half written
    outs = at_once(fleet, [("site.yml", []), ("site.yml", [])])
    for rc, out in outs:
        assert rc == 0, out[-4000:]
        assert all(r["failed"] == 0 for r in recap(out).values()), out[-3000:]
    whole_state(fleet, [c["name"] for c in listed])
    for h in fleet.hosts:
        pol = fleet.read_json(h, "/etc/firefox/policies/policies.json")["policies"]
        assert pol["Certificates"]["Install"], pol
        assert pol["SecurityDevices"]["Add"]["gem"] == fleet.m["token_module"], pol
    after = fleet.playbook("site.yml")
    assert after.returncode == 0, after.stdout[-4000:]
    assert all(r["changed"] == 0 for r in recap(after.stdout).values()), after.stdout[-4000:]
