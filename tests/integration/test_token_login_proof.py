"""Issue 12: the test login must prove the key was used, never burn a PIN try it need not, and never go stale.

All real: the lab token (SoftHSM2 behind pin_guard, slowed by pin_guard's delay_ms for the race tests), our module
through ansible-playbook, `openssl s_server` as an independent server that never asks for a client certificate,
the lab test page on 127.0.0.1 answering chunked / keep-alive / close-delimited HTTP/1.1.
Run: .venv/bin/pytest tests/integration/test_token_login_proof.py
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import textwrap
import time

import pytest

from tests.support.token_lab import (
    PIN,
    PUK,
    PYTHON,
    ROOT,
    ca_set_fact,
    flags_of,
    run_module,
    write_pems,
    wrong_pins,
)

pytestmark = pytest.mark.skipif(shutil.which("softhsm2-util") is None or shutil.which("pkcs11-tool") is None,
                                reason="softhsm2 / opensc not installed")


@pytest.fixture(scope="module")
def pki():
    from lab.pki import certeurope_standin

    return certeurope_standin()


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    from lab.testpage import make_server_identity

    return make_server_identity(tmp_path_factory.mktemp("srv"))


@pytest.fixture()
def tok(pki, tmp_path):
    from lab.token import create_token

    return create_token(tmp_path / "token", pin=PIN, puk=PUK, pki=pki)


def page_with(pki, ident, d, transfer):
    from lab.testpage import TestPage

    return TestPage(ident["cert"], ident["key"], write_pems(d, pki.values()), log_path=d / "log.jsonl",
                    transfer=transfer)


def login_args(tok, pki, ident, url, **over):
    args = {"module": str(tok.module), "pin": "{{ tt_pin }}", "ca_set": ca_set_fact(pki), "url": url,
            "server_ca": [str(ident["ca"])], "fail_on_error": False}
    args.update(over)
    return args


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ 1. no client auth = no pass
@pytest.fixture()
def s_server(ident, tmp_path):
    """openssl s_server -www on 127.0.0.1: a real TLS server, not ours, that never asks for a client certificate
    and answers 200 to every GET (the 'wrong URL / proxy / changed page' case)."""
    port = free_port()
    proc = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", str(ident["cert"]),
                             "-key", str(ident["key"]), "-www", "-quiet"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield "https://127.0.0.1:%d/" % port
    proc.terminate()
    proc.wait(5)


def test_server_that_never_asks_for_a_client_certificate_is_a_failure(tok, pki, ident, s_server, tmp_path):
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, s_server), {"tt_pin": PIN})
    pre = res["preflight"]  # seen in the handshake without the key, before the PIN (issue 18)
    assert pre["without_client_cert"]["status"] == 200  # the server did answer 200 ...
    assert pre["client_cert_requested"] is False and res["tls"] is None and res["pin_attempts"] == 0
    assert res["ok"] is False  # ... but that proves nothing about the key
    assert res["error"]["kind"] == "no_client_auth"
    assert "did not ask for a client certificate" in res["error"]["message"]
    assert res["client_cert_requested"] is False and res["client_cert_sent"] is None
    assert res["client_cert_accepted"] is None
    # with fail_on_error (the default) the task fails with that message
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, s_server, fail_on_error=True),
                        {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "no_client_auth"
    assert tok.counters() == (0, 0)


def test_a_passing_login_carries_the_proof(tok, pki, ident, tmp_path):
    with page_with(pki, ident, tmp_path / "p", "length") as page:
        res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page.url), {"tt_pin": PIN})
        log = [e for e in page.entries() if e["event"] == "request"]
    assert res["ok"] is True, res
    assert res["client_cert_requested"] is True and res["client_cert_accepted"] is True
    assert res["client_cert_sent"] == res["login_certificate"]["sha256"] == log[-1]["sha256"]  # the server's record
    assert res["checked_at"].endswith("Z") and res["url"] == page.url


# ------------------------------------------------------------------------------------ 2. inputs before the key
@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://127.0.0.1/", "https://",
                                 "https://127.0.0.1:notaport/"])
def test_bad_url_presents_no_pin(tok, pki, ident, tmp_path, url):
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, url, fail_on_error=True),
                        {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "url", res
    assert res["pin_attempts"] == 0 and res["logged_in"] is False and res["token"] is None
    assert tok.counters() == (0, 0)


@pytest.mark.parametrize("selector,kind", [("   ", "input"), ("AB:CD:EF", "input"),
                                           ("JEAN DUPONT", "certificate_ambiguous"), ("a", "certificate_not_found")])
def test_bad_or_ambiguous_certificate_selector_presents_no_pin(tok, pki, ident, tmp_path, selector, kind):
    """The lab key holds two certificates of JEAN DUPONT: the holder name names both, 'a' is a substring of both
    labels; neither may silently pick the first one."""
    with page_with(pki, ident, tmp_path / "p", "length") as page:
        res, _ = run_module(tmp_path, "pkcs11_token_login",
                            login_args(tok, pki, ident, page.url, certificate=selector), {"tt_pin": PIN})
        assert page.entries() == []
    assert res["ok"] is False and res["error"]["kind"] == kind, res
    assert res["pin_attempts"] == 0 and res["logged_in"] is False
    if kind == "certificate_ambiguous":
        assert len(res["error"]["candidates"]) == 2 and "SHA-256" in res["error"]["message"]
    assert tok.counters() == (0, 0)


def test_exact_selectors_pick_one_certificate(tok, pki, ident, tmp_path):
    with page_with(pki, ident, tmp_path / "p", "length") as page:
        res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, ""),
                            {"tt_pin": PIN})
        certs = res["certificates"]
        target = certs[1]
        colon = ":".join(target["sha256"][i:i + 2] for i in range(0, 64, 2)).lower()
        for sel in (target["sha256"], colon, target["nickname"], target["nickname"].split(":", 1)[-1]):
            res, _ = run_module(tmp_path, "pkcs11_token_login",
                                login_args(tok, pki, ident, page.url, certificate=sel), {"tt_pin": PIN})
            assert res["ok"] is True, (sel, res["error"])
            assert res["login_certificate"]["sha256"] == target["sha256"] == res["client_cert_sent"]


# ------------------------------------------------------------------------------------ 4. HTTP/1.1 framing
@pytest.mark.parametrize("transfer", ["chunked", "keepalive", "close"])
def test_real_http11_answers_are_read_right(tok, pki, ident, tmp_path, transfer, monkeypatch):
    import lab.testpage

    # the server keeps an idle connection 60 s: a read that waited for its close would take that long (or hit the
    # module's 20 s timeout); a busy machine's ansible-playbook start-up stays far below either
    monkeypatch.setattr(lab.testpage, "HANDSHAKE_TIMEOUT", 60.0)
    with page_with(pki, ident, tmp_path / "p", transfer) as page:
        t0 = time.monotonic()
        res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page.url, body_bytes=4096),
                            {"tt_pin": PIN})
        elapsed = time.monotonic() - t0
    if transfer == "keepalive":  # the server keeps the connection open: the read must stop at Content-Length
        assert elapsed < 18, elapsed  # (pre-flight and login: two connections left open by the server)
    assert res["ok"] is True, res
    tls = res["tls"]
    assert tls["http_framing"] == {"keepalive": "content-length"}.get(transfer, transfer)
    assert tls["page"]["holder_found"] is True and tls["page"]["says_valid"] is True
    assert tls["page"]["says_not_valid"] is False
    assert not any("does not show the holder" in w for w in res.get("warnings", []))
    body = tls["body_start"]
    assert body.startswith("<!DOCTYPE html>") and body.rstrip().endswith("</html>")
    assert "\r\n7\r\n" not in body and "lab=1" not in body and "X-Lab-Trailer" not in body  # no chunk framing


# ------------------------------------------------------------------------------------ 3. the PIN guard's lock
PARALLEL = textwrap.dedent("""\
    import json, sys
    sys.path.insert(0, %r)
    import conftest  # noqa: F401
    from ansible.module_utils import tokentrust_login, tokentrust_pin_action
    func, kwargs = json.load(sys.stdin)
    where = tokentrust_login if hasattr(tokentrust_login, func) else tokentrust_pin_action
    print(json.dumps(getattr(where, func)(**kwargs), default=str))
    """) % str(ROOT / "tests")


def _parallel_wrong_pins(tok, n, func="verify_token", kwargs=None):
    kwargs = kwargs or {"module_path": str(tok.module), "pin": "00000000", "tls": False}
    procs = []
    for _ in range(n):
        p = subprocess.Popen([PYTHON, "-c", PARALLEL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
        procs.append(p)
    for p in procs:  # all started before any is fed: they load NSS and the token side by side
        p.stdin.write(json.dumps([func, kwargs]))
        p.stdin.close()
    out = []
    for p in procs:
        stdout = p.stdout.read()
        p.wait(120)
        assert p.returncode == 0, p.stderr.read()
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_parallel_runs_on_a_slow_token_never_spend_a_try_one_run_would_not(tok):
    """pin_guard delays C_GetTokenInfo and C_Login by 300 ms (a slow card). With 2 tries left (count low), two
    runs with a wrong PIN at once: one presents it (now final try), the other must then see 'final try' and
    refuse. Without a lock held from reading the counter to the end of the login, both read 'count low' and both
    present: the key locks. Several rounds, since a race needs chances."""
    with open(tok.guard_conf, "a") as f:
        f.write("delay_ms = 300\n")
    rounds = 3
    for _ in range(rounds):
        tok.reset_counters()
        wrong_pins(tok, 1)
        assert tok.counters() == (1, 0) and flags_of(tok) == ["user_pin_count_low"]
        results = _parallel_wrong_pins(tok, 2)
        kinds = sorted(r["error"]["kind"] for r in results)
        attempts = sum(r["pin_attempts"] for r in results)
        assert "user_pin_locked" not in flags_of(tok), results
        assert attempts == 1 and kinds == ["pin_final_try", "wrong_pin"], results
        assert tok.counters() == (2, 0)
        assert max(r["lock_waited"] or 0 for r in results) > 0.2  # one really waited for the other


def test_parallel_pin_changes_on_a_slow_token_never_spend_a_try_one_run_would_not(tok):
    """The same for pkcs11_pin (action change, a wrong current PIN): C_SetPIN is counted like a login."""
    with open(tok.guard_conf, "a") as f:
        f.write("delay_ms = 300\n")
    for _ in range(2):
        tok.reset_counters()
        wrong_pins(tok, 1)
        results = _parallel_wrong_pins(tok, 2, "pin_action", {
            "module_path": str(tok.module), "action": "change", "pin": "00000000", "new_pin": "73920581",
            "new_pin_confirm": "73920581"})
        kinds = sorted(r["error"]["kind"] for r in results)
        assert kinds == ["pin_final_try", "wrong_pin"], results
        assert sum(r["pin_attempts"] for r in results) == 1 and tok.counters() == (2, 0)
        assert "user_pin_locked" not in flags_of(tok)


# ------------------------------------------------------------------------------------ 7. NSS missing
def _masked_nss_run(tmp_path, module, args):
    """Run one module with libnss3 masked (bind-mounted /dev/null in a private mount namespace): a host without
    NSS, for real, without touching the machine's own files."""
    from tests.support.token_lab import BIN, ansible_env

    play = tmp_path / "play.yml"
    play.write_text(textwrap.dedent("""\
        - name: No NSS
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Run
              %s: %s
        """) % (module, json.dumps(args)))
    masks = [p for p in ("/usr/lib/x86_64-linux-gnu/libnss3.so", "/usr/lib/aarch64-linux-gnu/libnss3.so",
                         "/usr/lib/firefox-esr/libnss3.so", "/usr/lib/firefox/libnss3.so") if os.path.exists(p)]
    script = "".join("mount --bind /dev/null %s && " % m for m in masks)
    script += "exec %s -i localhost, -c local %s -e ansible_python_interpreter=%s" % (BIN / "ansible-playbook", play,
                                                                                       PYTHON)
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "json"}), cwd=str(ROOT), timeout=300)
    data = json.loads(proc.stdout[proc.stdout.index("{"):])
    return data["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_missing_nss_is_a_written_message_not_a_traceback(tok, pki, tmp_path):
    from lab.token import SOFTHSM_MODULE

    db = tmp_path / "db"
    db.mkdir()
    subprocess.run(["certutil", "-N", "-d", "sql:%s" % db, "--empty-password"], check=True, capture_output=True)
    cert = {"name": "Lab Root CA", "pem": pki["Lab Root CA"].pem.decode()}
    for module, args in (("nss_info", {"databases": [str(db)]}),
                         ("nss_certificate", {"databases": [str(db)], "certificates": [cert]}),
                         ("nss_pkcs11_module", {"databases": [str(db)], "library": str(SOFTHSM_MODULE)}),
                         ("nss_provision", {"databases": [str(db)], "certificates": [cert]}),
                         ("pkcs11_token_login", {"module": str(tok.module), "pin": "x", "url": ""})):
        (tmp_path / module).mkdir()
        res = _masked_nss_run(tmp_path / module, module, args)
        text = json.dumps(res)
        if module == "nss_info":  # a per-database reader: the database's own error says it
            assert res["databases"][0]["error"], res
        else:
            assert res.get("failed") is True, res
        assert "MODULE FAILURE" not in text and "Traceback" not in res.get("msg", ""), text[:2000]
        assert "install NSS (Debian/Ubuntu: apt-get install libnss3" in text, text[:2000]
    assert tok.counters() == (0, 0)


# ------------------------------------------------------------------------------------ 5. host name checked
def test_server_certificate_for_another_host_name_is_refused(tok, pki, tmp_path):
    """SSL_SetURL's return is checked and the name it sets is enforced: a page whose certificate (from a trusted
    CA) names another host is server_name_mismatch with SSL_ERROR_BAD_CERT_DOMAIN, before any client certificate."""
    from lab.testpage import TestPage, make_server_identity

    other = make_server_identity(tmp_path / "other", names=("test-page.invalid",))
    with TestPage(other["cert"], other["key"], write_pems(tmp_path / "cas", pki.values())) as page:
        res, _ = run_module(tmp_path, "pkcs11_token_login",
                            {"module": str(tok.module), "pin": "{{ tt_pin }}", "ca_set": ca_set_fact(pki),
                             "url": page.url, "server_ca": [str(other["ca"])], "fail_on_error": False},
                            {"tt_pin": PIN})
        assert [e for e in page.entries() if e["event"] == "request"] == []
    assert res["ok"] is False and res["error"]["kind"] == "server_name_mismatch"
    assert res["error"]["nss_error"] == "SSL_ERROR_BAD_CERT_DOMAIN" and res["pin_attempts"] == 0
    assert res["client_cert_sent"] is None
