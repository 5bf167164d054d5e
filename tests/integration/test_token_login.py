"""pkcs11_token_login for real: lab token (SoftHSM2 behind pin_guard), lab test page on 127.0.0.1, NSS in-process.

Every test asserts the token's counters (pin_guard's state file) and flags (read by the lab through the module, a
separate process) after the call. Run: .venv/bin/pytest tests/integration/test_token_login.py
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess

import pytest

from tests.support.token_lab import (
    PIN,
    PUK,
    ca_set_fact,
    empty_module,
    flags_of,
    run_inproc,
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


@pytest.fixture(scope="module")
def page(pki, ident, tmp_path_factory):
    from lab.testpage import TestPage

    d = tmp_path_factory.mktemp("page")
    with TestPage(ident["cert"], ident["key"], write_pems(d, pki.values()), log_path=d / "log.jsonl") as p:
        yield p


@pytest.fixture()
def tok(pki, tmp_path):
    from lab.token import create_token

    return create_token(tmp_path / "token", pin=PIN, puk=PUK, pki=pki)


def login_args(tok, pki, ident, page, **over):
    args = {"module": str(tok.module), "pin": "{{ tt_pin }}", "ca_set": ca_set_fact(pki), "url": page.url,
            "server_ca": [str(ident["ca"])], "fail_on_error": True}
    args.update(over)
    return args


def new_entries(page, before):
    return page.entries()[before:]


# ------------------------------------------------------------------------------------------------ good login
def test_good_login_check_real_and_again(tok, pki, ident, page, tmp_path):
    n0 = len(page.entries())
    res, _ = run_module(tmp_path / "a", "pkcs11_token_login", login_args(tok, pki, ident, page), {"tt_pin": PIN},
                        check=True)
    assert not res.get("failed"), res
    assert res["changed"] is False and res["check_mode"] is True
    assert res["pin_attempts"] == 0 and res["logged_in"] is False and res["tls"] is None
    assert len(res["certificates"]) == 2 and {c["in_ca_set"] for c in res["certificates"]} == {True}
    assert new_entries(page, n0) == []  # check mode: no connection
    assert tok.counters() == (0, 0) and flags_of(tok) == []

    for _ in range(2):  # real run, then again: same answer, changed=false both times
        res, _ = run_module(tmp_path / "a", "pkcs11_token_login", login_args(tok, pki, ident, page), {"tt_pin": PIN})
        assert not res.get("failed"), res.get("msg")
        assert res["changed"] is False and res["ok"] is True and res["error"] is None and res["problems"] == []
        assert res["logged_in"] is True and res["pin_attempts"] == 1
        assert res["holder"] == "JEAN DUPONT" and res["days_left"] > 1000
        certs = res["certificates"]
        assert sorted(c["issuer"].split(",")[0] for c in certs) == ["CN=Lab Advanced CA V3", "CN=Lab Classe 3 Plus V2"]
        for c in certs:
            assert c["has_key"] is True and c["expired"] is False and c["client_auth"] is True
            assert "digital_signature" in c["key_usage"] and "clientAuth" in c["extended_key_usage"]
            assert c["chain"][-1] in ("Lab Root CA", "Lab Root CA 2")
        tls = res["tls"]
        assert tls["status"] == 200 and tls["client_cert_requested"] is True
        assert tls["client_cert_sent"] == res["login_certificate"]["sha256"]
        assert tls["page"]["holder_found"] is True and tls["page"]["says_valid"] is True
        assert "JEAN DUPONT" in tls["body_start"]
        assert tls["server_certificate"]["issuer"].startswith("CN=Lab TLS CA")
        assert res["token"]["user_pin"] == "ok" and res["pin_state_before"] == "ok"
        pre = res["preflight"]  # the handshake without the key, made before the PIN
        assert pre["client_cert_requested"] is True and pre["without_client_cert"]["accepted"] is False
        assert pre["without_client_cert"]["status"] == 403
    # the server's own record: each run is a pre-flight request without a certificate (refused, 403), then a valid
    # login with the certificate from the token
    log = [e for e in new_entries(page, n0) if e["event"] == "request"]
    assert [e["status"] for e in log] == ["no-certificate", "valid", "no-certificate", "valid"]
    assert log[1]["sha256"] == res["login_certificate"]["sha256"] and log[1]["holder"] == "JEAN DUPONT"
    assert tok.counters() == (0, 0) and flags_of(tok) == []


# ------------------------------------------------------------------------------------------------ wrong PIN
def test_wrong_pin_costs_exactly_one_attempt(tok, pki, ident, page, tmp_path):
    n0 = len(page.entries())
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page), {"tt_pin": "99999999"})
    assert res["failed"] is True
    assert res["error"]["kind"] == "wrong_pin" and res["error"]["nss_error"] == "SEC_ERROR_BAD_PASSWORD"
    assert "wrong PIN for token 'CERTEUROPE LAB': one attempt used and not retried" in res["msg"]
    assert res["pin_attempts"] == 1 and res["logged_in"] is False and res["tls"] is None
    assert res["token"]["user_pin"] == "count_low"
    assert tok.counters() == (1, 0) and flags_of(tok) == ["user_pin_count_low"]
    # the pre-flight (no certificate, refused), the throwaway certificate (refused in the handshake), then the login's
    # own connection: the PIN is presented inside its handshake, was refused, so no certificate went out on it
    assert [(e["event"], e.get("status")) for e in new_entries(page, n0)] == [
        ("request", "no-certificate"), ("tls-error", None), ("request", "no-certificate")]
    # the right PIN afterwards: works, counter back to zero
    res = run_inproc("verify_token", {"module_path": str(tok.module), "pin": PIN, "tls": False})
    assert res["ok"] is True and res["pin_state_before"] == "count_low" and res["token"]["user_pin"] == "ok"
    assert tok.counters() == (0, 0) and flags_of(tok) == []


def test_guard_at_final_try_presents_nothing(tok, pki, ident, page, tmp_path):
    wrong_pins(tok, 2)
    assert tok.counters() == (2, 0) and flags_of(tok) == ["user_pin_count_low", "user_pin_final_try"]
    # even the RIGHT PIN is not presented: the module cannot know it is right
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page), {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "pin_final_try"
    assert "next wrong PIN locks it (final try): no attempt was made" in res["msg"]
    assert "allow_final_try=true" in res["msg"]
    assert res["pin_attempts"] == 0
    assert tok.counters() == (2, 0) and flags_of(tok) == ["user_pin_count_low", "user_pin_final_try"]
    # explicitly allowed: one attempt, with a warning
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page, allow_final_try=True),
                        {"tt_pin": PIN})
    assert not res.get("failed"), res.get("msg")
    assert any("final try" in w for w in res["warnings"])
    assert res["ok"] is True and res["pin_attempts"] == 1
    assert tok.counters() == (0, 0) and flags_of(tok) == []


def test_locked_token_is_never_tried(tok, pki, ident, page, tmp_path):
    wrong_pins(tok, 3)
    assert tok.counters() == (3, 0) and "user_pin_locked" in flags_of(tok)
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page, allow_final_try=True),
                        {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "pin_locked"
    assert "is locked: no attempt was made" in res["msg"] and "PUK" in res["msg"]
    assert res["pin_attempts"] == 0 and res["token"]["user_pin"] == "locked"
    assert tok.counters() == (3, 0) and "user_pin_locked" in flags_of(tok)


def test_count_low_warns(tok, pki, ident, page, tmp_path):
    wrong_pins(tok, 1)
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page), {"tt_pin": PIN})
    assert res["ok"] is True and res["pin_state_before"] == "count_low"
    assert any("count low" in w for w in res["warnings"])
    assert tok.counters() == (0, 0)


# ------------------------------------------------------------------------------------------------ no PIN anywhere
def test_pin_appears_in_no_result_and_no_log(tok, pki, ident, page, tmp_path):
    for pin in (PIN, "Wr0ng-pin-77"):
        res, proc = run_module(tmp_path / "j", "pkcs11_token_login", login_args(tok, pki, ident, page), {"tt_pin": pin})
        assert pin not in json.dumps(res) and pin not in proc.stdout + proc.stderr
        assert "********" not in json.dumps(res)  # nothing had to be masked: we never returned it
        _, proc = run_module(tmp_path / "v", "pkcs11_token_login", login_args(tok, pki, ident, page),
                             {"tt_pin": pin}, verbose="-vvvv", json_out=False)
        out = proc.stdout + proc.stderr
        assert "pkcs11_token_login" in out and len(out) > 2000  # really verbose
        assert pin not in out
        assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in out  # the invocation is shown, with the PIN masked
    assert tok.counters() == (2, 0)  # the wrong PIN: once in each of the two runs


# ------------------------------------------------------------------------------------------------ token / module
def test_token_absent(tmp_path):
    lib = empty_module(tmp_path / "empty")
    res, _ = run_module(tmp_path, "pkcs11_token_login", {"module": str(lib), "pin": "{{ tt_pin }}", "url": ""},
                        {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "no_token"
    assert "no token present on PKCS#11 module %s" % lib in res["msg"] and "plug in the key" in res["msg"]
    assert res["pin_attempts"] == 0 and res["token"] is None


def test_module_path_wrong(tmp_path):
    res, _ = run_module(tmp_path, "pkcs11_token_login", {"module": "/opt/nowhere/libgclib.so", "pin": "{{ tt_pin }}"},
                        {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "module_missing"
    assert res["msg"].startswith("PKCS#11 module /opt/nowhere/libgclib.so does not exist on this host")
    notp11 = tmp_path / "libgclib.so"  # there, but not a PKCS#11 library (a half-copied install, a wrong file)
    notp11.write_bytes(b"\x7fELF but not really a shared library")
    res, _ = run_module(tmp_path, "pkcs11_token_login", {"module": str(notp11), "pin": "{{ tt_pin }}"}, {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "module_load"
    assert "as a PKCS#11 module" in res["msg"]


def test_several_tokens_need_a_label(tok, pki, ident, page, tmp_path):
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "OTHER KEY", "--pin", "5678", "--so-pin",
                    "87654321"], env=tok.env(), check=True, capture_output=True)
    args = login_args(tok, pki, ident, page)
    res, _ = run_module(tmp_path, "pkcs11_token_login", args, {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "several_tokens"
    msg = res["msg"]
    assert "2 tokens are present (" in msg and "'OTHER KEY'" in msg and "set the token label" in msg
    res, _ = run_module(tmp_path, "pkcs11_token_login", dict(args, token_label="NOPE"), {"tt_pin": PIN})
    assert res["error"]["kind"] == "token_not_found" and "no token labelled 'NOPE'" in res["msg"]
    res, _ = run_module(tmp_path, "pkcs11_token_login", dict(args, token_label="CERTEUROPE LAB"), {"tt_pin": PIN})
    assert res["ok"] is True and res["holder"] == "JEAN DUPONT"
    assert tok.counters() == (0, 0)


# ------------------------------------------------------------------------------------------------ certificates
def test_expired_certificate_on_the_token(pki, ident, page, tmp_path):
    from lab.pki import make_leaf
    from lab.token import create_token

    now = dt.datetime.now(dt.timezone.utc)
    old = make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True, key_type="rsa",
                    not_before=now - dt.timedelta(days=1100), not_after=now - dt.timedelta(days=5))
    good = make_leaf("JEAN DUPONT", issuer=pki["Lab Classe 3 Plus V2"], client=True, key_type="rsa")
    tok = create_token(tmp_path / "token", pin=PIN, puk=PUK, holders=[(old, "old"), (good, "good")])
    n0 = len(page.entries())
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page, fail_on_error=False),
                        {"tt_pin": PIN})
    # issue 26: the certificate used decides; the old expired one is a warning, not a failure
    assert res["ok"] is True and res["error"] is None and not res.get("failed") and res["problems"] == []
    expired = [c for c in res["certificates"] if c["expired"]]
    assert len(expired) == 1 and expired[0]["days_left"] < 0 and expired[0]["usable"] is False
    assert any("expired on" in w and "Lab Advanced CA V3" in w and "remove the old certificate" in w
               for w in res["warnings"])
    assert res["login_certificate"]["sha256"] == good.sha256 and res["tls"]["status"] == 200  # the valid one
    # the expired one, chosen explicitly: no login with it can pass, so it is refused before the PIN
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page, certificate=old.sha256),
                        {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "certificate_not_usable"
    assert "expired on" in res["msg"] and "no PIN try spent" in res["msg"] and res["pin_attempts"] == 0
    assert not [e for e in new_entries(page, n0) if e.get("status") == "ok" and old.sha256 in json.dumps(e)]
    assert tok.counters() == (0, 0) and flags_of(tok) == []


def test_server_rejects_the_certificate(tok, pki, ident, tmp_path):
    from lab.pki import make_ca
    from lab.testpage import TestPage

    other = make_ca("Some Other CA")
    with TestPage(ident["cert"], ident["key"], write_pems(tmp_path / "cas", [other])) as strict:
        res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, strict), {"tt_pin": PIN})
        assert res["failed"] is True and res["error"]["kind"] == "client_cert_rejected"
        assert res["error"]["nss_error"] == "SSL_ERROR_UNKNOWN_CA_ALERT"
        assert "does not know the CA of the client certificate" in res["msg"]
        assert res["logged_in"] is True and res["pin_attempts"] == 1
        # the pre-flight without a certificate (answered 403), the throwaway self-signed certificate (refused in
        # the handshake), then the handshake with the key (refused)
        assert [(e["event"], e.get("status")) for e in strict.entries()] == [("request", "no-certificate"),
                                                                           ("tls-error", None), ("tls-error", None)]
    assert tok.counters() == (0, 0) and flags_of(tok) == []


def test_server_not_trusted(tok, pki, ident, page, tmp_path):
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page, server_ca=[]),
                        {"tt_pin": PIN})
    assert res["failed"] is True and res["error"]["kind"] == "server_untrusted"
    assert res["error"]["nss_error"] == "SEC_ERROR_UNKNOWN_ISSUER"
    assert "is not trusted" in res["msg"] and "CN=127.0.0.1" in res["msg"]
    # the page's CA in the CA set, trusted for servers as the browser gets it (nss_trust C,,): trusted
    tls_ca = {"name": "Lab TLS CA", "pem": ident["ca"].read_text(), "role": "root", "nss_trust": "C,,"}
    res, _ = run_module(tmp_path, "pkcs11_token_login",
                        login_args(tok, pki, ident, page, server_ca=[], ca_set=ca_set_fact(pki) + [tls_ca]),
                        {"tt_pin": PIN})
    assert res["ok"] is True and res["tls"]["status"] == 200
    res, _ = run_module(tmp_path, "pkcs11_token_login",
                        login_args(tok, pki, ident, page, server_ca=[], ca_set=ca_set_fact(pki) + [
                            dict(tls_ca, nss_trust=",,")]), {"tt_pin": PIN})
    assert res["error"]["kind"] == "server_untrusted"
    assert tok.counters() == (0, 0) and flags_of(tok) == []


def test_chain_not_in_the_ca_set(tok, pki, ident, page, tmp_path):
    partial = [ca for ca in ca_set_fact(pki) if ca["name"] in ("Lab Root CA 2", "Lab Advanced CA V3")]
    res, _ = run_module(tmp_path, "pkcs11_token_login", login_args(tok, pki, ident, page, ca_set=partial),
                        {"tt_pin": PIN})
    # issue 26: the certificate used (under Lab Advanced CA V3, in the partial set) decides; the other is a warning
    assert not res.get("failed") and res["error"] is None and res["ok"] is True
    bad = [c for c in res["certificates"] if not c["in_ca_set"]]
    assert len(bad) == 1 and "Lab Classe 3 Plus V2" in bad[0]["issuer"]
    assert "is not in the CA set" in bad[0]["problem"]
    assert any("does not chain to the CA set" in w and "remove the old certificate" in w for w in res["warnings"])
    assert res["tls"]["status"] == 200 and "Lab Advanced CA V3" in res["login_certificate"]["issuer"]
    assert tok.counters() == (0, 0)
