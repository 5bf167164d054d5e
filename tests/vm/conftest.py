"""The VM lab (lab/vm.py): one QEMU workstation booted for the VM tests and powered off at the end: Debian 12, or the
release TOKENTRUST_VM_SUITE names (bookworm, trixie: `make vm-test` runs both).

No skip on a machine that can run it: CI runs these (scripts/setup.sh installs QEMU and debootstrap; the image is
built once per recipe into .cache/vm/). A machine without root or QEMU fails them with the reason.
Select them with `pytest -m vm`.
"""
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from lab import piv_card
from lab import vm as vmlab
from tests.support import vm_early
from tests.support.ansible_run import BIN, ROOT, ansible_env
from tests.support.vm_early import SUITE  # TOKENTRUST_VM_SUITE, else Debian 12

VM_DIR = Path(ROOT) / "lab" / "build" / ("pytest-vm" if SUITE == vmlab.SUITE else "pytest-vm-" + SUITE)
# TOKENTRUST_VM_TEST_RUN: the folder of a VM already made by `python -m lab.vm create` to run the tests on (it is
# powered off and removed at the end, as the tests' own)
RUN_DIR = Path(os.environ.get("TOKENTRUST_VM_TEST_RUN") or VM_DIR / "run")
OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
# As the fleet's card tests (tests/support/card.py FLEET_CARD_VARS): the middleware on, the card's library the token
# library of every role, the card's label and PIN for the test login.
CARD_VARS = ("-e", json.dumps({"tokentrust_token_middleware_linux": True, "tokentrust_token_module": OPENSC,
                               "tokentrust_token_label": piv_card.HOLDER, "token_verify_pin": piv_card.DEFAULT_PIN}))


def recap(stdout):
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", stdout, re.M)}


class VM:
    def __init__(self, m):
        self.m = m
        self.name = m["name"]
        self.card_dir = m["card_dir"]
        self.times = {}

    def playbook(self, name, *args, timeout=1800):
        cmd = [os.path.join(BIN, "ansible-playbook"), "-i", self.m["inventory"], os.path.join("playbooks", name),
               "-e", "@" + self.m["lab_vars"], *CARD_VARS, *args]
        t0 = time.monotonic()
        p = subprocess.run(cmd, cwd=ROOT, env=ansible_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        p.seconds = round(time.monotonic() - t0, 1)
        return p

    def verify(self, report_dir, *args):
        """verify.yml with the card, its result saved in report_dir: (run, saved result of the VM or None)."""
        run = self.playbook("verify.yml", "-e", "token_verify_report_dir=%s" % report_dir, *args)
        path = Path(report_dir) / ("%s.json" % self.name)
        return run, (json.loads(path.read_text()) if path.exists() else None)

    def sh(self, script, user="root", check=True, timeout=300):
        return vmlab.ssh(self.m, script, user=user, check=check, timeout=timeout)

    def seat(self, script, timeout=300):
        return vmlab.seat_run(self.m, script, timeout=timeout)

    def wait_reader(self, want_card, timeout=60):
        """Until OpenSC (through pcscd) sees the USB reader with (or without) the card; returns opensc-tool -l."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.sh("opensc-tool -l 2>&1", check=False).stdout
            has_reader = "Gemalto" in out or "GemPC" in out or "433-Swap" in out
            card = bool(re.search(r"^\d+\s+Yes\s", out, re.M))
            if has_reader and card == want_card:
                return out
            assert time.monotonic() < deadline, "reader/card not as wanted (card=%s): %s" % (want_card, out)
            time.sleep(1)


@pytest.fixture(scope="session")
def vm():
    why = None
    if os.geteuid() != 0:
        why = "the VM image is built with debootstrap/chroot: run the VM tests as root"
    if why:
        pytest.fail(why)
    early = vm_early.wait()  # the image built beside the tests before these (tests/support/vm_early.py)
    if early:
        print("vm: image built early: %s" % early)
    try:
        m = vmlab.create(RUN_DIR, suite=SUITE, inventory=VM_DIR / "inventory", log=print)
    except vmlab.VMError as e:
        vmlab.destroy(RUN_DIR)  # nothing left running
        pytest.fail("the VM could not be made: %s" % e)
    v = VM(m)
    print("vm: image %s (%ss), boot to sshd %ss, systemd %s after %ss, %s" % (
        "built" if m.get("image_built") else "reused", m.get("image_seconds"), m.get("ssh_seconds"),
        m.get("system_state"), m.get("boot_seconds"), m["accel"]))
    try:
        yield v
    finally:
        vmlab.destroy(RUN_DIR)


@pytest.fixture(scope="session")
def provisioned(vm):
    """site.yml twice on the VM (the second must change nothing): once per session."""
    first = vm.playbook("site.yml")
    assert first.returncode == 0, first.stdout[-6000:]
    second = vm.playbook("site.yml")
    assert second.returncode == 0, second.stdout[-6000:]
    vm.times["site_first"], vm.times["site_second"] = first.seconds, second.seconds
    vm.site_runs = (first, second)
    return vm
