"""The benchmarks run in CI at a small size: they must complete and end with a parseable `ratio: X` line.

Speed itself is not asserted here (no timers in tests): the figures in README come from full-size runs.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_bench(*args):
    p = subprocess.run([sys.executable] + list(args), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"ratio: (\d+(?:\.\d+)?)", last)
    assert m, p.stdout
    return p.stdout, float(m.group(1))


def test_nss_apply_small():
    out, ratio = run_bench("bench/nss_apply.py", "5")
    assert "profiles: 5, certificates: 4, modules: 1" in out
    assert ratio > 0


@pytest.mark.slow
def test_site_small():
    out, ratio = run_bench("bench/site.py", "2", "1")
    # both sides provisioned the hosts on their first run; ours changed nothing on its second run
    ours = re.search(r"tokentrust site.yml\s+first run\s+[\d.]+ s \(changed=(\d+)\)\s+second run\s+[\d.]+ s "
                     r"\(changed=(\d+)\)", out)
    assert ours and int(ours.group(1)) > 0 and int(ours.group(2)) == 0, out
    assert re.search(r"naive certutil/modutil role\s+first run\s+[\d.]+ s \(changed=[1-9]", out), out
    assert ratio > 0
    assert not os.path.exists(os.path.join(ROOT, "lab", "build", "bench", "run")), "the bench left its lab behind"


@pytest.mark.slow
@pytest.mark.fleet
def test_fleet_mode_over_ssh_small():
    out, ratio = run_bench("bench/fleet.py", "--fleet", "2", "--rounds", "1")
    assert "fleet: 2 containers over SSH on 127.0.0.1" in out
    ours = re.search(r"tokentrust roles\s+first run\s+[\d.]+ s \(changed=(\d+)\)\s+second run\s+[\d.]+ s "
                     r"\(changed=(\d+)\)", out)
    assert ours and int(ours.group(1)) > 0 and int(ours.group(2)) == 0, out
    assert re.search(r"naive certutil/modutil role\s+first run\s+[\d.]+ s \(changed=[1-9]", out), out
    assert re.search(r"same hosts over SSH: [\d.]+ s; our second run = [\d.]+x ping", out), out
    assert ratio > 0
    assert not os.path.exists(os.path.join(ROOT, "lab", "build", "bench-fleet", "run")), "the bench left its fleet"
