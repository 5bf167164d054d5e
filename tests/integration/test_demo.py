"""`make demo`'s script end to end on a small lab in a temporary folder: every host green, the test login done,
and a second run that changes nothing on the hosts."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [
    "local",
    # `make demo` itself: workstation containers over SSH (lab/fleet.py)
    pytest.param("fleet", marks=pytest.mark.fleet),
])
def test_demo_twice(tmp_path, mode):
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"), DEMO_HOSTS="2", NO_COLOR="1", DEMO_MODE=mode)
    try:
        first = subprocess.run([sys.executable, "scripts/demo.py"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=900)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        rep = json.loads((tmp_path / "demo" / "reports" / "fleet.json").read_text())
        assert [h["status"] for h in rep["hosts"]] == ["ok", "ok"], rep["hosts"]
        assert all(h["token"]["status"] == "ok" and h["token"]["holder"] == "JEAN DUPONT" for h in rep["hosts"])
        assert rep["summary"]["profiles"] >= 2 and rep["summary"]["profiles_ok"] == rep["summary"]["profiles"]
        assert (tmp_path / "demo" / "reports" / "fleet.html").exists()
        assert "hosts 2: 2 fine" in first.stdout and "test login 2 ok" in first.stdout
        second = subprocess.run([sys.executable, "scripts/demo.py"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=900)
        assert second.returncode == 0, second.stdout[-4000:]
        assert "no change on the hosts" in second.stdout, second.stdout
        if mode == "local":
            assert "(nothing to do)" in second.stdout  # the lab was reused
        else:
            assert "over SSH on 127.0.0.1" in first.stdout and "reused" in second.stdout, second.stdout[:2000]
    finally:
        if mode == "local":
            subprocess.run([sys.executable, "-m", "lab.build", "destroy", "--dir", str(tmp_path / "demo" / "lab"),
                            "--inventory", str(tmp_path / "demo" / "inventory")], cwd=ROOT, capture_output=True)
        else:
            subprocess.run([sys.executable, "-m", "lab.fleet", "destroy", "--dir", str(tmp_path / "demo" / "lab")],
                           cwd=ROOT, capture_output=True)
