"""Issue 26: the test login proves that the CA's server trusts THIS key, and spends a PIN try only on a login that can
pass. All real: the lab token (SoftHSM2 behind pin_guard: its try counters are read from pin_guard's state file and
its flags by the lab, never from our report), `openssl s_server` variants and Python ssl servers on 127.0.0.1 that
record what they got per connection. Each test names the issue's item it proves.

Run: .venv/bin/pytest tests/integration/test_token_login_issue26.py
"""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time

import pytest

from tests.support.tls_servers import PAGE, PyServer, SServer, call, trickle_page
from tests.support.token_lab import PIN, PUK, ca_set_fact, flags_of, run_module, write_pems, wrong_pins

pytestmark = pytest.mark.skipif(shutil.which("softhsm2-util") is None or shutil.which("openssl") is None,
                                reason="softhsm2 / openssl not installed")
WRONG = "00000000"  # a wrong PIN: if it were presented, pin_guard's counter would show it
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def pki():
    from lab.pki import certeurope_standin

    return certeurope_standin()


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    from lab.testpage import make_server_identity

    return make_server_identity(tmp_path_factory.mktemp("srv"))


@pytest.fixture(scope="module")
def cas(pki, tmp_path_factory):
    """The lab CAs, one file (what s_server -CAfile names in its CertificateRequest) and one per CA."""
    d = tmp_path_factory.mktemp("cas")
    bundle = d / "bundle.pem"
    bundle.write_bytes(b"".join(i.pem for i in pki.values()))
    return {"bundle": bundle, "files": write_pems(d / "each", pki.values())}


@pytest.fixture()
def tok(pki, tmp_path):
    from lab.token import create_token

    return create_token(tmp_path / "token", pin=PIN, puk=PUK, pki=pki)


def login(tok, pki, ident, url, pin=PIN, **over):
    kwargs = {"module_path": str(tok.module), "pin": pin, "ca_set": ca_set_fact(pki), "url": url,
              "server_ca_pems": [ident["ca"].read_text()], "builtin_roots": False, "timeout": 5}
    kwargs.update(over)
    return call("verify_token", kwargs)


def token_with(tmp_path, holders):
    from lab.token import create_token

    return create_token(tmp_path / "token", pin=PIN, puk=PUK, holders=holders)


# ------------------------------------------------------------------------------ 1. negative controls, both
@pytest.mark.parametrize("variant", ["names_no_ca", "trusts_another_ca"])
def test_server_accepting_any_certificate_is_refused_before_the_pin(tok, pki, ident, tmp_path, variant):
    """Item 1: `s_server -Verify 1` without -verify_return_error requires a certificate and accepts whatever it gets.
    The no-certificate control is refused, the throwaway self-signed one gets HTTP 200: refused before the PIN."""
    from lab.pki import make_ca

    opts = ["-Verify", "1", "-no_ca_names"]
    if variant == "trusts_another_ca":
        opts += ["-CAfile", str(write_pems(tmp_path / "other", [make_ca("Some Other CA", org="elsewhere")])[0])]
    with SServer(ident, tmp_path, *opts) as srv:
        res = login(tok, pki, ident, srv.url, pin=WRONG)
        log = srv.log()
    err = res["error"]
    assert err and err["kind"] == "server_accepts_any_certificate", err
    assert "self-signed" in err["message"] and "no PIN try spent" in err["message"]
    assert "owner of the test page" in err["todo"] and "token_verify_url" in err["todo"]
    control = res["preflight"]["with_throwaway_certificate"]
    assert control["accepted"] is True and control["status"] == 200
    assert res["preflight"]["without_client_cert"]["accepted"] is False
    assert res["pin_attempts"] == 0 and res["logged_in"] is False and res["tls"] is None
    assert "tokentrust negative control" in log  # what the server got: our throwaway certificate, self-signed
    assert tok.counters() == (0, 0) and flags_of(tok) == []  # the wrong PIN was never presented


# ------------------------------------------------------------------------------ 2. no login can pass: no PIN
def _expired(pki):
    from lab.pki import make_leaf

    return make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True, key_type="rsa",
                     not_before=NOW - dt.timedelta(days=1100), not_after=NOW - dt.timedelta(days=5))


