"""molecule/firefox_restart on the container fleet (lab/fleet.py), over SSH with become: create the containers,
converge site.yml, start real Firefox as the users (issue 10, item 4), idempotence (zero changes), verify with
certutil/modutil of Firefox's NSS inside the containers, destroy. Its playbooks are molecule/default's: the default
scenario is the same run without Firefox, checked to be so here rather than run a second time."""
import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def molecule_env():
    return dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], ANSIBLE_NOCOLOR="1", NO_COLOR="1",
                ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")


def molecule(scenario):
    p = subprocess.run([os.path.join(BIN, "molecule"), "test", "-s", scenario], cwd=ROOT, env=molecule_env(),
                       capture_output=True, text=True, timeout=1800)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert re.search(r"idempotence.*Executed: Successful", out), out[-3000:]
    # the converge changed the three workstations over SSH, the verify step checked them
    recaps = re.findall(r"(fleet-ws-0\d)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=0", out)
    assert {h for h, _, c in recaps if int(c) > 0} == {"fleet-ws-01", "fleet-ws-02", "fleet-ws-03"}, recaps
    return out


def _scenario(name):
    with open(os.path.join(ROOT, "molecule", name, "molecule.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_molecule_default_is_firefox_restart_without_its_side_effect():
    """make test runs molecule/firefox_restart in full (below): the default scenario's own playbooks, its fleet and
    its checks, plus Firefox started between converge and idempotence. So the default scenario is not run a second
    time (about 75 s); this proves that nothing else differs, and molecule itself accepts the default's config."""
    default, restart = _scenario("default"), _scenario("firefox_restart")
    assert restart["platforms"] == default["platforms"] and restart["driver"] == default["driver"]
    seq = list(default["scenario"]["test_sequence"])
    seq.insert(seq.index("converge") + 1, "side_effect")
    assert restart["scenario"]["test_sequence"] == seq
    plays = restart["provisioner"].pop("playbooks")
    assert plays.pop("side_effect") == "side_effect.yml"
    assert plays == {k: "../default/" + v for k, v in default["provisioner"].pop("playbooks").items()}

    def same(prov):  # the fleet's folder is the scenario's own: the only other difference
        return yaml.safe_load(yaml.safe_dump(prov).replace("molecule-fleet-restart", "molecule-fleet"))
    assert same(restart["provisioner"]) == same(default["provisioner"])
    p = subprocess.run([os.path.join(BIN, "molecule"), "syntax", "-s", "default"], cwd=ROOT, env=molecule_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "converge.yml" in p.stdout + p.stderr


@pytest.mark.slow
@pytest.mark.fleet
def test_molecule_firefox_started_between_converge_and_idempotence():
    out = molecule("firefox_restart")
    assert "Verify | Each CA is listed with its trust" in out  # molecule/default's verify.yml
    assert out.count("Firefox as alice and bob") >= 1 and "changed: [localhost] => (item=['fleet-ws-03', 'bob'])" in out
    assert not os.path.exists(os.path.join(ROOT, "lab", "build", "molecule-fleet-restart", "run"))
