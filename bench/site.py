#!/usr/bin/env python3
"""The whole playbooks/site.yml versus the naive certutil/modutil role, on a lab fleet.

    bench/site.py [HOSTS=50] [PROFILES=3]        # the folder lab (local connection)
    bench/site.py --fleet [HOSTS=5] [--rounds 3] [--no-peer]  # the container fleet over SSH (best of N rounds)

BENCH_MITOGEN=1 runs ansible-playbook and the ping with mitogen's strategy (mitogen_linear).
Prints first and second run of both, an `ansible -m ping` baseline, and last `ratio: X` = naive / ours (first run).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet_common import ROOT, compare, fleet_args, fleet_compare  # noqa: E402

if __name__ == "__main__":
    if "--fleet" in sys.argv:  # containers over SSH (lab/fleet.py)
        n, rounds = fleet_args(sys.argv[1:])
        fleet_compare(os.path.join(ROOT, "playbooks", "site.yml"), "tokentrust site.yml", n, rounds,
                      peer="--no-peer" not in sys.argv)
        sys.exit(0)
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    profiles = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    compare(os.path.join(ROOT, "playbooks", "site.yml"), "tokentrust site.yml", hosts, profiles)
