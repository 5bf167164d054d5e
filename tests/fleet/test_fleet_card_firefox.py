"""Issue 18, item 7: real Firefox ESR in a fleet workstation, as the key holder's user (alice), logs in to the test page
with the virtual card through pcscd and OpenSC, as OUR roles registered it, after site.yml.

The flow is the folder lab's proof (tests/integration/test_browser_login.py) moved into the workstation: site.yml
(middleware on, the card's library as the token library: Firefox's `gem` module is OpenSC's opensc-pkcs11.so, in the
profile and in policies.json), then Firefox ESR inside the container (`docker exec -u alice`, headless, Marionette on
127.0.0.1: the containers share this machine's network) opens the test page (lab/testpage.py on the controller's
127.0.0.1), which asks for a client certificate. Firefox picks the certificate by itself
(security.default_personal_cert = "Select Automatically"), asks for the card's PIN with ITS OWN prompt; the PIN is typed
into that prompt from chrome context (no policy or preference gives Firefox the PIN: an observer of
"common-dialog-loaded" fills the dialog's password box, tests/support/firefox.py TYPE_PIN_INTO_PROMPT).

Asserted from outside Firefox: the test page's log (the server side) saw the card's authentication certificate (key
9A: its SHA-256 and serial read from the card's own file on the controller) and answered "valid"; the card's APDU log
grew and its signature counter rose (the card itself signed the handshake); no PIN try was spent.
"""
import time

import pytest

from lab import fleet as fleetlab
from lab import piv_card
from lab.testpage import read_log
from tests.support.card import FLEET_OPENSC, provision_for_card
from tests.support.firefox import LIST_MODULES, TYPE_PIN_INTO_PROMPT, ContainerFirefox

pytestmark = [pytest.mark.fleet, pytest.mark.slow, pytest.mark.firefox]
USER = fleetlab.CARD_HOLDER_USER


def _auth_certificate(card_dir):
    """The card's PIV Authentication certificate (key 9A), from the card's own file: (SHA-256, serial in hex)."""
    import base64

    from cryptography import x509

    k = piv_card.load_state(card_dir)["keys"]["9A"]
    cert = x509.load_der_x509_certificate(base64.b64decode(k["cert"]))
    return k["sha256"].replace(":", "").upper(), format(cert.serial_number, "X")


def test_firefox_as_the_holder_logs_in_with_the_card_through_pcscd(fleet, tmp_path):
    from marionette_driver import By, Wait

    site = provision_for_card(fleet)
    assert site.returncode == 0, site.stdout[-4000:]
    h = fleet.m["hosts"][0]
    name = h["name"]
    fleetlab.card_insert(h, wait=10)
    profile = sorted(p for p in fleet.profiles(name)[USER] if not p.endswith("work2"))[0]  # the install's default
    # what our roles registered in alice's profile: the module `gem` is the OpenSC library (Firefox's own NSS)
    assert fleet.modutil(name, profile).get("gem") == FLEET_OPENSC
    url = fleet.m["testpage"]["url"]
    log = fleet.m["testpage"]["log"]
    seen_before = len(read_log(log))
    apdus0, c0 = piv_card.apdu_count(h["card_dir"]), piv_card.counters(h["card_dir"])

    with ContainerFirefox(h["container"], profile, USER, log=str(tmp_path / "firefox.log"),
                          extra_prefs={"security.default_personal_cert": "Select Automatically"}) as ff:
        c = ff.client
        c.delete_session()
        c.start_session({"unhandledPromptBehavior": "ignore"})  # the card's PIN prompt is ours to answer
        with c.using_context("chrome"):
            modules = c.execute_script(LIST_MODULES)
            # two answers at most: a second prompt would be the signature key's PIN-always (9C), counted below
            c.execute_script(TYPE_PIN_INTO_PROMPT, script_args=[piv_card.DEFAULT_PIN, 2])
        c.timeout.page_load = 60
        t0 = time.monotonic()
        c.navigate(url)
        Wait(c, timeout=60).until(lambda m: m.execute_script("return !!document.getElementById('holder')"),
                                  message="no holder on %s: %s" % (url, c.get_url()))
        seconds = time.monotonic() - t0
        holder = c.find_element(By.ID, "holder").text
        status = c.find_element(By.ID, "status").get_attribute("data-status")
        with c.using_context("chrome"):
            prompt = c.execute_script("return Services.prefs.getStringPref('tokentrust.test.prompt', '')")
            prompts = c.execute_script("return Services.prefs.getIntPref('tokentrust.test.prompts', 0)")

    gem = [m for m in modules if m[0] == "gem"]
    assert gem and gem[0][1] == FLEET_OPENSC and piv_card.HOLDER in gem[0][2], modules  # the card, in Firefox
    assert holder == piv_card.HOLDER and status == "valid", (holder, status)
    assert piv_card.HOLDER in prompt and prompts == 1, (prompt, prompts)  # Firefox's own prompt, once
    # the server's side: the card's authentication certificate was presented and found valid
    sha256, serial = _auth_certificate(h["card_dir"])
    new = read_log(log)[seen_before:]
    valid = [e for e in new if e.get("status") == "valid"]
    assert valid, new
    assert valid[-1]["sha256"].replace(":", "").upper() == sha256 and valid[-1]["serial"] == serial, valid[-1]
    # the card's side: it was talked to, and it signed
    c1 = piv_card.counters(h["card_dir"])
    apdus = piv_card.apdu_count(h["card_dir"]) - apdus0
    assert apdus > 0 and c1["sign"] > c0["sign"], (apdus, c0, c1)
    assert c1["pin_tries_left"] == c1["pin_tries_max"] and c1["verify_wrong"] == c0["verify_wrong"]
    print("%s: Firefox ESR as %s, test page with the card through pcscd: %.1f s, %d APDUs, %d signature(s)"
          % (name, USER, seconds, apdus, c1["sign"] - c0["sign"]))
