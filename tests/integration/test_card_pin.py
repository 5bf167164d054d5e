"""pkcs11_pin (PIN change, PUK unblock) on the lab's PIV card through the real stack: pcscd + vpcd + OpenSC's
opensc-pkcs11.so, the module run by ansible-playbook. Every count is read from the card's own state file
(lab/piv_card.py), never from the module's report.

On the old code an unblock did C_Login(SO, PUK) + C_InitPIN: OpenSC sends VERIFY P2=81, which a PIV card does not
define (CKR_GENERAL_ERROR); OpenSC's default unblock style (C_SetPIN outside a login = change) spends a PIN try.
"""
import pytest

from lab import piv_card
from tests.support.card import OPENSC, local_card, why_not
from tests.support.token_lab import run_module

pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not() is not None, reason=str(why_not()))]
PIN, PUK, NEW = piv_card.DEFAULT_PIN, piv_card.DEFAULT_PUK, "58203917"
SECRETS = {"tt_pin": PIN, "tt_puk": PUK, "tt_new": NEW, "tt_confirm": NEW, "tt_bad": "87654321"}


@pytest.fixture()
def card(tmp_path):
    with local_card(tmp_path) as c:
        yield c


def unblock(tmp_path, puk="{{ tt_puk }}", env=None):
    args = {"action": "unblock", "module": OPENSC, "puk": puk, "new_pin": "{{ tt_new }}",
            "new_pin_confirm": "{{ tt_confirm }}", "reject_weak": False}
    return run_module(tmp_path / "play", "pkcs11_pin", args, SECRETS)[0]


def wrong_pins(card, n):
    for _ in range(n):
        assert card.pkcs11("--login", "--pin", "0000", "-O").returncode != 0


def logs_in(card, pin):
    return card.pkcs11("--login", "--pin", pin, "-O").returncode == 0


def test_unblock_a_blocked_card_spends_no_pin_try(card, tmp_path):
    wrong_pins(card, 3)
    before = card.counters()
    assert before["pin_tries_left"] == 0
    res = unblock(tmp_path)
    assert not res.get("failed"), res.get("msg")
    assert res["changed"] is True and res["puk_attempts"] == 1 and res["pin_attempts"] == 0
    after = card.counters()
    assert after["pin_tries_left"] == 3 and after["puk_tries_left"] == 3
    assert after["reset_retry"] == before["reset_retry"] + 1  # RESET RETRY COUNTER, on the card
    assert after["verify"] == before["verify"] and after["change"] == before["change"]  # no PIN presented
    assert logs_in(card, NEW)
    assert piv_card.load_state(card.root)["pin"] == NEW


def test_unblock_a_card_that_is_not_blocked_spends_no_pin_try(card, tmp_path):
    wrong_pins(card, 1)
    before = card.counters()
    assert before["pin_tries_left"] == 2
    res = unblock(tmp_path)
    assert not res.get("failed"), res.get("msg")
    after = card.counters()
    assert after["pin_tries_left"] == 3  # restored, not 1: nothing was presented as the PIN
    assert after["verify"] == before["verify"] and after["change"] == before["change"]
    assert after["verify_wrong"] == before["verify_wrong"]
    assert piv_card.load_state(card.root)["pin"] == NEW


def test_unblock_whatever_the_hosts_unblock_style(card, tmp_path, monkeypatch):
    """The host's opensc.conf says set_pin_in_unlogged_session: a change stays a change (not an unblock with the
    PIN as PUK), and with the default style an unblock stays an unblock."""
    conf = tmp_path / "opensc.conf"
    conf.write_text("app default {\n}\napp opensc-pkcs11 {\n pkcs11 {\n  user_pin_unblock_style = "
                    "set_pin_in_unlogged_session;\n }\n}\n")
    monkeypatch.setenv("OPENSC_CONF", str(conf))
    before = card.counters()
    args = {"action": "change", "module": OPENSC, "pin": "{{ tt_pin }}", "new_pin": "{{ tt_new }}",
            "new_pin_confirm": "{{ tt_confirm }}", "reject_weak": False}
    res = run_module(tmp_path / "play", "pkcs11_pin", args, SECRETS)[0]
    assert not res.get("failed"), res.get("msg")
    after = card.counters()
    assert after["change"] == before["change"] + 1 and after["reset_retry"] == before["reset_retry"]
    assert after["puk_tries_left"] == 3
    conf.write_text("app default {\n}\n")
    res = unblock(tmp_path)
    assert not res.get("failed"), res.get("msg")
    assert card.counters()["reset_retry"] == after["reset_retry"] + 1
    assert card.counters()["verify"] == after["verify"]


def test_wrong_puk_counts_on_the_card_and_a_blocked_puk_is_said(card, tmp_path):
    res = unblock(tmp_path, puk="{{ tt_bad }}")
    assert res.get("failed") and res["error"]["kind"] == "wrong_puk", res
    c = card.counters()
    assert c["puk_tries_left"] == 2 and c["pin_tries_left"] == 3
    unblock(tmp_path, puk="{{ tt_bad }}")
    res = unblock(tmp_path, puk="{{ tt_bad }}")
    assert card.counters()["puk_tries_left"] == 0
    assert res["error"]["kind"] == "puk_locked", res
    res = unblock(tmp_path)  # the right PUK, too late
    assert res["error"]["kind"] == "puk_locked" and card.counters()["puk_tries_left"] == 0
    assert PUK not in str(res) and NEW not in str(res)


def test_final_try_guard_relies_on_final_try_since_opensc_never_says_count_low(card, tmp_path):
    wrong_pins(card, 1)
    wrong_pins(card, 1)
    before = card.counters()
    assert before["pin_tries_left"] == 1
    args = {"action": "change", "module": OPENSC, "pin": "{{ tt_bad }}", "new_pin": "{{ tt_new }}",
            "new_pin_confirm": "{{ tt_confirm }}", "reject_weak": False}
    res = run_module(tmp_path / "play", "pkcs11_pin", args, SECRETS)[0]
    assert res["error"]["kind"] == "pin_final_try", res
    assert res["pin_attempts"] == 0 and res["token_before"]["user_pin"] == "final_try"
    assert "count_low" not in res["token_before"]["flags"] and "COUNT_LOW" not in str(res["token_before"]["flags"])
    assert card.counters() == before  # nothing reached the card's counters


def test_reader_without_card_is_said_as_such(card, tmp_path):
    """OpenSC loads PC/SC's client library: an empty reader is "no_card" (insert the key), not a generic no token."""
    card.pull()
    try:
        res = run_module(tmp_path / "play", "pkcs11_token_login", {"module": OPENSC, "pin": "{{ tt_pin }}", "url": ""},
                         SECRETS)[0]
    finally:
        card.insert()
    assert res["error"]["kind"] == "no_token" and res["error"]["card_state"] == "no_card", res["error"]
    assert "insert the key" in res["msg"] and res["pin_attempts"] == 0
