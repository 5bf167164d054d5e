"""molecule/windows: runs against a Windows VM given in TOKENTRUST_WIN_HOST, and never passes without one."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _molecule(env_extra, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRUST_WIN_")}
    env.update(PATH=BIN + os.pathsep + os.environ["PATH"], ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0",
               PY_COLORS="0", **env_extra)
    return subprocess.run([os.path.join(BIN, "molecule"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)


def test_windows_scenario_without_a_host_is_not_green():
    p = _molecule({}, "test", "-s", "windows")
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-4000:]
    assert "NOT RUN: no Windows host configured, nothing was tested" in out, out[-4000:]


@pytest.mark.skipif(not os.environ.get("TOKENTRUST_WIN_HOST"),
                    reason="no Windows VM: set TOKENTRUST_WIN_HOST/USER/PASSWORD (docs/windows.md) to run "
                           "molecule/windows against one; the Windows roles were NOT run against Windows")
def test_windows_scenario_on_a_vm():
    p = _molecule({k: v for k, v in os.environ.items() if k.startswith("TOKENTRUST_WIN_")}, "test", "-s", "windows")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert "idempotence" in out and "failed=0" in out
