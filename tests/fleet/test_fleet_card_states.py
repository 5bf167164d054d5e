"""Issue 18, item 4: the key's states as users meet them, on the fleet, each distinct in verify.yml's saved result
(error.card_state and error.todo, from pkcs11_token_login) and in the fleet report (module_utils/tokentrust_report.py,
as library/fleet_report.py builds it from that saved result) with a plain "What to do".

The workstation was provisioned by site.yml with the card pulled out (tests/support/card.py provision_for_card); each
state is made by stopping / starting the card process (lab.fleet card_pull / card_insert), a second card in the
reader's second slot, the card's test-only delay (lab/piv_card.py delay.json) or wrong PINs / PUKs. Counters are read
from the card's own state file on the controller, never from our report. The login figures per host (time, APDU round
trips) printed at the end are the README's numbers (docs/token.md).
"""
import threading
import time

import pytest

from lab import fleet as fleetlab
from lab import piv_card
from tests.support.card import FLEET_OPENSC, card_verify, provision_for_card, report_of, second_card

pytestmark = [pytest.mark.fleet, pytest.mark.slow]
PIN, PUK = piv_card.DEFAULT_PIN, piv_card.DEFAULT_PUK
BAD_PUK = "87654321"


@pytest.fixture(scope="module")
def states(fleet):
    run = provision_for_card(fleet)
    assert run.returncode == 0, run.stdout[-4000:]
    fleet.card_host = fleet.m["hosts"][0]
    return fleet


def _failed_with(fleet, run, saved, name, state):
    """The saved result of `name` failed with card state `state`; returns (error, report reasons, html)."""
    assert run.returncode != 0, run.stdout[-3000:]
    res = saved[name]
    assert res["ok"] is False and res["error"]["card_state"] == state, res["error"]
    assert res["error"]["todo"], res["error"]
    assert "[key: %s] What to do: " % state in " ".join(run.stdout.split())  # verify.yml's own line says it too
    model, reasons, page = report_of(name, res)
    assert model["status"] == "failed" and model["token"]["card_state"] == state
    assert "What to do: " + res["error"]["todo"] in page.replace("&#x27;", "'")
    return res["error"], reasons, page


def _verify_in_background(fleet, report_dir, limit):
    out = {}
    t = threading.Thread(target=lambda: out.update(zip(("run", "saved"), card_verify(fleet, report_dir, limit=limit))))
    t.start()
    return t, out


def test_no_card_then_a_card_inserted_after_provisioning_passes_without_site_yml(states, tmp_path):
    """site.yml ran with the card out: verify says "reader without a key" with what to do; the card is inserted and
    verify.yml passes with no site.yml in between."""
    h = states.card_host
    fleetlab.card_pull(h)
    before = piv_card.counters(h["card_dir"])
    run, saved = card_verify(states, tmp_path / "out", limit=h["name"])
    err, reasons, _page = _failed_with(states, run, saved, h["name"], "no_card")
    assert reasons[0].startswith("test login failed, reader without a key: ") and "What to do: insert the key" \
        in reasons[0], reasons
    assert piv_card.counters(h["card_dir"]) == before
    fleetlab.card_insert(h, wait=10)
    n0 = piv_card.apdu_count(h["card_dir"])
    run, saved = card_verify(states, tmp_path / "in", limit=h["name"])
    assert run.returncode == 0, run.stdout[-4000:]
    assert saved[h["name"]]["ok"] is True and saved[h["name"]]["holder"] == piv_card.HOLDER
    model, reasons, _page = report_of(h["name"], saved[h["name"]])
    assert model["token"]["status"] == "ok" and not [r for r in reasons if "test login" in r], reasons
    assert piv_card.counters(h["card_dir"])["sign"] > before["sign"] and piv_card.apdu_count(h["card_dir"]) > n0


