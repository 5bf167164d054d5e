"""Changelog fragments (issue 30, item 5): every change to the content users run comes with a fragment.

Fragments live in collection/changelogs/fragments/ (antsibull-changelog, collection/changelogs/config.yaml);
`make changelog` (scripts/changelog.py) releases them into changelog.yaml and CHANGELOG.md and deletes them.

Two checks, both in `make test` (this file runs with the unit tests, in a second):

1. The fragments are valid: `antsibull-changelog lint` on collection/ (sections, entry types, YAML).
2. A change without a fragment fails. How "a change" is judged, so that it works the same on a developer's worktree,
   on a branch before merge and on CI's clean clone of main (a full clone; .ci/run):

   - The history judged is the FIRST-PARENT chain from a base to HEAD. On main each merge is one unit (the
     branch's whole diff against main before the merge), each direct commit another; on a branch, its own commits.
     The commits inside a merged branch are never judged one by one: a branch may add its fragment first and keep
     changing code after it, what matters is what the merge brings.
   - A unit "changes the content" when its diff against its first parent touches one of WATCHED (what ships in the
     collection and what users run). It "carries a fragment" when it adds, modifies or renames a fragment file.
   - A unit that changes the content must carry a fragment itself OR be followed (later on the chain, up to HEAD) by
     a unit that does. So a direct fix-up commit after a merge may be covered by editing the merged fragment or by
     the next change's fragment; what can never pass is HEAD having content changes after the last fragment edit
     (the classic "PR without a changelog fragment"). A stricter rule (one fragment per unit) would fail on the
     lead's small follow-up commits, which belong to the fragment of the change they follow.
   - The base is the later of BASELINE (recorded below: main's tip before fragments existed in the repository; the
     units before it are described by changelog.yaml's 1.0.0 entry and by fragment 30-catch-up-since-1.0.0.yml)
     and the last release on the chain (a unit that deletes fragments and changes changelog.yaml: `make changelog`
     consumed them, so what came before is in changelog.yaml). TOKENTRUST_CHANGELOG_BASE=<rev> overrides the base
     (e.g. a CI job judging a pull request against origin/main).
   - Uncommitted changes are not judged (CI sees commits only).
   - Outside a git checkout (a tarball of the sources) the history check is skipped, said so; in a shallow clone
     that lacks the base it fails and says to fetch the history (`git fetch --unshallow`), rather than judging a
     truncated history.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv that runs the tests (requirements.txt has antsibull-changelog)
COLLECTION = ROOT / "collection"
FRAGMENTS = "collection/changelogs/fragments/"
RELEASE_FILE = "collection/changelogs/changelog.yaml"
# What ships in the collection or what users run: a change here needs a fragment.
WATCHED = ("library/", "module_utils/", "plugin_utils/", "roles/", "playbooks/", "filter_plugins/",
           "callback_plugins/", "doc_fragments/")
# main's tip before today's work (2026-12-07): the last commit of the history that had no fragments. The 17 units
# between the last changelog edit (6a67bf0, release 1.0.0 updated) and it are described by one catch-up fragment.
BASELINE = "57ca440c21ec27bb6325743343076f374998ece7"


def git(root, *args, check=True):
    p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def _is_ancestor(root, a, b):
    return subprocess.run(["git", "-C", str(root), "merge-base", "--is-ancestor", a, b],
                          capture_output=True, timeout=60).returncode == 0


def unit_changes(root, rev):
    """[(status, path)] of `rev` against its first parent (a merge: everything its branch brings)."""
    out = git(root, "diff", "--name-status", "--no-renames", f"{rev}^1", rev) if git(
        root, "rev-list", "--parents", "-n1", rev).split()[1:] else git(
        root, "show", "--name-status", "--no-renames", "--format=", rev)
    rows = []
    for line in out.splitlines():
        status, *paths = line.split("\t")
        rows += [(status[0], p) for p in paths]
    return rows


def _is_fragment(path):
    return path.startswith(FRAGMENTS) and path.endswith((".yml", ".yaml"))


def carries_fragment(rows):
    return any(s in "AMR" and _is_fragment(p) for s, p in rows)


def is_release(rows):
    return any(s == "D" and _is_fragment(p) for s, p in rows) and any(p == RELEASE_FILE for _, p in rows)


def changes_content(rows):
    return sorted({p for _, p in rows if p.startswith(WATCHED)})


def judge_base(root, baseline=BASELINE, head="HEAD"):
    """The commit after which units are judged (see the module's docstring)."""
    base = baseline
    if subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{base}^{{commit}}"],
                      capture_output=True).returncode != 0:
        shallow = git(root, "rev-parse", "--is-shallow-repository").strip() == "true"
        raise AssertionError(f"the changelog check's base {base} is not in this clone"
                             + (" (a shallow clone: `git fetch --unshallow`)" if shallow else "")
                             + "; set TOKENTRUST_CHANGELOG_BASE=<rev> to judge from another commit")
    if not _is_ancestor(root, base, head):
        raise AssertionError(f"the changelog check's base {base} is not an ancestor of {head}: "
                             "set TOKENTRUST_CHANGELOG_BASE=<rev> (e.g. the merge-base with main)")
    for rev in git(root, "rev-list", "--first-parent", f"{base}..{head}").split():  # newest first
        if is_release(unit_changes(root, rev)):
            return rev
    return base


