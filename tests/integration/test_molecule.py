"""molecule/default: create the lab, converge site.yml, idempotence (zero changes), verify with certutil/modutil."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


@pytest.mark.slow
def test_molecule_default_scenario():
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], ANSIBLE_NOCOLOR="1", NO_COLOR="1",
               ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
    p = subprocess.run([os.path.join(BIN, "molecule"), "test", "-s", "default"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert re.search(r"idempotence.*Executed: Successful", out), out[-3000:]
    # the converge changed the three workstations, the verify step checked them
    recaps = re.findall(r"(lab-ws-0\d)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=0", out)
    assert {h for h, _, c in recaps if int(c) > 0} == {"lab-ws-01", "lab-ws-02", "lab-ws-03"}, recaps
    assert not os.path.exists(os.path.join(ROOT, "lab", "build", "molecule", "run")), "destroy left the lab behind"
