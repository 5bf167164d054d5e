"""verify.yml and nss_provision over SSH with become on fleet workstations (issue 10, items 2, 3 and 5).

What is checked is read on the controller's saved result and inside the containers (Debian's own Python and
cryptography, certutil/modutil of Firefox's NSS), never through our bindings.
"""
import datetime
import json
import os

import pytest

from lab import fleet as fleetlab

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def _saved(report_dir, host):
    with open(os.path.join(report_dir, "%s.json" % host)) as f:
        return json.load(f)


def _age_seconds(stamp):
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()


def test_test_login_over_ssh_on_the_system_python_and_never_stale(fleet, tmp_path):
    """Item 2: the test login runs on the workstation's own Python (Debian 12: python3-cryptography 38, installed by
    the role when missing). Item 3: the saved result is dated, and a failing verify replaces an ok one."""
    host = fleet.hosts[0]  # an odd host: no python3-cffi in the image, the role's install path runs
    reports = str(tmp_path / "token")
    run = fleet.playbook("verify.yml", "-l", host, "-e", "token_verify_report_dir=" + reports)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    ok = _saved(reports, host)
    assert ok["ok"] is True and ok["error"] is None, ok
    assert ok["client_cert_requested"] is True and ok["client_cert_sent"] and ok["client_cert_accepted"] is True
    assert 0 <= _age_seconds(ok["checked_at"]) < 900
    where = fleet.sh(host, "/usr/bin/python3 -c 'import cryptography, sys; print(sys.executable, "
                           "cryptography.__version__, cryptography.__file__)'").stdout.split()
    assert where[0] == "/usr/bin/python3" and where[1].startswith("38.") and where[2].startswith("/usr/lib/python3/")

    bad = fleet.playbook("verify.yml", "-l", host, "-e", "token_verify_report_dir=" + reports,
                         "-e", "token_verify_url=https://127.0.0.1:1/")
    assert bad.returncode != 0
    failed = _saved(reports, host)
    assert failed["ok"] is False and failed["error"] and failed["checked_at"] >= ok["checked_at"], failed


def test_unloadable_token_library_does_not_cost_the_ca_set_over_ssh(fleet, tmp_path):
    """Item 5: a PKCS#11 library that exists on the workstation but cannot be loaded."""
    host = fleet.hosts[-1]  # an even host: python3-cffi in the image
    fleetlab.reset_host(fleet.m, host)  # fresh profiles, whatever other fleet tests provisioned there
    fleet.sh(host, "printf 'not a shared object' > /usr/local/lib/libbroken-pkcs11.so")
    certs = []
    for ca in fleet.m["pki"]["cas"]:
        with open(ca["path"]) as f:
            certs.append({"name": "Item5 " + ca["name"], "content": f.read(),
                          "trust": "C,," if ca["subject"] == ca["issuer"] else ",,"})
    args = {"users": ["alice", "bob"], "certificates": certs, "module_name": "broken",
            "module_library": "/usr/local/lib/libbroken-pkcs11.so"}
    _, res = fleet.module(host, "nss_provision", args)
    assert not res.get("failed"), res
    assert res["databases"] and all(not d["error"] for d in res["databases"]), res["databases"]
    assert sum("could not be registered" in w for w in res["warnings"]) == len(res["databases"]), res["warnings"]
    profiles = fleet.profiles(host)
    assert set(profiles) >= {"alice", "bob"}
    for user in ("alice", "bob"):
        for prof in profiles[user]:
            listed = fleet.certutil(host, prof)
            assert all(c["name"] in listed for c in certs), (prof, listed)
            assert "broken" not in fleet.modutil(host, prof)
            owners = fleet.sh(host, "stat -c %%U '%s'/cert9.db '%s'/key4.db" % (prof, prof))
            assert set(owners.stdout.split()) == {user}, owners.stdout


def test_server_accepting_any_certificate_is_refused_before_the_pin_over_ssh(fleet, tmp_path):
    """Issue 26: `openssl s_server -Verify 1` without -verify_return_error (it requires a client certificate and
    accepts any) on the controller's 127.0.0.1, verify.yml over SSH with a WRONG PIN: refused by the throwaway
    self-signed control before the PIN. The key's flags are read inside the workstation with OpenSC's pkcs11-tool,
    and the server's own log shows the throwaway certificate, not the holder's."""
    import socket
    import subprocess
    import time

    host = fleet.hosts[-1]
    server = fleet.m["pki"]["testpage_server"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "s_server.log"
    proc = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", server["path"],
                             "-key", server["key"], "-www", "-Verify", "1", "-no_ca_names"],
                            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        reports = str(tmp_path / "token")
        run = fleet.playbook("verify.yml", "-l", host, "-e", "token_verify_report_dir=" + reports,
                             "-e", "token_verify_url=https://127.0.0.1:%d/" % port, "-e", "token_verify_pin=00000000")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert run.returncode != 0, run.stdout[-3000:]
    saved = _saved(reports, host)
    assert saved["ok"] is False and saved["error"]["kind"] == "server_accepts_any_certificate", saved["error"]
    assert saved["pin_attempts"] == 0 and not saved.get("logged_in")
    assert "owner of the test page" in saved["error"]["todo"]
    text = log.read_text(errors="replace")
    assert "tokentrust negative control" in text and "JEAN DUPONT" not in text
    flags = fleet.sh(host, "pkcs11-tool --module %s -T" % fleet.m["token_module"]).stdout.lower()
    assert "token initialized" in flags and "count low" not in flags and "final try" not in flags, flags