def _not_yet(pki):
    from lab.pki import make_leaf

    return make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True, key_type="rsa",
                     not_before=NOW + dt.timedelta(days=10), not_after=NOW + dt.timedelta(days=1000))


def _outside(pki):
    from lab.pki import make_ca, make_leaf

    return make_leaf("JEAN DUPONT", issuer=make_ca("Not The Lab CA", org="elsewhere"), client=True, key_type="rsa")


@pytest.mark.parametrize("case,why", [("expired", "expired on"), ("not_yet_valid", "not valid before"),
                                      ("outside_ca_set", "not in the CA set"), ("key_only", "no certificate")])
def test_no_login_can_pass_spends_no_try(pki, ident, cas, tmp_path, case, why):
    """Item 2: the key's only certificate is expired / not yet valid / outside the CA set, or the key holds a private
    key and no certificate: the wrong PIN is not presented (pin_guard's counter stays 0)."""
    make = {"expired": _expired, "not_yet_valid": _not_yet, "outside_ca_set": _outside}.get(case)
    tok = token_with(tmp_path, [(make(pki), "only")] if make else [])
    if case == "key_only":
        subprocess.run(["pkcs11-tool", "--module", str(tok.module), "--login", "--pin", PIN, "--keypairgen",
                        "--key-type", "rsa:2048", "--label", "orphan key", "--id", "0a"], check=True,
                       capture_output=True, timeout=120)
    with PyServer(ident, cas["files"]) as srv:
        res = login(tok, pki, ident, srv.url, pin=WRONG)
    err = res["error"]
    assert err and err["kind"] == ("no_certificate" if case == "key_only" else "no_usable_certificate"), err
    assert why in err["message"] and "no PIN try spent" in err["message"]
    assert "issued under ," not in err["message"] and err.get("todo")
    assert res["pin_attempts"] == 0 and res["logged_in"] is False
    assert [r["cert"] for r in srv.seen] == [None] * len(srv.seen)  # the key's certificate never reached it
    assert tok.counters() == (0, 0) and flags_of(tok) == []


# ------------------------------------------------------------------------------ 3. chosen as the server says
def test_certificate_chosen_among_those_the_server_names(pki, ident, cas, tmp_path):
    """Item 3: two certificates, the one from another CA with more days left, no CA set: the server's acceptable-CA
    list decides, and the result says which and why. On main: the other one, then client_ca_not_accepted."""
    from lab.pki import make_ca, make_leaf

    other = make_leaf("JEAN DUPONT", issuer=make_ca("Some Other CA", org="elsewhere"), client=True, key_type="rsa",
                      days=3000)
    lab = make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True, key_type="rsa")
    tok = token_with(tmp_path, [(other, "other"), (lab, "lab")])
    with SServer(ident, tmp_path, "-Verify", "1", "-verify_return_error", "-CAfile", str(cas["bundle"])) as srv:
        res = login(tok, pki, ident, srv.url, ca_set=None)
        log = srv.log()
    assert res["ok"] is True, res["error"]
    assert res["login_certificate"]["sha256"] == lab.sha256 and res["client_cert_sent"] == lab.sha256
    choice = res["certificate_choice"]
    assert choice["sha256"] == lab.sha256 and "acceptable" in choice["why"] and "Lab" in choice["why"]
    assert "Some Other CA" in " ".join(choice["set_aside"])
    assert "JEAN DUPONT" in log and "Some Other CA" not in log  # the server saw the lab certificate only
    assert tok.counters() == (0, 0)


# ------------------------------------------------------------------------------ 4. the certificate used decides
def test_old_expired_certificate_is_a_warning_not_a_failure(pki, ident, cas, tmp_path):
    """Item 4: a renewed key still holding its old expired certificate: HTTP 200 with the new one is a pass, the old
    one a warning ("remove the old certificate"). On main: ok=false, "expired"."""
    from lab.pki import make_leaf

    good = make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True, key_type="rsa")
    tok = token_with(tmp_path, [(_expired(pki), "old"), (good, "new")])
    with PyServer(ident, cas["files"]) as srv:
        res = login(tok, pki, ident, srv.url)
    assert res["ok"] is True and res["problems"] == [], (res["error"], res["problems"])
    assert res["login_certificate"]["sha256"] == good.sha256
    assert any("remove the old certificate" in w and "expired" in w for w in res["warnings"]), res["warnings"]
    assert [r["cert"] is not None for r in srv.seen][-1] is True
    assert tok.counters() == (0, 0)


