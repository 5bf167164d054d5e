"""The container fleet (lab/fleet.py), brought up once for the fleet tests and removed at the end.

No skip: CI runs these (scripts/setup.sh installs Docker and starts it); a machine without a Docker daemon
fails them with the reason. TOKENTRUST_FLEET_HOSTS sets the fleet size (default 2: CI's budget).
"""
import json
import os
import re
import subprocess

import pytest

from lab import fleet as fleetlab
from tests.support.ansible_run import BIN, ROOT, ansible_env
from tests.support.nsstools import parse_certutil_list

FIREFOX_NSS = "/usr/lib/firefox-esr"  # Debian's firefox-esr ships its own libnss3: the one Firefox reads with


def recap(stdout):
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", stdout, re.M)}


class Fleet:
    def __init__(self, manifest):
        self.m = manifest
        self.inventory = manifest["inventory"]
        self.lab_vars = manifest["lab_vars"]
        self.hosts = [h["name"] for h in manifest["hosts"]]

    def playbook(self, name, *args, inventory=None, timeout=900, env=None):
        cmd = [os.path.join(BIN, "ansible-playbook"), "-i", inventory or self.inventory,
               os.path.join("playbooks", name), "-e", "@" + self.lab_vars, *args]
        return subprocess.run(cmd, cwd=ROOT, env=ansible_env(**(env or {})), capture_output=True, text=True,
                              timeout=timeout)

    def module(self, host, name, args):
        """One module call over SSH with become (`ansible HOST -b -m NAME`): its rc and the host's result."""
        run = subprocess.run([os.path.join(BIN, "ansible"), host, "-i", self.inventory, "-b", "-m", name, "-a",
                              json.dumps(args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=ansible_env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json"))
        out = json.loads(run.stdout[run.stdout.index("{"):])
        return run.returncode, out["plays"][0]["tasks"][0]["hosts"][host]

    def sh(self, host, script, user="root", check=True):
        return fleetlab.exec_in(self.m, host, ["sh", "-c", script], user=user, check=check)

    def profiles(self, host):
        """{user: [profile dirs with a cert9.db]} inside the container."""
        out = self.sh(host, "ls -d /home/*/.mozilla/firefox/*/cert9.db /home/*/.config/mozilla/firefox/*/cert9.db"
                            " 2>/dev/null || true").stdout.split()
        res = {}
        for p in out:
            res.setdefault(p.split("/")[2], []).append(os.path.dirname(p))
        return res

    def certutil(self, host, profile):
        """{nickname: trust} from `certutil -L` with Firefox's NSS, inside the container."""
        return parse_certutil_list(
            self.sh(host, "LD_LIBRARY_PATH=%s certutil -L -d sql:'%s'" % (FIREFOX_NSS, profile)).stdout)

    def modutil(self, host, profile):
        """{module name: library} from `modutil -list` with Firefox's NSS, inside the container."""
        out = self.sh(host, "LD_LIBRARY_PATH=%s modutil -list -dbdir sql:'%s' </dev/null"
                      % (FIREFOX_NSS, profile)).stdout
        mods, name = {}, None
        for line in out.splitlines():
            m = re.match(r"^\s*\d+\.\s+(.*\S)\s*$", line)
            if m:
                name = m.group(1)
                mods[name] = None
            m = re.match(r"^\s*library name:\s+(.*\S)\s*$", line)
            if m and name:
                mods[name] = m.group(1)
        return mods

    def firefox(self, host, user):
        fleetlab.start_firefox(self.m, host, user)

    def read_json(self, host, path):
        return json.loads(self.sh(host, "cat '%s'" % path).stdout)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    why = fleetlab.docker_ready()
    if why:
        pytest.fail("the fleet tests need Docker: " + why)
    d = tmp_path_factory.mktemp("fleet")
    run = d / "run"
    m = fleetlab.create(run, hosts=int(os.environ.get("TOKENTRUST_FLEET_HOSTS", "2")), inventory=d / "inventory")
    try:
        yield Fleet(m)
    finally:
        fleetlab.destroy(run)
