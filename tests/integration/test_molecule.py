"""molecule/default and molecule/firefox_restart on the container fleet (lab/fleet.py), over SSH with become:
create the containers, converge site.yml, idempotence (zero changes), verify with certutil/modutil of Firefox's
NSS inside the containers, destroy. firefox_restart starts real Firefox as the users between converge and
idempotence (issue 10, item 4)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def molecule(scenario):
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], ANSIBLE_NOCOLOR="1", NO_COLOR="1",
               ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
    p = subprocess.run([os.path.join(BIN, "molecule"), "test", "-s", scenario], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert re.search(r"idempotence.*Executed: Successful", out), out[-3000:]
    # the converge changed the three workstations over SSH, the verify step checked them
    recaps = re.findall(r"(fleet-ws-0\d)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=0", out)
    assert {h for h, _, c in recaps if int(c) > 0} == {"fleet-ws-01", "fleet-ws-02", "fleet-ws-03"}, recaps
    return out


@pytest.mark.slow
@pytest.mark.fleet
def test_molecule_default_scenario():
    out = molecule("default")
    assert "Verify | Each CA is listed with its trust" in out
    assert not os.path.exists(os.path.join(ROOT, "lab", "build", "molecule-fleet", "run")), "destroy left the fleet"


@pytest.mark.slow
@pytest.mark.fleet
def test_molecule_firefox_started_between_converge_and_idempotence():
    out = molecule("firefox_restart")
    assert out.count("Firefox as alice and bob") >= 1 and "changed: [localhost] => (item=['fleet-ws-03', 'bob'])" in out
    assert not os.path.exists(os.path.join(ROOT, "lab", "build", "molecule-fleet-restart", "run"))
