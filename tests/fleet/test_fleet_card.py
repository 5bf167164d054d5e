"""The key as it really is, on the fleet: each workstation's PIV card (lab/piv_card.py, a process on the controller)
in Debian's vpcd reader under the pcscd that token_middleware_linux installed, OpenSC as middleware, our modules
over SSH with become. Counters are read from the card's state file on the controller, never from our report.

Pulling / inserting the card = stopping / starting its process (lab.fleet card_pull / card_insert).
"""
import json
import time

import pytest

from lab import fleet as fleetlab
from lab import piv_card, reader
from tests.fleet.conftest import recap

pytestmark = [pytest.mark.fleet, pytest.mark.slow]
OPENSC = fleetlab.CARD_MODULE
PIN, PUK = piv_card.DEFAULT_PIN, piv_card.DEFAULT_PUK


MIDDLEWARE_ON = "tokentrust_token_middleware_linux=true"  # opt-in in site.yml (playbooks/firefox.yml)
CARD_VARS = json.dumps({"token_verify_module": OPENSC, "token_verify_token_label": piv_card.HOLDER,
                        "token_verify_pin": PIN})


@pytest.fixture(scope="module")
def cardfleet(fleet):
    """The fleet after site.yml (which installs the middleware), the middleware role run again (nothing to
    change), then verify.yml's test login with the card (through pcscd, OpenSC) timed, its APDUs counted."""
    first = fleet.playbook("site.yml", "-e", MIDDLEWARE_ON)
    assert first.returncode == 0, first.stdout[-4000:]
    second = fleet.playbook("firefox.yml", "--tags", "token_middleware_linux", "-e", MIDDLEWARE_ON)
    assert second.returncode == 0, second.stdout[-4000:]
    fleet.middleware_runs = (recap(first.stdout), recap(second.stdout))
    for h in fleet.m["hosts"]:
        fleetlab.card_insert(h, wait=10)
    before = {h["name"]: piv_card.apdu_count(h["card_dir"]) for h in fleet.m["hosts"]}
    t0 = time.monotonic()
    fleet.verify = fleet.playbook("verify.yml", "-e", CARD_VARS)
    fleet.verify_seconds = time.monotonic() - t0
    fleet.verify_apdus = {h["name"]: piv_card.apdu_count(h["card_dir"]) - before[h["name"]] for h in fleet.m["hosts"]}
    return fleet


def host(fleet, i=0):
    return fleet.m["hosts"][i]


def wrong_pins(fleet, name, n):
    for _ in range(n):
        fleet.sh(name, "pkcs11-tool --module %s --login --pin 0000 -O >/dev/null 2>&1" % OPENSC, check=False)


def test_middleware_installed_started_and_idempotent(cardfleet):
    first, second = cardfleet.middleware_runs
    for name in cardfleet.hosts:
        assert first[name]["changed"] >= 1 and first[name]["failed"] == 0
        assert second[name]["changed"] == 0, second
        out = cardfleet.sh(name, "dpkg-query -W -f='${Package} ${db:Status-Status}\\n' "
                                 "pcscd libccid opensc-pkcs11").stdout
        assert out.count(" installed") == 3, out
        assert cardfleet.sh(name, "pgrep -x pcscd", check=False).returncode == 0


def test_card_seen_through_pcscd_on_every_workstation(cardfleet):
    for h in cardfleet.m["hosts"]:
        out = cardfleet.sh(h["name"], "pkcs11-tool --module %s -L" % OPENSC).stdout
        assert "token manufacturer : piv_II" in out and "Virtual PCD" in out, out
        assert reader.listening(h["card_port"]) == ["127.0.0.1"]  # vpcd on loopback only (shared host network)


def test_test_login_through_pcscd_over_ssh(cardfleet):
    """verify.yml's real TLS test login with the card on every workstation: passes, the card itself signed."""
    run = cardfleet.verify
    assert run.returncode == 0, run.stdout[-4000:]
    assert run.stdout.count("Test login OK: JEAN DUPONT") == len(cardfleet.hosts), run.stdout[-4000:]
    for h in cardfleet.m["hosts"]:
        c = piv_card.counters(h["card_dir"])
        assert c["pin_tries_left"] == 3 and c["sign"] >= 1, c
        assert cardfleet.verify_apdus[h["name"]] > 0
    print("verify.yml with the card on %d hosts: %.1f s; APDUs per host %s"
          % (len(cardfleet.hosts), cardfleet.verify_seconds, cardfleet.verify_apdus))


def test_pkcs11_login_time_and_apdus_per_host(cardfleet):
    """The PKCS#11 part of the login alone (pkcs11_token_login, no TLS) over SSH with become: APDUs per host."""
    for h in cardfleet.m["hosts"]:
        n0, t0 = piv_card.apdu_count(h["card_dir"]), time.monotonic()
        rc, res = cardfleet.module(h["name"], "pkcs11_token_login", {
            "module": OPENSC, "token_label": piv_card.HOLDER, "pin": PIN, "url": ""})
        seconds, apdus = time.monotonic() - t0, piv_card.apdu_count(h["card_dir"]) - n0
        assert rc == 0 and res.get("logged_in") is True, res
        assert piv_card.counters(h["card_dir"])["pin_tries_left"] == 3
        print("%s: card login over SSH with become %.2f s (whole ansible call), %d APDUs" % (h["name"], seconds, apdus))


