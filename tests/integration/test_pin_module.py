"""pkcs11_pin for real (PIN change, PUK unblock) on lab tokens, through ansible-playbook.

Each test asserts pin_guard's counters and the token's flags after the call, and that the PIN that should work
works (a login through our bindings in a child process). Run: .venv/bin/pytest tests/integration/test_pin_module.py
"""
from __future__ import annotations

import json
import shutil

import pytest

from tests.support.token_lab import PIN, PUK, flags_of, run_inproc, run_module, wrong_pins

pytestmark = pytest.mark.skipif(shutil.which("softhsm2-util") is None or shutil.which("pkcs11-tool") is None,
                                reason="softhsm2 / opensc not installed")
NEW = "58203917"
SECRETS = {"tt_pin": PIN, "tt_puk": PUK, "tt_new": NEW, "tt_confirm": NEW}


@pytest.fixture()
def tok(tmp_path):
    from lab.pki import certeurope_standin, make_leaf
    from lab.token import create_token

    pki = certeurope_standin()
    leaf = make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True)
    return create_token(tmp_path / "token", pin=PIN, puk=PUK, holders=[(leaf, "JEAN DUPONT")])


def login_ok(tok, pin):
    rep = run_inproc("verify_token", {"module_path": str(tok.module), "pin": pin, "tls": False})
    return rep["logged_in"], rep


def change_args(tok, **over):
    args = {"action": "change", "module": str(tok.module), "pin": "{{ tt_pin }}", "new_pin": "{{ tt_new }}",
            "new_pin_confirm": "{{ tt_confirm }}", "pin_charset": "digits"}
    args.update(over)
    return args


def unblock_args(tok, **over):
    args = {"action": "unblock", "module": str(tok.module), "puk": "{{ tt_puk }}", "new_pin": "{{ tt_new }}",
            "new_pin_confirm": "{{ tt_confirm }}"}
    args.update(over)
    return args


def test_change_check_real_then_rerun(tok, tmp_path):
    res, _ = run_module(tmp_path, "pkcs11_pin", change_args(tok), SECRETS, check=True)
    assert not res.get("failed"), res.get("msg")
    assert res["changed"] is True and res["pin_attempts"] == 0
    assert res["pin_rules"] == {"min_length": 4, "max_length": 16, "charset": "digits"}
    assert tok.counters() == (0, 0)

    res, proc = run_module(tmp_path, "pkcs11_pin", change_args(tok), SECRETS)
    assert not res.get("failed"), res.get("msg")
    assert res["changed"] is True and res["pin_attempts"] == 1 and res["token"]["user_pin"] == "ok"
    for secret in (PIN, NEW):
        assert secret not in json.dumps(res) and secret not in proc.stdout + proc.stderr
    assert tok.counters() == (0, 0) and flags_of(tok) == []
    assert login_ok(tok, NEW)[0] is True

    # a second run with the same (now old) PIN: a wrong PIN, one attempt, clear error; never silently "ok"
    res, _ = run_module(tmp_path, "pkcs11_pin", change_args(tok), SECRETS)
    assert res["failed"] is True and res["error"]["kind"] == "wrong_pin" and res["changed"] is False
    assert res["pin_attempts"] == 1 and "one attempt used and not retried" in res["msg"]
    assert tok.counters() == (1, 0) and flags_of(tok) == ["user_pin_count_low"]
    ok, rep = login_ok(tok, PIN)
    assert ok is False and rep["error"]["kind"] == "wrong_pin"
    assert tok.counters() == (2, 0)


@pytest.mark.parametrize("over, secrets, fragment", [
    ({}, {"tt_new": "123", "tt_confirm": "123"}, "has 3 characters; the token accepts 4 to 16"),
    ({}, {"tt_new": "58203917", "tt_confirm": "58203918"}, "the new PIN and its confirmation differ"),
    ({}, {"tt_new": "5820391a", "tt_confirm": "5820391a"}, "outside the allowed set (digits 0-9)"),
    ({}, {"tt_new": "4444", "tt_confirm": "4444"}, "too easy to guess"),
    ({"pin_max_length": 6}, {}, "has 8 characters; the token accepts 4 to 6"),
    ({"pin_min_length": 2}, {}, "pin_min_length 2 is below what the token accepts (4)"),
])
def test_change_refuses_bad_new_pins_before_the_token(tok, tmp_path, over, secrets, fragment):
    res, _ = run_module(tmp_path, "pkcs11_pin", change_args(tok, **over), dict(SECRETS, **secrets))
    assert res["failed"] is True and res["error"]["kind"] == "pin_rules", res
    assert fragment in res["msg"]
    assert res["pin_attempts"] == 0 and res["changed"] is False
    assert tok.counters() == (0, 0) and flags_of(tok) == []
    assert login_ok(tok, PIN)[0] is True  # unchanged


