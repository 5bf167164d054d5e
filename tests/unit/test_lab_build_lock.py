"""lab/fleet.py's build_lock: Docker's images are the machine's, so two runs at once (make test's two lanes, a demo
beside the tests) must build each image once. Real processes and real flock(2), in a temporary HOME."""
import os
import subprocess
import sys
import time

import pytest

from lab import fleet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOLDER = """
import sys, time
from lab import fleet
with fleet.build_lock("img:1"):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
print("released", flush=True)
"""


def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path / ".cache" / "tokentrust" / "locks"


def test_a_second_builder_waits_for_the_first(tmp_path, monkeypatch):
    locks = _home(tmp_path, monkeypatch)
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=ROOT)
    first = subprocess.Popen([sys.executable, "-c", HOLDER, "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        said = []
        t0 = time.monotonic()
        with fleet.build_lock("img:1", said.append):
            waited = time.monotonic() - t0
            assert first.stdout.readline().strip() == "released"  # the first left its block before this one began
        assert waited >= 1.5, waited  # the first held it 2 s from before the second asked
        assert said == ["waiting for another run that is building img:1"]
    finally:
        first.kill()
        first.wait()
    assert (locks.stat().st_mode & 0o777) == 0o700
    assert sorted(os.listdir(locks)) == ["img_1.lock"]  # the name made safe for a file name


def test_a_free_lock_is_taken_without_a_word(tmp_path, monkeypatch):
    _home(tmp_path, monkeypatch)
    said = []
    with fleet.build_lock("a", said.append):
        pass
    with fleet.build_lock("a", said.append):  # released at the end of the block
        pass
    assert said == []


def test_a_symlink_in_place_of_the_lock_file_is_not_followed(tmp_path, monkeypatch):
    locks = _home(tmp_path, monkeypatch)
    locks.mkdir(parents=True, mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.symlink(target, locks / "x.lock")
    with pytest.raises(OSError):
        with fleet.build_lock("x"):
            pass
    assert target.read_text() == "keep"


def test_a_lock_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    locks = _home(tmp_path, monkeypatch)
    locks.mkdir(parents=True)
    os.chmod(locks, 0o777)
    with pytest.raises(fleet.FleetError, match="not this user's own folder"):
        with fleet.build_lock("x"):
            pass
