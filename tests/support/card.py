"""The lab's PIV card (lab/piv_card.py) in the vpcd reader of a pcscd of our own on this machine, for tests.

    with local_card(tmp_path) as card:
        card.pkcs11("-L")            # OpenSC's pkcs11-tool through pcscd
        card.counters()              # the card's own PIN/PUK counters (its state file)
        card.pull(); card.insert()   # stop / start the card process
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

from lab import piv_card, reader
from tests.support.ansible_run import ROOT

OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why_not():
    """None when this machine can run the local card (root, vpcd, OpenSC, no other pcscd), else why not."""
    if os.geteuid() != 0:
        return "pcscd's socket (/run/pcscd) needs root"
    if not os.path.exists(reader.VPCD_DRIVER):
        return "vsmartcard-vpcd is not installed (scripts/setup.sh installs it)"
    if not os.path.exists(OPENSC):
        return "OpenSC's opensc-pkcs11.so is not installed"
    return None


class LocalCard:
    def __init__(self, root, port):
        self.root = root
        self.port = port
        self.proc = None

    def insert(self, wait=True):
        n0 = self.apdus()
        self.proc = subprocess.Popen([sys.executable, "-m", "lab.piv_card", "run", str(self.root), "--port",
                                      str(self.port)], cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while wait and self.apdus() == n0 and "(empty)" in self.pkcs11("-L").stdout:
            assert time.monotonic() < deadline, "the card was not seen in the reader within 10s"
            time.sleep(0.1)

    def pull(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        time.sleep(0.5)  # pcscd polls the reader: a removal is seen within 0.4 s

    def counters(self):
        return piv_card.counters(self.root)

    def apdus(self):
        return piv_card.apdu_count(self.root)

    def pkcs11(self, *args, env=None):
        return subprocess.run(["pkcs11-tool", "--module", OPENSC, *args], capture_output=True, text=True,
                              timeout=60, env=env)


@contextlib.contextmanager
def local_card(tmp, holders=None, pki=None):
    tmp = str(tmp)
    root = os.path.join(tmp, "card")
    piv_card.create_card(root, holders, pki=pki)
    port = free_port()
    with reader.local_pcscd(os.path.join(tmp, "pcscd"), port):
        card = LocalCard(root, port)
        card.insert()
        try:
            yield card
        finally:
            card.pull()


# ---------------------------------------------------------------------------------------------- the card on the fleet
# The fleet's workstations provisioned for the card (tests/fleet/test_fleet_card_states.py, test_fleet_card_firefox.py):
# site.yml with the middleware on and the card's library as THE token library of every role (Firefox's `gem` module,
# policies.json, the test login), run once per fleet, with every card pulled out (a card inserted after provisioning
# is then the normal path, as on a workstation whose holder plugs the key in later).
FLEET_OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"  # lab.fleet.CARD_MODULE
FLEET_CARD_VARS = ("-e", json.dumps({"tokentrust_token_middleware_linux": True, "tokentrust_token_module": FLEET_OPENSC,
                                      "tokentrust_token_label": piv_card.HOLDER,
                                      "token_verify_pin": piv_card.DEFAULT_PIN}))


def provision_for_card(fleet):
    """site.yml on the fleet with the card as the key, the cards pulled out first; once per fleet (memoised on it).
    Returns the site.yml run."""
    from lab import fleet as fleetlab

    if getattr(fleet, "card_site_run", None) is None:
        for h in fleet.m["hosts"]:
            fleetlab.card_pull(h)
        fleet.card_site_run = fleet.playbook("site.yml", *FLEET_CARD_VARS)
    return fleet.card_site_run


def card_verify(fleet, report_dir, *args, limit=None):
    """verify.yml with the card (results saved in `report_dir`): (the run, {host: saved result})."""
    extra = ["-e", "token_verify_report_dir=%s" % report_dir]
    if limit:
        extra += ["--limit", limit]
    run = fleet.playbook("verify.yml", *FLEET_CARD_VARS, *extra, *args)
    saved = {}
    for h in fleet.hosts:
        path = os.path.join(str(report_dir), "%s.json" % h)
        if os.path.exists(path):
            with open(path) as f:
                saved[h] = json.load(f)
    return run, saved


def report_of(name, saved):
    """What the fleet report (module_utils/tokentrust_report.py, as library/fleet_report.py calls it) says of host
    `name` from its saved test-login result: (host model, its reasons as fleet_report returns them, the HTML page)."""
    from ansible.module_utils.tokentrust_report import build_report, reason_text, render_html

    report = build_report([{"name": name, "data": {"platform": "linux", "system": "Linux"}, "token": saved}], [])
    model = report["hosts"][0]
    texts = [reason_text(r) for r in model["reasons"] if r["level"] in ("failed", "unreachable", "warning")]
    return model, texts, render_html(report)


def second_card(host, card_dir, pki, holder=None):
    """A second card for `host`, in the second slot of its vpcd reader (vpcd opens port and port + 1: two readers,
    "Virtual PCD 00 00" and "00 01"), issued from the fleet's PKI; `holder` None: the same holder (the same label),
    else another holder's card (another label). Returns a host-like dict for lab.fleet.card_insert / card_pull."""
    from lab import build as labbuild
    from lab.pki import make_leaf

    chain = {e["name"]: labbuild._load_issued(e) for e in pki["cas"]}
    holders = None
    if holder:
        holders = [(make_leaf(holder, issuer=chain["Lab Advanced CA V3"], client=True, key_type="rsa"), 0x9A)]
    piv_card.create_card(card_dir, holders, pki=chain)
    return dict(host, card_dir=str(card_dir), card_port=host["card_port"] + 1)
