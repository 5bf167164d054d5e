"""playbooks/verify.yml (ca_certificates + token_verify) and playbooks/token_pin.yml against the lab, for real:
lab token, lab test page on 127.0.0.1, the PIN in an ansible-vault encrypted variable, the CA set pinned from lab
files (no network). Run: .venv/bin/pytest tests/integration/test_token_playbooks.py
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.support.token_lab import BIN, PIN, PUK, PYTHON, ROOT, ansible_env, flags_of, write_pems

pytestmark = pytest.mark.skipif(shutil.which("softhsm2-util") is None, reason="softhsm2 not installed")
NEW = "73920581"
REPORT_TASK = "Token verify | Publish the report as tokentrust_token_report"


@pytest.fixture()
def lab(tmp_path):
    from lab.pki import certeurope_standin
    from lab.testpage import TestPage, make_server_identity
    from lab.token import create_token

    pki = certeurope_standin()
    tok = create_token(tmp_path / "token", pin=PIN, puk=PUK, pki=pki)
    ident = make_server_identity(tmp_path / "srv")
    cas = write_pems(tmp_path / "cas", pki.values())
    with TestPage(ident["cert"], ident["key"], cas, log_path=tmp_path / "page.jsonl") as page:
        yield {"tmp": tmp_path, "tok": tok, "pki": pki, "ident": ident, "cas": cas, "page": page}


def vault(tmp, name, value):
    """`ansible-vault encrypt_string` output for one variable (a real vault, as users keep the PIN)."""
    pw = tmp / "vault-pass"
    pw.write_text("lab vault password\n")
    out = subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(pw), value,
                          "--name", name], capture_output=True, text=True, check=True, env=ansible_env()).stdout
    return out, pw


def inventory(lab, pin):
    tmp = lab["tmp"]
    names = list(lab["pki"])
    ca_list = [{"name": n, "path": str(p), "sha256": lab["pki"][n].sha256} for n, p in zip(names, lab["cas"])]
    inv = {"all": {"children": {"workstations": {"hosts": {"lab-ws": {
        "ansible_connection": "local", "ansible_python_interpreter": PYTHON}}}},
        "vars": {"tokentrust_ca_list": ca_list, "ca_certificates_dest": str(tmp / "ca-cache"),
                 "token_verify_module": str(lab["tok"].module), "token_verify_url": lab["page"].url,
                 "token_verify_server_ca": [str(lab["ident"]["ca"])]}}}
    (tmp / "inv").mkdir(exist_ok=True)
    (tmp / "inv" / "hosts.yml").write_text(yaml.safe_dump(inv))
    gv = tmp / "inv" / "group_vars"
    gv.mkdir(exist_ok=True)
    text, pw = vault(tmp, "token_verify_pin", pin)
    (gv / "workstations.yml").write_text("---\n" + text)
    return tmp / "inv", pw


def playbook(args, json_out=True):
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "json"} if json_out else None)
    return subprocess.run([str(BIN / "ansible-playbook"), *args], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=300)


def task_results(proc):
    data = json.loads(proc.stdout[proc.stdout.index("{"):])
    out = {}
    for play in data["plays"]:
        for t in play["tasks"]:
            out[t["task"]["name"].split(" : ", 1)[-1]] = t["hosts"].get("lab-ws", {})  # without "role : "
    return out, data["stats"]


def test_verify_playbook_reports_a_successful_login(lab):
    inv, pw = inventory(lab, PIN)
    proc = playbook(["-i", str(inv), "playbooks/verify.yml", "--vault-password-file", str(pw)])
    res, stats = task_results(proc)
    assert stats["lab-ws"]["failures"] == 0, proc.stdout[-3000:]
    rep = res[REPORT_TASK]["ansible_facts"]["tokentrust_token_report"]
    assert rep["ok"] is True and rep["error"] is None and rep["problems"] == []
    assert rep["holder"] == "JEAN DUPONT" and rep["days_left"] > 1000 and rep["not_after"].endswith("Z")
    assert rep["http_status"] == 200 and rep["page_shows_holder"] is True and rep["page_expiry"]
    assert rep["token"]["label"] == "CERTEUROPE LAB" and rep["token"]["user_pin"] == "ok"
    assert len(rep["certificates"]) == 2 and all(c["in_ca_set"] and c["usable"] for c in rep["certificates"])
    assert set(rep["certificates"][0]) == {"holder", "issuer", "serial", "not_after", "days_left", "expired",
                                           "in_ca_set", "usable", "sha256", "problem"}
    msg = res["Token verify | Say what the test login found"]["msg"]
    assert msg.startswith("Test login OK: JEAN DUPONT, certificate valid until ")
    assert PIN not in proc.stdout + proc.stderr
    # the pre-flight without the key (refused: no certificate), the throwaway self-signed certificate (refused in the
    # handshake: no status), then the login with the key
    assert [e.get("status") for e in lab["page"].entries()] == ["no-certificate", None, "valid"]
    assert lab["tok"].counters() == (0, 0) and flags_of(lab["tok"]) == []
    # verbose text output: still no PIN
    proc = playbook(["-i", str(inv), "playbooks/verify.yml", "--vault-password-file", str(pw), "-vvv"], False)
    assert proc.returncode == 0 and "Test login OK: JEAN DUPONT" in proc.stdout
    assert PIN not in proc.stdout + proc.stderr


def test_verify_playbook_wrong_pin_fails_after_publishing_the_report(lab):
    inv, pw = inventory(lab, "31415926")
    proc = playbook(["-i", str(inv), "playbooks/verify.yml", "--vault-password-file", str(pw)])
    res, stats = task_results(proc)
    assert stats["lab-ws"]["failures"] == 1
    rep = res[REPORT_TASK]["ansible_facts"]["tokentrust_token_report"]
    assert rep["ok"] is False and rep["error"]["kind"] == "wrong_pin" and rep["pin_attempts"] == 1
    failed = res["Token verify | Check that the test login passed"]
    assert failed["failed"] is True and "wrong PIN for token 'CERTEUROPE LAB'" in failed["msg"]
    assert "31415926" not in proc.stdout + proc.stderr
    assert lab["tok"].counters() == (1, 0) and flags_of(lab["tok"]) == ["user_pin_count_low"]
    # the pre-flight, the throwaway certificate, then the login's own connection: the wrong PIN was refused inside
    # its handshake, so no certificate of the key reached the page
    assert [e.get("status") for e in lab["page"].entries()] == ["no-certificate", None, "no-certificate"]


def test_token_pin_playbook_batch_change_then_unblock(lab):
    tmp = lab["tmp"]
    inv, pw = inventory(lab, PIN)
    common = ["-i", str(inv), "playbooks/token_pin.yml", "-e", "token_pin_hosts=workstations", "-e",
              "token_pin_module=%s" % lab["tok"].module, "--vault-password-file", str(pw)]
    pins = tmp / "pins.yml"
    pins.write_text(yaml.safe_dump({"token_pin_current": PIN, "token_pin_puk": "", "token_pin_new": NEW}))
    subprocess.run([str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(pw), str(pins)],
                   check=True, capture_output=True, env=ansible_env())
    assert PIN not in pins.read_text()
    proc = playbook(common + ["-e", "@%s" % pins])
    res, stats = task_results(proc)
    assert stats["lab-ws"]["failures"] == 0, proc.stdout[-3000:]
    assert res["Token PIN | Change or unblock"]["changed"] is True
    assert "PIN changed on token 'CERTEUROPE LAB'" in res["Token PIN | Say what was done"]["msg"]
    assert PIN not in proc.stdout and NEW not in proc.stdout
    assert lab["tok"].counters() == (0, 0)

    # lock the PIN, then unblock with the PUK (the action follows from what is given: PUK, no current PIN)
    from tests.support.token_lab import wrong_pins

    wrong_pins(lab["tok"], 3)
    assert "user_pin_locked" in flags_of(lab["tok"])
    pins.unlink()
    pins.write_text(yaml.safe_dump({"token_pin_current": "", "token_pin_puk": PUK, "token_pin_new": "86420975"}))
    proc = playbook(common + ["-e", "@%s" % pins])
    res, stats = task_results(proc)
    assert stats["lab-ws"]["failures"] == 0, proc.stdout[-3000:]
    assert "PIN unblocked with the PUK and set on token 'CERTEUROPE LAB'" in res["Token PIN | Say what was done"]["msg"]
    assert "PIN state ok" in res["Token PIN | Say what was done"]["msg"]
    assert PUK not in proc.stdout and lab["tok"].counters() == (0, 0) and flags_of(lab["tok"]) == []


# ------------------------------------------------------------------------------------ issue 10 item 3 / issue 12
def _saved(lab, host="lab-ws"):
    return json.loads((lab["tmp"] / "reports" / ("%s.json" % host)).read_text())


def test_saved_result_is_replaced_on_every_verify_even_on_failure(lab):
    """reports/token/<host>.json: checked_at, the client-auth facts and the certificate used; a later verify that
    fails (a module failure too, not only a failed login) replaces an older ok, never leaves it."""
    import datetime as dt

    inv, pw = inventory(lab, PIN)
    common = ["-i", str(inv), "playbooks/verify.yml", "--vault-password-file", str(pw), "-e",
              "token_verify_report_dir=%s" % (lab["tmp"] / "reports")]
    proc = playbook(common)
    assert proc.returncode == 0, proc.stdout[-3000:]
    saved = _saved(lab)
    age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(saved["checked_at"].replace("Z", "+00:00"))
    assert saved["ok"] is True and dt.timedelta(0) <= age < dt.timedelta(minutes=5)
    assert saved["client_cert_requested"] is True and saved["client_cert_accepted"] is True
    assert saved["client_cert_sent"] == saved["login_certificate"]["sha256"]
    assert saved["login_certificate"]["holder"] == "JEAN DUPONT"
    log = [e for e in lab["page"].entries() if e["event"] == "request"]
    assert log[-1]["sha256"] == saved["client_cert_sent"]  # the server's own record of the certificate
    # the module itself fails (an unreadable server CA file): a failed result replaces the ok one
    proc = playbook(common + ["-e", '{"token_verify_server_ca": ["%s"]}' % (lab["tmp"] / "nowhere.pem")])
    assert proc.returncode != 0
    saved = _saved(lab)
    assert saved["ok"] is False and saved["error"]["kind"] == "module_failure"
    assert "cannot read" in saved["error"]["message"] and saved["checked_at"]
    # an ok again, then a failed login (wrong module path): replaced again
    assert playbook(common).returncode == 0 and _saved(lab)["ok"] is True
    proc = playbook(common + ["-e", "token_verify_module=/opt/nowhere/libgclib.so"])
    saved = _saved(lab)
    assert saved["ok"] is False and saved["error"]["kind"] == "module_missing"
    assert lab["tok"].counters() == (0, 0)


def test_hosts_sharing_one_key_spend_one_try_on_a_wrong_pin(lab):
    """Three inventory hosts, one key (the lab's case, and an IT desk with one reader): a wrong PIN in one
    verify.yml run costs one try, not one per host. Each host runs in its own process, in parallel."""
    inv, pw = inventory(lab, "31415926")
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    one = hosts["all"]["children"]["workstations"]["hosts"].pop("lab-ws")
    hosts["all"]["children"]["workstations"]["hosts"] = {"lab-ws-%d" % i: dict(one) for i in (1, 2, 3)}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    proc = playbook(["-i", str(inv), "playbooks/verify.yml", "--vault-password-file", str(pw), "-f", "3", "-e",
                     "token_verify_report_dir=%s" % (lab["tmp"] / "reports")])
    data = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert all(data["stats"]["lab-ws-%d" % i]["failures"] == 1 for i in (1, 2, 3))
    errors = [_saved(lab, "lab-ws-%d" % i)["error"] for i in (1, 2, 3)]
    kinds = sorted(e["kind"] for e in errors)
    assert kinds == ["wrong_pin", "wrong_pin_this_run", "wrong_pin_this_run"], errors
    assert sum(_saved(lab, "lab-ws-%d" % i)["pin_attempts"] for i in (1, 2, 3)) == 1
    assert lab["tok"].counters() == (1, 0) and flags_of(lab["tok"]) == ["user_pin_count_low"]
    # a new run is a new decision: the PIN is presented again (once), as a person would retry
    playbook(["-i", str(inv), "playbooks/verify.yml", "--vault-password-file", str(pw), "-f", "3", "-l", "lab-ws-1"])
    assert lab["tok"].counters() == (2, 0)


SYSTEM_PYTHON = "/usr/bin/python3"


def _system_crypto():
    proc = subprocess.run([SYSTEM_PYTHON, "-c", "import cffi, cryptography; print(cryptography.__version__)"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.mark.skipif(not shutil.which(SYSTEM_PYTHON) or _system_crypto() is None,
                    reason="no python3-cffi / python3-cryptography on the system Python (see scripts/setup.sh)")
def test_test_login_on_the_system_python(lab):
    """Issue 10 item 2: the module runs on the target's own Python, here Debian 12's /usr/bin/python3 with its
    python3-cryptography (38 on Debian 12: no not_valid_after_utc, no signature_algorithm_parameters)."""
    inv, pw = inventory(lab, PIN)
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    hosts["all"]["children"]["workstations"]["hosts"]["lab-ws"]["ansible_python_interpreter"] = SYSTEM_PYTHON
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    proc = playbook(["-i", str(inv), "playbooks/verify.yml", "--vault-password-file", str(pw), "-e",
                     "token_verify_report_dir=%s" % (lab["tmp"] / "reports")])
    res, stats = task_results(proc)
    assert stats["lab-ws"]["failures"] == 0, proc.stdout[-3000:]
    assert res["Token verify | Check that the host's Python has cffi and cryptography (>= 38)"]["rc"] == 0
    assert res["Token verify | Install what the test login needs on the host (python3-cffi, python3-cryptography, "
               "NSS)"].get("skipped") is True
    rep = res[REPORT_TASK]["ansible_facts"]["tokentrust_token_report"]
    assert rep["ok"] is True and rep["client_cert_accepted"] is True and rep["days_left"] > 1000
    assert all(c["in_ca_set"] for c in rep["certificates"])  # the chain checked with the system's cryptography
    print("system python cryptography", _system_crypto())
