"""Workstations that are off (issue 21, item 1), on a fleet of its own: three Debian containers over SSH.

ws-01 is off before site.yml, ws-02 is switched off in the middle of it (container killed while the run is in the
Firefox policies stage), ws-03 stays on. What is asserted is read from the containers (certutil of Firefox's own
NSS), the controller-side state files and the report the playbooks wrote, never from our own summary line.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from lab import fleet as fleetlab
from tests.fleet.conftest import Fleet, recap
from tests.support.ansible_run import BIN, ROOT, ansible_env

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

WS1, WS2, WS3 = "fleet-ws-01", "fleet-ws-02", "fleet-ws-03"


@pytest.fixture(scope="module")
def fleet3(tmp_path_factory):
    why = fleetlab.docker_ready()
    if why:
        pytest.fail("the fleet tests need Docker: " + why)
    d = tmp_path_factory.mktemp("fleet-offline")
    run = d / "run"
    m = fleetlab.create(run, hosts=3, inventory=d / "inventory", cffi="all")
    try:
        yield Fleet(m)
    finally:
        fleetlab.destroy(run)


def state_dir(fleet):
    return os.path.join(fleet.m["dir"], "reports", "state")


def state(fleet):
    with open(os.path.join(state_dir(fleet), "state.json")) as f:
        return json.load(f)["hosts"]


def not_converged(fleet):
    with open(os.path.join(state_dir(fleet), "not_converged")) as f:
        return f.read().split()


def report(fleet):
    run = fleet.playbook("report.yml")
    with open(os.path.join(fleet.m["dir"], "reports", "fleet.json")) as f:
        return run, {h["name"]: h for h in json.load(f)["hosts"]}


def playbook_stopping(fleet, name, trigger, action, *args):
    """ansible-playbook NAME; when a line of its output contains `trigger`, action() runs (once)."""
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", fleet.inventory, os.path.join("playbooks", name),
           "-e", "@" + fleet.lab_vars, *args]
    p = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    out, fired = [], False
    for line in p.stdout:
        out.append(line)
        if not fired and trigger in line:
            fired = True
            action(p)
    p.wait(timeout=900)
    with open(os.path.join(fleet.m["dir"], "last-%s.log" % name), "w") as f:  # for a failing assertion's reader
        f.write("".join(out))
    return p.returncode, "".join(out), fired


def outline(out):
    """The TASK / PLAY / fatal lines and the recap of a run's output (for assertion messages)."""
    return "".join(ln for ln in out.splitlines(True) if ln.startswith(("TASK", "PLAY", "fatal", "fleet-ws")))[-4000:]


def has_ca(fleet, host):
    profiles = fleet.profiles(host)
    names = [ca["name"] for ca in fleet.m["pki"]["cas"]]
    return all(all(n in fleet.certutil(host, p) for n in names) for ps in profiles.values() for p in ps)