def test_change_guard_at_final_try(tok, tmp_path):
    wrong_pins(tok, 2)
    res, _ = run_module(tmp_path, "pkcs11_pin", change_args(tok), SECRETS)
    assert res["failed"] is True and res["error"]["kind"] == "pin_final_try" and res["pin_attempts"] == 0
    assert tok.counters() == (2, 0) and flags_of(tok) == ["user_pin_count_low", "user_pin_final_try"]


def test_unblock_locked_pin_with_the_puk(tok, tmp_path):
    wrong_pins(tok, 3)
    assert tok.counters() == (3, 0) and "user_pin_locked" in flags_of(tok)
    res, _ = run_module(tmp_path, "pkcs11_pin", unblock_args(tok), SECRETS, check=True)
    assert res["changed"] is True and res["puk_attempts"] == 0 and tok.counters() == (3, 0)
    res, proc = run_module(tmp_path, "pkcs11_pin", unblock_args(tok), SECRETS)
    assert not res.get("failed"), res.get("msg")
    assert res["changed"] is True and res["puk_attempts"] == 1
    assert res["token_before"]["user_pin"] == "locked" and res["token"]["user_pin"] == "ok"
    for secret in (PUK, NEW):
        assert secret not in json.dumps(res) and secret not in proc.stdout + proc.stderr
    assert tok.counters() == (0, 0) and flags_of(tok) == []
    assert login_ok(tok, NEW)[0] is True


def test_wrong_puk_then_guard_then_locked_for_good(tok, tmp_path):
    wrong_pins(tok, 3)
    bad = dict(SECRETS, tt_puk="00000000")
    res, _ = run_module(tmp_path, "pkcs11_pin", unblock_args(tok), bad)
    assert res["failed"] is True and res["error"]["kind"] == "wrong_puk" and res["puk_attempts"] == 1
    assert "wrong PUK (SO PIN)" in res["msg"]
    assert tok.counters() == (3, 1) and flags_of(tok) == ["so_pin_count_low", "user_pin_count_low", "user_pin_locked"]
    wrong_pins(tok, 1, so=True)
    assert tok.counters() == (3, 2) and "so_pin_final_try" in flags_of(tok)
    # final try of the PUK: even the right PUK is not presented without allow_final_try
    res, _ = run_module(tmp_path, "pkcs11_pin", unblock_args(tok), SECRETS)
    assert res["failed"] is True and res["error"]["kind"] == "puk_final_try" and res["puk_attempts"] == 0
    assert tok.counters() == (3, 2)
    # a wrong PUK allowed at its final try: locked for good, and then never presented again
    res, _ = run_module(tmp_path, "pkcs11_pin", unblock_args(tok, allow_final_try=True), bad)
    assert res["failed"] is True and res["error"]["kind"] == "puk_locked" and res["puk_attempts"] == 1
    assert tok.counters() == (3, 3) and "so_pin_locked" in flags_of(tok)
    res, _ = run_module(tmp_path, "pkcs11_pin", unblock_args(tok, allow_final_try=True), SECRETS)
    assert res["failed"] is True and res["error"]["kind"] == "puk_locked" and res["puk_attempts"] == 0
    assert "cannot be unblocked" in res["msg"]
    assert tok.counters() == (3, 3)


def test_bad_inputs(tok, tmp_path):
    res, _ = run_module(tmp_path, "pkcs11_pin", {"action": "change", "module": str(tok.module),
                                                 "new_pin": "{{ tt_new }}"}, SECRETS)
    assert res["failed"] is True and "action is change but all of the following are missing: pin" in res["msg"]
    res, _ = run_module(tmp_path, "pkcs11_pin", change_args(tok, action="reset"), SECRETS)
    assert res["failed"] is True and "value of action must be one of: change, unblock" in res["msg"]
    assert tok.counters() == (0, 0)
