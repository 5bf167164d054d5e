"""The real-browser proof (issue 5, item 5): Firefox ESR, headless, on a profile provisioned by OUR roles (ca.yml +
firefox.yml against a lab built for this test), logs in to the lab test page with the token and shows the holder.

The flow is the user's: Firefox opens the page, the server asks for a client certificate, Firefox picks it by
itself (security.default_personal_cert = "Select Automatically"), needs the token's PIN and shows ITS OWN prompt
("Please authenticate to the security device (CERTEUROPE LAB)."); the PIN is typed into that prompt from chrome
context (an observer of "common-dialog-loaded" fills the password box and accepts the dialog: Marionette's own
prompt commands do not support password prompts). Run: .venv/bin/pytest tests/integration/test_browser_login.py
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support.firefox import TYPE_PIN_INTO_PROMPT
from tests.support.token_lab import BIN, PYTHON, ROOT, ansible_env

pytestmark = [
    pytest.mark.firefox,
    pytest.mark.skipif(not shutil.which("firefox-esr"), reason="needs firefox-esr"),
    pytest.mark.skipif(not shutil.which("softhsm2-util"), reason="needs softhsm2"),
]

@pytest.fixture()
def lab(tmp_path):
    run, inv = tmp_path / "lab", tmp_path / "inventory"
    proc = subprocess.run([PYTHON, "-m", "lab.build", "create", "--hosts", "1", "--dir", str(run), "--inventory",
                           str(inv)], cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        yield json.loads((run / "lab.json").read_text()), inv
    finally:
        subprocess.run([PYTHON, "-m", "lab.build", "destroy", "--dir", str(run), "--inventory", str(inv)],
                       cwd=str(ROOT), capture_output=True, timeout=120)


def test_firefox_logs_in_to_the_test_page_with_the_token(lab, tmp_path):
    from marionette_driver import By, Wait

    from lab.testpage import read_log
    from lab.token import LabToken
    from tests.support.firefox import Firefox

    manifest, inv = lab
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), "playbooks/ca.yml", "playbooks/firefox.yml"],
                          cwd=str(ROOT), capture_output=True, text=True, env=ansible_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    profile = [p for p in manifest["hosts"][0]["profiles"] if p["databases"]][0]["path"]
    tok = LabToken.load(manifest["token"]["root"])
    url = manifest["testpage"]["url"]

    with Firefox(profile, extra_prefs={"security.default_personal_cert": "Select Automatically"},
                 log=str(tmp_path / "firefox.log")) as ff:
        c = ff.client
        c.delete_session()
        c.start_session({"unhandledPromptBehavior": "ignore"})  # the token prompt is ours to answer
        with c.using_context("chrome"):
            modules = c.execute_script("""
              const mdb = Cc["@mozilla.org/security/pkcs11moduledb;1"].getService(Ci.nsIPKCS11ModuleDB);
              return mdb.listModules().then(ms => ms.map(m => [m.name, m.libName, m.slots.map(s => s.tokenName)]));""")
            # one prompt at most: a second would be a wrong PIN
            c.execute_script(TYPE_PIN_INTO_PROMPT, script_args=[tok.pin, 1])
        # the module our firefox_nss role registered, with the token in it
        assert ["gem", str(tok.module), ["CERTEUROPE LAB"]] in modules
        c.timeout.page_load = 30
        c.navigate(url)
        Wait(c, timeout=20).until(lambda m: m.execute_script("return !!document.getElementById('holder')"),
                                  message="no holder on %s: %s" % (url, c.get_url()))
        holder = c.find_element(By.ID, "holder").text
        status = c.find_element(By.ID, "status").get_attribute("data-status")
        expiry = c.find_element(By.ID, "expiry").text
        with c.using_context("chrome"):
            prompt = c.execute_script("return Services.prefs.getStringPref('tokentrust.test.prompt', '')")
            prompts = c.execute_script("return Services.prefs.getIntPref('tokentrust.test.prompts', 0)")

    assert holder == "JEAN DUPONT" and status == "valid" and "expire" in expiry
    assert prompt == "Please authenticate to the security device (CERTEUROPE LAB)." and prompts == 1
    # the server's record: the certificate came from the token
    valid = [e for e in read_log(manifest["testpage"]["log"]) if e.get("status") == "valid"]
    assert valid and valid[-1]["holder"] == "JEAN DUPONT"
    assert valid[-1]["sha256"] in {o.sha256 for o in tok.objects}
    assert tok.counters() == (0, 0)  # one right PIN, no wrong attempt