def test_card_pulled_during_the_login(states, tmp_path):
    """The card waits in its GENERAL AUTHENTICATE (the handshake's signature, after the PIN was accepted) and is pulled
    out then: "key pulled out during the test login", not a TLS error; the PIN was accepted once, no try lost."""
    h = states.card_host
    fleetlab.card_insert(h, wait=10)
    before = piv_card.counters(h["card_dir"])
    piv_card.set_delay(h["card_dir"], piv_card.INS["general_authenticate"], seconds=120)
    try:
        t, out = _verify_in_background(states, tmp_path / "out", h["name"])
        deadline = time.monotonic() + 240
        while not piv_card.delaying(h["card_dir"]):
            assert time.monotonic() < deadline and t.is_alive(), "the login never reached GENERAL AUTHENTICATE"
            time.sleep(0.1)
        assert fleetlab.card_pull(h)
        t.join(300)
    finally:
        piv_card.clear_delay(h["card_dir"])
        fleetlab.card_pull(h)
        fleetlab.card_insert(h, wait=10)
    err, reasons, _page = _failed_with(states, out["run"], out["saved"], h["name"], "card_pulled")
    assert err["kind"] == "card_pulled" and "pulled out during the test login" in err["message"]
    assert "key pulled out during the test login" in reasons[0] and "What to do: put the key back" in reasons[0]
    after = piv_card.counters(h["card_dir"])
    assert out["saved"][h["name"]]["pin_attempts"] == 1  # the PIN was handed over once, and accepted:
    assert after["pin_tries_left"] == after["pin_tries_max"] and after["verify_wrong"] == before["verify_wrong"]
    assert after["sign"] == before["sign"]  # pulled before its signature left the card


def test_two_cards_said_and_never_guessed(states, tmp_path):
    """Two keys of the same holder (the same label): a distinct state asking to remove one, no PIN presented to
    either. The holder's key beside another holder's: the login uses the one with the holder's label and says
    which, in which reader."""
    h = states.card_host
    fleetlab.card_insert(h, wait=10)
    same = second_card(h, tmp_path / "same", states.m["pki"])
    fleetlab.card_insert(same, wait=10)
    first0, second0 = piv_card.counters(h["card_dir"]), piv_card.counters(same["card_dir"])
    try:
        run, saved = card_verify(states, tmp_path / "same-out", limit=h["name"])
    finally:
        fleetlab.card_pull(same)
    err, reasons, _page = _failed_with(states, run, saved, h["name"], "several_cards")
    assert "Virtual PCD 00 00" in err["message"] and "Virtual PCD 00 01" in err["message"], err
    assert "several keys plugged in" in reasons[0] and "What to do: remove all keys labelled" in reasons[0], reasons
    assert piv_card.counters(h["card_dir"]) == first0 and piv_card.counters(same["card_dir"]) == second0

    other = second_card(h, tmp_path / "other", states.m["pki"], holder="MARIE MARTIN")
    fleetlab.card_insert(other, wait=10)
    other0 = piv_card.counters(other["card_dir"])
    try:
        run, saved = card_verify(states, tmp_path / "other-out", limit=h["name"])
    finally:
        fleetlab.card_pull(other)
    assert run.returncode == 0, run.stdout[-4000:]
    res = saved[h["name"]]
    assert res["ok"] is True and res["holder"] == piv_card.HOLDER
    assert {(t["label"], t["reader"].split(" (")[0]) for t in res["tokens_present"]} >= {
        (piv_card.HOLDER, "Virtual PCD 00 00"), ("MARIE MARTIN", "Virtual PCD 00 01")}, res["tokens_present"]
    assert any("the test login uses the one labelled %r in Virtual PCD 00 00" % piv_card.HOLDER in w
               for w in res["warnings"]), res["warnings"]
    assert piv_card.counters(other["card_dir"]) == other0  # the other holder's key: nothing presented


def _wrong_pins(fleet, name, n):
    for _ in range(n):
        fleet.sh(name, "pkcs11-tool --module %s --login --pin 0000 -O >/dev/null 2>&1" % FLEET_OPENSC, check=False)