def test_hosts_off_before_and_during_the_runs(fleet3):
    f = fleet3
    fleetlab.stop_host(f.m, WS1)
    t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    # site.yml: ws-01 off from the start, ws-02 switched off while one of its remote calls is running. To be sure the
    # call is still running when the workstation goes off (a race otherwise: a converged call takes under a second),
    # the middleware's own lock is held on ws-02, so that its pcsc_middleware call waits there (up to 300 s).
    f.sh(WS2, "mkdir -p -m 0700 /run/tokentrust && setsid -f flock /run/tokentrust/pcsc-middleware.lock sleep 900"
              " >/dev/null 2>&1 </dev/null")
    rc, out, fired = playbook_stopping(f, "site.yml", "TASK [token_middleware_linux : The smart-card stack",
                                       lambda p: (time.sleep(2), fleetlab.stop_host(f.m, WS2)))
    assert fired, outline(out)
    rec = recap(out)
    assert rc != 0, outline(out)  # some hosts were unreachable: the run says so
    assert rec[WS3]["failed"] == 0 and rec[WS3]["unreachable"] == 0 and rec[WS3]["changed"] > 0, outline(out)
    assert rec[WS1]["unreachable"] == 1, outline(out)
    # switched off while its module ran: Ansible says unreachable (connection dropped) or failed (process killed)
    assert rec[WS2]["unreachable"] + rec[WS2]["failed"] == 1, outline(out)
    assert has_ca(f, WS3)
    s = state(f)
    assert s[WS3]["last_converged"] >= t0 and s[WS3]["last_result"] == "converged"
    assert "last_converged" not in s[WS1] and "last_seen" not in s[WS1]  # never reached
    assert s[WS1]["last_result"] == "unreachable" and "Connection refused" in s[WS1]["unreachable_msg"]
    # off during its only call: never converged; seen in this run only if Ansible got an answer (a failure) back
    assert "last_converged" not in s[WS2] and (s[WS2].get("last_seen") or t0) >= t0
    assert s[WS2]["last_result"] in ("unreachable", "failed")
    assert not_converged(f) == [WS1, WS2]

    # verify.yml with both still off: the test login runs on ws-03
    ver = f.playbook("verify.yml", "-e", "token_verify_report_dir=" + os.path.join(f.m["dir"], "reports", "token"))
    rv = recap(ver.stdout)
    assert rv[WS3]["failed"] == 0 and rv[WS3]["unreachable"] == 0, ver.stdout[-3000:]
    assert rv[WS1]["unreachable"] == 1 and rv[WS2]["unreachable"] == 1, rv
    with open(os.path.join(f.m["dir"], "reports", "token", WS3 + ".json")) as fh:
        assert json.load(fh)["ok"] is True

    # report.yml: the two that are off are unreachable (amber), with when they were last seen / converged
    run, hosts = report(f)
    assert hosts[WS3]["status"] == "ok", hosts[WS3]["reasons"]
    for h in (WS1, WS2):
        assert hosts[h]["status"] == "unreachable" and hosts[h]["reached"] is False, hosts[h]
        assert hosts[h]["state"]["converged_at"] is None
    assert hosts[WS1]["state"]["last_seen"] is None and "last seen never" in hosts[WS1]["reasons"][0]["text"]
    assert hosts[WS1]["reasons"][0]["level"] == "unreachable"  # first, before what older results said
    assert hosts[WS2]["state"]["last_seen"] == s[WS2].get("last_seen")
    assert "last seen %s" % (s[WS2].get("last_seen") or "never") in hosts[WS2]["reasons"][0]["text"]
    said = " ".join(run.stdout.split())
    assert "2 unreachable" in said and "Not converged: %s, %s" % (WS1, WS2) in said, run.stdout[-2000:]
    with open(os.path.join(f.m["dir"], "reports", "fleet.html")) as fh:
        page = fh.read()
    for h in (WS1, WS2):
        row = page[page.index('data-host="%s"' % h):]
        assert 'data-status="unreachable"' in row[:row.index("</tr>")]

    # back on: the documented one-liner re-runs only the hosts not converged, and converges them
    for h in (WS1, WS2):
        fleetlab.resume_host(f.m, h)
    again = f.playbook("site.yml", "--limit", "@" + os.path.join(state_dir(f), "not_converged"))
    assert again.returncode == 0, again.stdout[-4000:]
    ra = recap(again.stdout)
    assert sorted(ra) == [WS1, WS2], ra  # ws-03 is not touched
    assert all(ra[h]["changed"] > 0 and ra[h]["failed"] == 0 for h in (WS1, WS2)), ra
    assert has_ca(f, WS1) and has_ca(f, WS2)
    assert not_converged(f) == []
    s2 = state(f)
    assert s2[WS1]["last_converged"] >= s[WS3]["last_converged"]
    assert (s2[WS3]["last_attempt"], s2[WS3]["last_converged"]) == (s[WS3]["last_attempt"], s[WS3]["last_converged"])

    # ws-03, green in the last report, is switched off during report.yml: unreachable, never its old green
    rc, out, fired = playbook_stopping(f, "report.yml", "TASK [fleet_report", lambda p: fleetlab.stop_host(f.m, WS3))
    assert fired
    with open(os.path.join(f.m["dir"], "reports", "fleet.json")) as fh:
        hosts = {h["name"]: h for h in json.load(fh)["hosts"]}
    assert hosts[WS3]["status"] == "unreachable", hosts[WS3]
    assert hosts[WS3]["state"]["converged_at"] == s[WS3]["last_converged"]
    for h in (WS1, WS2):  # back and converged; their test login is still the one verify.yml could not complete
        assert hosts[h]["reached"] and hosts[h]["counts"]["profiles_ok"] == hosts[h]["counts"]["profiles"] >= 3
        assert [r["part"] for r in hosts[h]["reasons"] if r["level"] != "info"] == ["token"], hosts[h]["reasons"]
    fleetlab.resume_host(f.m, WS3)


def test_a_killed_run_loses_no_state(fleet3):
    """site.yml killed (SIGKILL, the whole process group) in the middle: state.json is whole, the hosts of the
    killed run are in not_converged, and what earlier runs recorded is still there."""
    f = fleet3
    for h in (WS1, WS2, WS3):
        fleetlab.resume_host(f.m, h)
    before = state(f)

    def kill(p):
        os.killpg(p.pid, signal.SIGKILL)

    rc, out, fired = playbook_stopping(f, "site.yml", "TASK [firefox_nss", kill)
    assert fired and rc == -signal.SIGKILL, out[-2000:]
    after = state(f)  # parses: never a partial file
    assert sorted(os.listdir(state_dir(f))) == [".lock", "not_converged", "state.json"]
    for h in (WS1, WS2, WS3):
        assert after[h]["last_attempt"] > before[h]["last_converged"]
        assert after[h]["last_converged"] == before[h]["last_converged"]
    assert not_converged(f) == [WS1, WS2, WS3]