# ------------------------------------------------------------------------------ 5. one deadline
def test_one_deadline_for_the_whole_tls_step(tok, pki, ident, cas):
    """Item 5: a server that sends one byte every 1.5 s (each read within `timeout`): the TLS step ends at the
    deadline, not 59 s later, and the key's lock is free when it ends (a second run takes it at once)."""
    with PyServer(ident, cas["files"], answer=lambda rec: trickle_page() if rec["cert"] else PAGE[:0] + (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), trickle=1.5) as srv:
        t0 = time.monotonic()
        res = login(tok, pki, ident, srv.url, timeout=5, deadline=8)
        took = time.monotonic() - t0
        assert res["error"] and res["error"]["kind"] == "timeout", res["error"]
        assert "deadline" in res["error"]["message"] and "8 s" in res["error"]["message"]
        assert took < 8 + 6, took  # child process start-up and the token included
        assert any(r["cert"] for r in srv.seen)  # the trickle was reached: the login's connection
        again = login(tok, pki, ident, srv.url, tls=False)  # the lock: taken at once
        assert again["ok"] is True and again["lock_waited"] < 1
    assert tok.counters() == (0, 0)


def test_deadline_option_is_checked(tok, pki, ident):
    res = login(tok, pki, ident, "https://127.0.0.1:1/", deadline=0)
    assert res["error"]["kind"] == "input" and "deadline" in res["error"]["message"]
    assert res["pin_attempts"] == 0


# ------------------------------------------------------------------------------ 6. texts, slots, PHA, sent
def test_pin_playbook_advice_names_its_own_variables(tok, tmp_path):
    """Item 6: in token_pin.yml (pkcs11_pin), the final-try advice names token_pin_* variables, not token_verify_*."""
    wrong_pins(tok, 2)
    assert "user_pin_final_try" in flags_of(tok)
    res = call("pin_action", {"module_path": str(tok.module), "action": "change", "label": tok.label, "pin": WRONG,
                              "new_pin": "98765432", "new_pin_confirm": "98765432"})
    err = res["error"]
    assert err["kind"] == "pin_final_try" and "token_pin_allow_final_try" in err["todo"], err
    assert "token_verify" not in err["todo"] and "token_verify" not in err["message"]
    assert tok.counters() == (2, 0)  # nothing presented
    res = call("verify_token", {"module_path": str(tok.module), "pin": WRONG, "tls": False})
    assert "token_verify_allow_final_try" in res["error"]["todo"] and "token_pin_" not in res["error"]["todo"]


def test_blocked_puk_says_what_is_blocked(tok, tmp_path):
    """Item 6: the PUK blocked, the PIN fine: the unblock says the PUK is blocked and the PIN still works."""
    wrong_pins(tok, 3, so=True)
    assert "so_pin_locked" in flags_of(tok) and "user_pin_locked" not in flags_of(tok)
    res = call("pin_action", {"module_path": str(tok.module), "action": "unblock", "label": tok.label, "puk": PUK,
                              "new_pin": "98765432", "new_pin_confirm": "98765432"})
    err = res["error"]
    assert err["kind"] == "puk_locked", err
    text = err["message"] + " " + err["todo"]
    assert "PUK" in text and "both blocked" not in text and "PIN and the PUK" not in text
    assert "the PIN itself is not blocked" in err["todo"]
    assert tok.counters() == (0, 3)


