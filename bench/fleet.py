#!/usr/bin/env python3
"""Our profile roles (ca.yml + firefox_nss) versus a naive role looping certutil/modutil, on a lab fleet.

    bench/fleet.py [HOSTS=50] [PROFILES=3]

Prints first and second run of both, an `ansible -m ping` baseline, and last `ratio: X` = naive / ours (first run).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet_common import ROOT, compare  # noqa: E402

if __name__ == "__main__":
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    profiles = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    compare(os.path.join(ROOT, "bench", "peer", "ours_roles.yml"), "tokentrust roles", hosts, profiles)
