"""The lab's PIV card (lab/piv_card.py) in the vpcd reader of a pcscd of our own on this machine, for tests.

    with local_card(tmp_path) as card:
        card.pkcs11("-L")            # OpenSC's pkcs11-tool through pcscd
        card.counters()              # the card's own PIN/PUK counters (its state file)
        card.pull(); card.insert()   # stop / start the card process
"""
import contextlib
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