def _unblock(fleet, name, puk):
    return fleet.module(name, "pkcs11_pin", {"module": FLEET_OPENSC, "action": "unblock", "puk": puk,
                                             "new_pin": PIN, "new_pin_confirm": PIN, "reject_weak": False})[1]


def test_pin_blocked_and_puk_blocked_are_distinct_and_present_nothing(states, tmp_path):
    h = states.card_host
    fleetlab.card_insert(h, wait=10)
    _wrong_pins(states, h["name"], 3)
    blocked = piv_card.counters(h["card_dir"])
    assert blocked["pin_tries_left"] == 0
    try:
        run, saved = card_verify(states, tmp_path / "pin", limit=h["name"])
        err, reasons, _page = _failed_with(states, run, saved, h["name"], "pin_locked")
        assert "token_pin.yml" in err["todo"] and "PUK" in err["todo"]
        assert "PIN blocked" in reasons[0] and "What to do: unblock the PIN with the PUK" in reasons[0], reasons
        assert piv_card.counters(h["card_dir"]) == blocked  # the PIN was never presented

        # three wrong PUKs: the card blocks its PUK (its own counter); the third answer is "blocked" (6983)
        kinds = [_unblock(states, h["name"], BAD_PUK)["error"]["kind"] for _ in range(3)]
        assert kinds == ["wrong_puk", "wrong_puk", "puk_locked"], kinds
        both = piv_card.counters(h["card_dir"])
        assert both["puk_tries_left"] == 0 and both["pin_tries_left"] == 0
        run, saved = card_verify(states, tmp_path / "puk", limit=h["name"])
        err2, reasons2, _page = _failed_with(states, run, saved, h["name"], "puk_locked")
        assert "new key" in err2["todo"] and err2["todo"] != err["todo"]
        assert "PIN and PUK blocked" in reasons2[0] and "What to do: the PIN and the PUK are both blocked" \
            in reasons2[0], reasons2
        assert piv_card.counters(h["card_dir"]) == both  # neither PIN nor PUK presented
        # the right PUK, now: not presented to a card that said its PUK is blocked
        res = _unblock(states, h["name"], PUK)
        assert res["error"]["kind"] == "puk_locked" and res["error"]["card_state"] == "puk_locked", res["error"]
        assert res["puk_attempts"] == 0 and piv_card.counters(h["card_dir"]) == both
    finally:  # lab only: the card re-issued as new (what the CA would do), the host's record of its PUK removed
        fleetlab.card_pull(h)
        st = piv_card.load_state(h["card_dir"])
        st["pin"], st["puk"] = PIN, PUK
        st["pin_tries_left"], st["puk_tries_left"] = st["pin_tries_max"], st["puk_tries_max"]
        piv_card._atomic_json(piv_card.Path(h["card_dir"]) / "card.json", st)
        states.sh(h["name"], "rm -f /run/tokentrust/token-*.lock", check=False)
        fleetlab.card_insert(h, wait=10)


def test_login_time_and_apdu_round_trips_per_host(states, tmp_path):
    """The README's numbers: verify.yml's test login through pcscd, per host: the module's own time on the host
    (`seconds`, loading the library to the end of the TLS step) and the APDUs the card answered (its apdu.log)."""
    for h in states.m["hosts"]:
        fleetlab.card_insert(h, wait=10)
    n0 = {h["name"]: piv_card.apdu_count(h["card_dir"]) for h in states.m["hosts"]}
    t0 = time.monotonic()
    run, saved = card_verify(states, tmp_path / "out")
    wall = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-4000:]
    for h in states.m["hosts"]:
        res = saved[h["name"]]
        apdus = piv_card.apdu_count(h["card_dir"]) - n0[h["name"]]
        assert res["ok"] is True and apdus > 0 and float(res["seconds"]) > 0
        print("%s: test login through pcscd %.3f s on the host, %d APDU round trips (verify.yml on %d host(s): "
              "%.1f s)" % (h["name"], float(res["seconds"]), apdus, len(states.hosts), wall))
