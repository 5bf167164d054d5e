"""Issue 22 over SSH with become: a workstation user's own PKCS#11 library, listed in their pkcs11.txt, against
nss_provision and nss_info run as root on the fleet (the same attack as tests/hostile/test_user_code.py on the
folder lab). The library logs to the user's home when it is loaded and writes a forged result with ansible_facts
into every descriptor it holds; it must never run.
"""
import base64
import os
import subprocess

import pytest

from lab import fleet as fleetlab
from tests.hostile.test_user_code import EVIL_C, PASSWORD

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


def test_planted_library_never_runs_over_ssh(fleet, tmp_path):
    host = fleet.hosts[-1]  # an even host: python3-cffi in the image
    fleetlab.reset_host(fleet.m, host)  # fresh profiles, whatever other fleet tests provisioned there
    log = "/home/alice/evil.log"
    src = tmp_path / "helper.c"
    src.write_text(EVIL_C)
    lib = tmp_path / "libhelper.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-DLOG=\"%s\"" % log, "-DPW=\"%s\"" % PASSWORD, "-o", str(lib),
                    str(src)], check=True)
    planted = "/home/alice/lib/libhelper.so"
    fleet.sh(host, "mkdir -p /home/alice/lib && echo %s | base64 -d > %s" % (
        base64.b64encode(lib.read_bytes()).decode(), planted), user="alice")
    profiles = fleet.profiles(host)["alice"]
    assert profiles
    for prof in profiles:
        fleet.sh(host, "printf 'library=%s\\nname=helper\\n\\n' >> '%s/pkcs11.txt'" % (planted, prof), user="alice")
    certs = []
    for ca in fleet.m["pki"]["cas"]:
        with open(ca["path"]) as f:
            certs.append({"name": "Hostile " + ca["name"], "content": f.read(),
                          "trust": "C,," if ca["subject"] == ca["issuer"] else ",,"})
    _, res = fleet.module(host, "nss_provision", {"users": ["alice", "bob"], "certificates": certs,
                                                  "module_library": OPENSC, "password": PASSWORD})
    assert fleet.sh(host, "cat %s 2>/dev/null || true" % log).stdout == "", "the user's library ran as part of the run"
    assert "ansible_facts" not in res and "forged" not in res, res
    assert not res.get("failed") and res["changed"] is True, res
    assert {d["path"] for d in res["databases"]} >= set(profiles)
    _, info = fleet.module(host, "nss_info", {"databases": profiles})
    assert fleet.sh(host, "cat %s 2>/dev/null || true" % log).stdout == "", "nss_info loaded the user's library"
    assert "ansible_facts" not in info and "forged" not in info
    for d in info["databases"]:
        assert {m["name"]: m["library"] for m in d["modules"]} == {"helper": planted, "gem": OPENSC}, d
    for prof in profiles:  # read back as text inside the container (modutil would load the user's library)
        names = fleet.sh(host, "grep '^name=' '%s/pkcs11.txt'" % prof).stdout.split("\n")
        assert [n for n in names if n] == ["name=NSS Internal PKCS #11 Module", "name=helper", "name=gem"], names
    fleetlab.reset_host(fleet.m, host)  # the next fleet test gets a clean workstation
    assert os.path.exists(str(lib))
