"""`make demo`'s script end to end on a small lab in a temporary folder: every host green, the test login done,
and a second run that changes nothing on the hosts.

Fleet mode (`make demo` itself): 2 workstations, one Debian 12 and one Debian 13, each with its virtual PIV card in
a vpcd reader under the pcscd that site.yml installed (OpenSC from the distribution, registered as the library
resolved on the host; on Debian 13 pcscd is built with polkit). The card's own state file (on the controller) must
show the signature of the test login and no PIN try spent."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


@pytest.mark.slow
@pytest.mark.parametrize("mode", [
    "local",
    # `make demo` itself: workstation containers over SSH (lab/fleet.py), Debian 12 + 13, card keys
    pytest.param("fleet", marks=pytest.mark.fleet),
])
def test_demo_twice(tmp_path, mode):
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"), DEMO_HOSTS="2", NO_COLOR="1", DEMO_MODE=mode)
    try:
        first = subprocess.run([sys.executable, "scripts/demo.py"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=1800)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        rep = json.loads((tmp_path / "demo" / "reports" / "fleet.json").read_text())
        assert [h["status"] for h in rep["hosts"]] == ["ok", "ok"], rep["hosts"]
        assert all(h["token"]["status"] == "ok" and h["token"]["holder"] == "JEAN DUPONT" for h in rep["hosts"])
        assert rep["summary"]["profiles"] >= 2 and rep["summary"]["profiles_ok"] == rep["summary"]["profiles"]
        assert (tmp_path / "demo" / "reports" / "fleet.html").exists()
        assert "hosts 2: 2 fine" in first.stdout and "test login 2 ok" in first.stdout
        if mode == "fleet":
            from lab import piv_card

            m = json.loads((tmp_path / "demo" / "lab" / "fleet.json").read_text())
            assert [h["release"] for h in m["hosts"]] == ["bookworm", "trixie"], m["hosts"]
            assert m["key"] == "card"
            signs = {}
            for h in m["hosts"]:
                c = piv_card.counters(h["card_dir"])
                assert c["pin_tries_left"] == 3 and c["sign"] >= 1, (h["name"], c)  # the card signed the login
                signs[h["name"]] = c["sign"]
                # what site.yml installed is what the profiles registered: OpenSC from the distribution
                out = subprocess.run(["docker", "exec", h["container"], "sh", "-c",
                                      "dpkg-query -W -f='${Package} ${Status}\\n' pcscd opensc-pkcs11; "
                                      "grep -h library= /home/alice/.mozilla/firefox/*/pkcs11.txt"],
                                     capture_output=True, text=True, timeout=60).stdout
                assert out.count("install ok installed") == 2, out
                assert "library=%s" % OPENSC in out, out
            assert "Debian 12" in first.stdout and "Debian 13" in first.stdout
        second = subprocess.run([sys.executable, "scripts/demo.py"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=1800)
        assert second.returncode == 0, second.stdout[-4000:]
        assert "no change on the hosts" in second.stdout, second.stdout
        if mode == "local":
            assert "(nothing to do)" in second.stdout  # the lab was reused
        else:
            assert "over SSH on 127.0.0.1" in first.stdout and "reused" in second.stdout, second.stdout[:2000]
            for h in m["hosts"]:  # the second test login signed again with the card
                assert piv_card.counters(h["card_dir"])["sign"] > signs[h["name"]]
    finally:
        if mode == "local":
            subprocess.run([sys.executable, "-m", "lab.build", "destroy", "--dir", str(tmp_path / "demo" / "lab"),
                            "--inventory", str(tmp_path / "demo" / "inventory")], cwd=ROOT, capture_output=True)
        else:
            subprocess.run([sys.executable, "-m", "lab.fleet", "destroy", "--dir", str(tmp_path / "demo" / "lab")],
                           cwd=ROOT, capture_output=True)
