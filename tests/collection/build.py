"""The one way the collection tests build the collection: scripts/build_collection.py into a temporary directory."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_collection(out):
    """Build into `out`: (tarball, tree) as the script prints them."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build_collection.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    printed = dict(line.split(None, 1) for line in p.stdout.splitlines() if line.startswith(("tarball:", "tree:")))
    return printed["tarball:"], printed["tree:"]
