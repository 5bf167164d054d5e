"""The lab's PIV card (lab/piv_card.py) through the real stack on this machine: pcscd + Debian's vsmartcard-vpcd
reader + OpenSC's PIV driver (opensc-pkcs11.so), driven with OpenSC's own pkcs11-tool. Counters are read from the
card's state file."""
import time

import pytest

from lab import piv_card, reader
from tests.support.card import local_card, why_not

pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not() is not None, reason=str(why_not()))]


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    with local_card(tmp_path_factory.mktemp("card")) as c:
        yield c


def test_opensc_accepts_the_card_as_is(card):
    t0 = time.monotonic()
    out = card.pkcs11("-L")
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 1.0  # TCP_NODELAY/QUICKACK: without them, 1.4 s
    assert "token manufacturer : piv_II" in out.stdout and "Virtual PCD" in out.stdout
    objs = card.pkcs11("-O").stdout
    assert "Certificate for PIV Authentication" in objs and "Certificate for Digital Signature" in objs
    state = piv_card.load_state(card.root)
    assert sorted(state["keys"]) == ["9A", "9C"]  # the manual's double certificate


def test_login_and_signatures_through_pcscd(card):
    before = card.counters()
    run = card.pkcs11("--login", "--pin", piv_card.DEFAULT_PIN, "--test")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    after = card.counters()
    assert after["sign"] > before["sign"]  # the card itself signed (GENERAL AUTHENTICATE)
    assert after["pin_tries_left"] == 3 and after["verify_wrong"] == before["verify_wrong"]


def test_vpcd_listens_on_loopback_only(card):
    assert reader.listening(card.port) == ["127.0.0.1"]


def test_wrong_pin_counts_on_the_card_and_pulling_changes_nothing(card):
    run = card.pkcs11("--login", "--pin", "9999", "-O")
    assert run.returncode != 0 and "CKR_PIN_INCORRECT" in run.stderr
    assert card.counters()["pin_tries_left"] == 2
    card.pull()
    assert "(empty)" in card.pkcs11("-L").stdout  # pcscd saw the removal
    assert card.pkcs11("--login", "--pin", piv_card.DEFAULT_PIN, "-O").returncode != 0
    assert card.counters()["pin_tries_left"] == 2
    card.insert()
    assert card.counters()["pin_tries_left"] == 2  # persisted: the card remembers
    info = card.pkcs11("-T").stdout
    assert "token initialized" in info
    assert card.pkcs11("--login", "--pin", piv_card.DEFAULT_PIN, "-O").returncode == 0
    assert card.counters()["pin_tries_left"] == 3  # a right PIN resets the counter, on the card
