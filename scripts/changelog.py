#!/usr/bin/env python3
"""The collection's changelog from fragments, with antsibull-changelog (`make changelog`).

Every change adds a fragment to collection/changelogs/fragments/ (see antsibull-changelog's docs; the sanity test
`changelog` lints them). A release runs antsibull-changelog on the BUILT collection, since it lists the new
modules, plugins, roles and playbooks from the collection's plugins/ (which the repository layout does not have):

  python scripts/changelog.py [--date YYYY-MM-DD]   release galaxy.yml's version: fragments -> changelogs/changelog.yaml
                                                    and CHANGELOG.md (the fragments are consumed)
  python scripts/changelog.py --check               CHANGELOG.md is what antsibull-changelog generates from
                                                    changelog.yaml, and the fragments lint clean
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import build_collection  # noqa: E402

SRC = os.path.join(ROOT, "collection")
BIN = os.path.dirname(sys.executable)


def _run(args, tree, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=out, PATH=BIN + os.pathsep + env.get("PATH", ""))
    p = subprocess.run([os.path.join(BIN, "antsibull-changelog"), *args], cwd=tree, env=env, capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"antsibull-changelog {' '.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def release(date=None):
    version = build_collection.galaxy_meta()["version"]
    with tempfile.TemporaryDirectory(prefix="tokentrust-changelog-") as out:
        _tarball, tree = build_collection.build(out)
        _run(["lint"], tree, out)
        _run(["release", "--version", version, "--date", date or datetime.date.today().isoformat()], tree, out)
        shutil.copy2(os.path.join(tree, "changelogs", "changelog.yaml"), os.path.join(SRC, "changelogs"))
        shutil.copy2(os.path.join(tree, "CHANGELOG.md"), SRC)
        left = set(os.listdir(os.path.join(tree, "changelogs", "fragments")))
    frag_dir = os.path.join(SRC, "changelogs", "fragments")
    consumed = sorted(n for n in os.listdir(frag_dir) if n not in left)
    for n in consumed:
        os.unlink(os.path.join(frag_dir, n))
    print(f"released {version}: {len(consumed)} fragment(s) -> collection/changelogs/changelog.yaml, "
          "collection/CHANGELOG.md")


def check():
    """[problem, ...]: CHANGELOG.md differs from what antsibull-changelog generates, or the fragments do not lint."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="tokentrust-changelog-") as out:
        _tarball, tree = build_collection.build(out)
        lint = _run(["lint"], tree, out).strip()
        if lint:
            problems.append(f"antsibull-changelog lint: {lint}")
        _run(["generate"], tree, out)
        with open(os.path.join(tree, "CHANGELOG.md"), encoding="utf-8") as f:
            generated = f.read()
    with open(os.path.join(SRC, "CHANGELOG.md"), encoding="utf-8") as f:
        if f.read() != generated:
            problems.append("collection/CHANGELOG.md is not what antsibull-changelog generates from "
                            "changelogs/changelog.yaml: run `make changelog` (or edit fragments, not CHANGELOG.md)")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--date", help="release date (default: today)")
    a = ap.parse_args(argv)
    if a.check:
        problems = check()
        for p in problems:
            print(p)
        return 1 if problems else 0
    release(a.date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