def uncovered(root, base, head="HEAD"):
    """[(rev, subject, watched paths)] of the units that change the content with no fragment change at or after
    them on the first-parent chain base..head."""
    units = git(root, "rev-list", "--first-parent", "--reverse", f"{base}..{head}").split()
    rows = [unit_changes(root, u) for u in units]
    last_fragment = max((i for i, r in enumerate(rows) if carries_fragment(r)), default=-1)
    out = []
    for i, (u, r) in enumerate(zip(units, rows)):
        paths = changes_content(r)
        if paths and i > last_fragment:
            out.append((u[:10], git(root, "log", "-1", "--format=%s", u).strip()[:100], paths))
    return out


HAVE_GIT = shutil.which("git") is not None  # the Debian 13 controller container runs tests/unit with no git


def _in_git():
    if not HAVE_GIT:
        return False
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-dir"], capture_output=True).returncode == 0


@pytest.mark.skipif(not (BIN / "antsibull-changelog").exists(),
                    reason="no antsibull-changelog here (requirements-controller.txt has no release tools)")
def test_fragments_are_valid():
    """antsibull-changelog lint on the fragments (and changelog.yaml's own lint)."""
    tool = BIN / "antsibull-changelog"
    for args in (["lint"], ["lint-changelog-yaml", "changelogs/changelog.yaml"]):
        p = subprocess.run([str(tool), *args], cwd=COLLECTION, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and not p.stdout.strip(), f"antsibull-changelog {args[0]}:\n{p.stdout}{p.stderr}"
    names = sorted(p.name for p in (COLLECTION / "changelogs" / "fragments").iterdir())
    assert names, "no fragment: the catch-up fragment at least is expected until the next `make changelog`"
    assert all(n.endswith(".yml") for n in names), names


@pytest.mark.skipif(not _in_git(), reason="not a git checkout: no history to judge")
def test_every_change_has_a_fragment():
    base = judge_base(ROOT, os.environ.get("TOKENTRUST_CHANGELOG_BASE") or BASELINE)
    bad = uncovered(ROOT, base)
    assert not bad, (
        f"changes to {', '.join(WATCHED)} with no changelog fragment added or edited at or after them (judged from "
        f"{base[:10]}): add one to {FRAGMENTS} (antsibull-changelog format, e.g. 'minor_changes:' / 'bugfixes:'):\n"
        + "\n".join(f"  {rev} {subject}: {', '.join(paths[:4])}{' ...' if len(paths) > 4 else ''}"
                    for rev, subject, paths in bad))


# The judge itself, on throw-away repositories: red where it must be (mutation proof of the rule).
def _repo(tmp_path):
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.email", "t@example.invalid")
    git(r, "config", "user.name", "t")
    return r


def _commit(r, files, msg, delete=()):
    for name, text in files.items():
        (r / name).parent.mkdir(parents=True, exist_ok=True)
        (r / name).write_text(text)
        git(r, "add", name)
    for name in delete:
        git(r, "rm", "-q", name)
    git(r, "commit", "-q", "--allow-empty", "-m", msg)
    return git(r, "rev-parse", "HEAD").strip()


@pytest.mark.skipif(not HAVE_GIT, reason="no git on this machine: the judge's own tests need it to make histories")
def test_judge_on_a_synthetic_history(tmp_path):
    r = _repo(tmp_path)
    base = _commit(r, {"README.md": "x"}, "baseline")
    _commit(r, {"roles/a/tasks/main.yml": "1"}, "code, no fragment")
    assert [s for _, s, _ in uncovered(r, base)] == ["code, no fragment"]
    _commit(r, {"docs/x.md": "doc"}, "docs only")
    assert len(uncovered(r, base)) == 1  # docs do not cover it
    _commit(r, {FRAGMENTS + "1-a.yml": "minor_changes:\n  - a\n"}, "its fragment, later")
    assert uncovered(r, base) == []
    # a branch whose fragment comes first and code after it: judged as its merge, which carries the fragment
    git(r, "checkout", "-q", "-b", "feature")
    _commit(r, {FRAGMENTS + "2-b.yml": "bugfixes:\n  - b\n"}, "fragment first")
    _commit(r, {"library/m.py": "2"}, "code after it")
    git(r, "checkout", "-q", "main")
    git(r, "merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    assert uncovered(r, base) == []
    # a merge that brings code and no fragment is red, until a later unit edits a fragment
    git(r, "checkout", "-q", "-b", "nofrag")
    _commit(r, {"module_utils/u.py": "3"}, "code only")
    git(r, "checkout", "-q", "main")
    git(r, "merge", "-q", "--no-ff", "-m", "merge nofrag", "nofrag")
    assert [s for _, s, _ in uncovered(r, base)] == ["merge nofrag"]
    _commit(r, {FRAGMENTS + "2-b.yml": "bugfixes:\n  - b, and u\n"}, "fragment edited")
    assert uncovered(r, base) == []
    # a release consumes the fragments: the base moves to it, earlier units are released
    rel = _commit(r, {RELEASE_FILE: "releases: {}\n"}, "release",
                  delete=[FRAGMENTS + "1-a.yml", FRAGMENTS + "2-b.yml"])
    assert judge_base(r, baseline=base) == rel
    _commit(r, {"playbooks/site.yml": "4"}, "after the release")
    assert [s for _, s, _ in uncovered(r, judge_base(r, baseline=base))] == ["after the release"]