def test_unblock_over_ssh_spends_no_pin_try(cardfleet):
    h = host(cardfleet, -1)
    wrong_pins(cardfleet, h["name"], 3)
    before = piv_card.counters(h["card_dir"])
    assert before["pin_tries_left"] == 0
    rc, res = cardfleet.module(h["name"], "pkcs11_pin", {
        "module": OPENSC, "action": "unblock", "puk": PUK, "new_pin": "80521937", "new_pin_confirm": "80521937"})
    assert rc == 0 and res["changed"] is True, res
    after = piv_card.counters(h["card_dir"])
    assert after["pin_tries_left"] == 3 and after["verify"] == before["verify"]
    assert after["reset_retry"] == before["reset_retry"] + 1 and after["puk_tries_left"] == 3
    # an unblock on a key that is not blocked spends none either
    wrong_pins(cardfleet, h["name"], 1)
    before = piv_card.counters(h["card_dir"])
    rc, res = cardfleet.module(h["name"], "pkcs11_pin", {
        "module": OPENSC, "action": "unblock", "puk": PUK, "new_pin": PIN, "new_pin_confirm": PIN,
        "reject_weak": False})
    assert rc == 0, res
    after = piv_card.counters(h["card_dir"])
    assert after["pin_tries_left"] == 3 and after["verify"] == before["verify"]
    assert "80521937" not in str(res) and PUK not in str(res)


def test_pulling_the_card_is_seen_and_changes_nothing(cardfleet):
    h = host(cardfleet)
    before = piv_card.counters(h["card_dir"])
    assert fleetlab.card_pull(h)
    try:
        out = cardfleet.sh(h["name"], "pkcs11-tool --module %s -L" % OPENSC).stdout
        assert "(empty)" in out and "piv_II" not in out, out
    finally:
        fleetlab.card_insert(h, wait=10)
    out = cardfleet.sh(h["name"], "pkcs11-tool --module %s -L" % OPENSC).stdout
    assert "piv_II" in out
    assert piv_card.counters(h["card_dir"])["pin_tries_left"] == before["pin_tries_left"]


def login(fleet, h, pin=PIN):
    return fleet.module(h["name"], "pkcs11_token_login", {"module": OPENSC, "pin": pin, "url": "",
                                                          "fail_on_error": False})[1]


def test_card_states_each_said_with_what_to_do(cardfleet, tmp_path):
    """Reader without a card, pcscd not running, two cards, PIN blocked: each a distinct state and text."""
    h = host(cardfleet)
    assert fleetlab.card_pull(h)
    try:
        res = login(cardfleet, h)
        assert res["error"]["kind"] == "no_token" and res["error"]["card_state"] == "no_card", res["error"]
        assert "insert the key" in res["error"]["message"]
    finally:
        fleetlab.card_insert(h, wait=10)
    cardfleet.sh(h["name"], "service pcscd stop >/dev/null 2>&1; pkill -x pcscd; rm -f /run/pcscd/pcscd.comm",
                 check=False)
    try:
        res = login(cardfleet, h)
        assert res["error"]["card_state"] == "pcscd_not_running", res["error"]
        assert "start it" in res["error"]["message"]
    finally:
        cardfleet.sh(h["name"], "service pcscd start")
        fleetlab.card_insert(h, wait=10)
    # a second card in the reader's second slot (vpcd: port + 1): two keys, the same holder
    second = dict(h, card_dir=str(tmp_path / "card2"), card_port=h["card_port"] + 1)
    fleetlab.make_card(tmp_path / "card2", cardfleet.m["pki"])
    fleetlab.card_insert(second, wait=10)
    try:
        deadline = time.monotonic() + 10
        while "piv_II" not in cardfleet.sh(h["name"], "pkcs11-tool --module %s -L | sed -n '/Slot 1/,$p'"
                                           % OPENSC).stdout and time.monotonic() < deadline:
            time.sleep(0.3)
        res = login(cardfleet, h)
        assert res["error"]["kind"] == "several_tokens", res["error"]
        assert "one key at a time" in res["error"]["message"]
    finally:
        fleetlab.card_pull(second)
    # PIN blocked: said, nothing presented (the card's counters unchanged)
    wrong_pins(cardfleet, h["name"], 3)
    before = piv_card.counters(h["card_dir"])
    res = login(cardfleet, h)
    assert res["error"]["kind"] == "pin_locked" and "PUK" in res["error"]["message"], res["error"]
    assert piv_card.counters(h["card_dir"]) == before
    rc, res = cardfleet.module(h["name"], "pkcs11_pin", {"module": OPENSC, "action": "unblock", "puk": PUK,
                                                         "new_pin": PIN, "new_pin_confirm": PIN, "reject_weak": False})
    assert rc == 0 and piv_card.counters(h["card_dir"])["pin_tries_left"] == 3, res
