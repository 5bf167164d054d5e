"""The key as it really is, on the fleet: each workstation's PIV card (lab/piv_card.py, a process on the controller)
in Debian's vpcd reader under the pcscd that token_middleware_linux installed, OpenSC as middleware, our modules
over SSH with become. Counters are read from the card's state file on the controller, never from our report.

Pulling / inserting the card = stopping / starting its process (lab.fleet card_pull / card_insert).
"""
import time

import pytest

from lab import fleet as fleetlab
from lab import piv_card, reader
from tests.fleet.conftest import recap

pytestmark = [pytest.mark.fleet, pytest.mark.slow]
OPENSC = fleetlab.CARD_MODULE
PIN, PUK = piv_card.DEFAULT_PIN, piv_card.DEFAULT_PUK


@pytest.fixture(scope="module")
def cardfleet(fleet):
    """The fleet after token_middleware_linux (first run: installs; second run: nothing to change)."""
    first = fleet.playbook("firefox.yml", "--tags", "token_middleware_linux")
    assert first.returncode == 0, first.stdout[-4000:]
    second = fleet.playbook("firefox.yml", "--tags", "token_middleware_linux")
    assert second.returncode == 0, second.stdout[-4000:]
    fleet.middleware_runs = (recap(first.stdout), recap(second.stdout))
    for h in fleet.m["hosts"]:
        fleetlab.card_insert(h, wait=10)
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
    h = host(cardfleet)
    n0, t0 = piv_card.apdu_count(h["card_dir"]), time.monotonic()
    rc, res = cardfleet.module(h["name"], "pkcs11_token_login", {
        "module": OPENSC, "token_label": piv_card.HOLDER, "pin": PIN, "url": ""})
    seconds = time.monotonic() - t0
    apdus = piv_card.apdu_count(h["card_dir"]) - n0
    assert rc == 0 and res.get("logged_in") is True, res
    c = piv_card.counters(h["card_dir"])
    assert c["pin_tries_left"] == 3
    print("card login over SSH with become: %.2f s, %d APDUs" % (seconds, apdus))


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