def test_empty_slot_is_not_a_token(tok, tmp_path):
    """Item 6: SoftHSM2 itself (no pin_guard in front) shows an empty, uninitialised slot next to the token: not a
    second key, so no label is needed."""
    env = tok.env()
    res = call("verify_token", {"module_path": str(tok.softhsm_module), "pin": PIN, "tls": False}, env=env)
    assert res["error"] is None and res["ok"] is True, res["error"]
    assert [t["label"] for t in res["tokens_present"]] == [tok.label]
    res = call("pin_action", {"module_path": str(tok.softhsm_module), "action": "change", "pin": PIN,
                              "new_pin": "98765432", "new_pin_confirm": "98765432"}, env=env)
    assert res["error"] is None and res["changed"] is True, res["error"]
    out = subprocess.run(["pkcs11-tool", "--module", str(tok.module), "--login", "--pin", "98765432", "--list-objects"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # the new PIN works: the change reached the real token


def test_post_handshake_only_server_has_its_own_kind(tok, pki, ident, cas):
    """Item 6: a TLS 1.3 server that asks for the certificate only after the handshake (post-handshake auth, which
    Firefox does not offer): its own kind, before the PIN, not "wrong URL or proxy"."""
    with PyServer(ident, cas["files"], mode="pha") as srv:
        res = login(tok, pki, ident, srv.url, pin=WRONG)
    err = res["error"]
    assert err and err["kind"] == "post_handshake_auth_only", err
    assert "post-handshake" in err["message"] and "proxy" not in err["message"]
    assert srv.seen and srv.seen[0]["pha"] is True and not any(r["cert"] for r in srv.seen)
    assert res["pin_attempts"] == 0 and tok.counters() == (0, 0)


def test_client_cert_sent_only_when_sent(tok, pki, ident, cas, tmp_path):
    """Item 6: a server that accepts only ECDSA signatures from the client; the key is RSA: NSS sends no
    certificate. client_cert_sent stays null and the error says none was sent."""
    with SServer(ident, tmp_path, "-Verify", "1", "-verify_return_error", "-CAfile", str(cas["bundle"]),
                 "-client_sigalgs", "ECDSA+SHA256:ECDSA+SHA384") as srv:
        res = login(tok, pki, ident, srv.url)
        log = srv.log()
    assert res["ok"] is False and res["client_cert_sent"] is None, (res["error"], res["client_cert_sent"])
    assert res["error"]["kind"] in ("client_cert_not_sent", "client_cert_required"), res["error"]
    assert "none was sent" in res["error"]["message"]
    assert "JEAN DUPONT" not in log


# ------------------------------------------------------------------------------ issue 29, item 5 (last part)
@pytest.mark.parametrize("ask_first", [1, 2])
def test_server_asking_only_at_first_gets_no_pin(tok, pki, ident, cas, ask_first):
    """A server that asks for a client certificate on its first connection(s) only, then answers anyone: the
    login's own connection must show the request before the PIN is presented (the PIN goes to the key from inside
    that handshake), so the wrong PIN is never presented."""
    with PyServer(ident, cas["files"], mode="ask_first:%d" % ask_first,
                  answer=lambda rec: PAGE) as srv:
        res = login(tok, pki, ident, srv.url, pin=WRONG)
    err = res["error"]
    assert err and err["kind"] in ("no_client_auth", "client_cert_optional", "server_accepts_any_certificate"), err
    assert "no PIN try spent" in err["message"], err["message"]
    assert res["pin_attempts"] == 0 and not any(r["cert"] for r in srv.seen)
    assert tok.counters() == (0, 0) and flags_of(tok) == []


# ------------------------------------------------------------------------------ through Ansible
def test_module_refuses_a_server_accepting_anything(tok, pki, ident, tmp_path):
    """The module (ansible-playbook): the kind, the todo, the deadline option, and the PIN not presented."""
    with SServer(ident, tmp_path, "-Verify", "1", "-no_ca_names") as srv:
        args = {"module": str(tok.module), "pin": "{{ tt_pin }}", "ca_set": ca_set_fact(pki), "url": srv.url,
                "server_ca": [str(ident["ca"])], "builtin_roots": False, "fail_on_error": False, "deadline": 30}
        res, _ = run_module(tmp_path, "pkcs11_token_login", args, {"tt_pin": WRONG})
    assert res.get("failed") is not True, res.get("msg")
    assert res["ok"] is False and res["error"]["kind"] == "server_accepts_any_certificate"
    assert res["pin_attempts"] == 0 and WRONG not in str(res)
    assert tok.counters() == (0, 0)
