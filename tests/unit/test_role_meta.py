"""Role metadata states only what is tested (issue 14).

What the tests cover is derived here from the facts, not copied: the Debian release of the container fleet's image
(lab/fleet.py SUITE) and of this controller, where the folder lab runs (/etc/os-release); the roles those runs take
(the plays of the playbooks that tests/fleet and tests/integration run, Windows plays left out, include_role followed
into the roles); the roles the MOCKED Windows host runs (tests/support/winsim, through
tests/integration/test_windows_roles_sim.py); and the ansible-core installed from requirements.txt. A meta/main.yml
claiming any other platform, version or Ansible is a claim nothing tests, and fails here.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import yaml
from ansible.release import __version__ as ANSIBLE_CORE

from lab import fleet

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "meta" / "main.yml").is_file())
CORE = ".".join(ANSIBLE_CORE.split(".")[:2])


def _os_release(path="/etc/os-release"):
    out = {}
    for line in Path(path).read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v.strip('"')
    return out


def debian_versions_tested():
    """The fleet image's suite, and this controller's release when it is Debian (the folder lab runs here)."""
    found = {fleet.SUITE}
    rel = _os_release()
    if rel.get("ID") == "debian" and rel.get("VERSION_CODENAME"):
        found.add(rel["VERSION_CODENAME"])
    return found


# Where Debian 13 runs the roles: trixie workstations of the fleet (tests/fleet/test_fleet_trixie.py), make demo's
# mixed fleet (scripts/demo.py through tests/integration/test_demo.py) and the Debian 13 controller, on which the
# controller-side roles run (tests/controller/). The suite is read from lab/fleet.py's SUITES.
TRIXIE_RUNS = ("tests/fleet/test_fleet_trixie.py", "scripts/demo.py", "tests/controller/test_controller_trixie.py")


def _skipped(task, windows):
    """A task (or block) that only runs on the other kind of host (`when: ...os_family... == 'Windows'`)."""
    when = str(task.get("when", ""))
    return bool(re.search(r"!=\s*'Windows'" if windows else r"==\s*'Windows'", when))


def _walk(node, windows):
    """(kind, target) of the include_role / include_tasks of a task list, blocks descended into, the tasks that only
    run on the other kind of host left out."""
    if isinstance(node, list):
        for n in node:
            yield from _walk(n, windows)
        return
    if not isinstance(node, dict) or _skipped(node, windows):
        return
    for key in ("ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role"):
        if isinstance(node.get(key), dict):
            yield "role", (node[key]["name"], node[key].get("tasks_from", "main"))
    for key in ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks", "include_tasks", "import_tasks"):
        if node.get(key):
            yield "tasks", node[key] if isinstance(node[key], str) else node[key]["file"]
    for k in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
        yield from _walk(node.get(k) or [], windows)


def role_closure(entries, windows):
    """The roles that run from (role, tasks_from) entries: their task files followed through include_tasks, the roles
    they include, and their meta dependencies."""
    todo, seen, roles = list(entries), set(), set()
    while todo:
        role, tasks_from = todo.pop()
        if (role, tasks_from) in seen or not (ROOT / "roles" / role).is_dir():
            continue
        seen.add((role, tasks_from))
        roles.add(role)
        files, done = [tasks_from if tasks_from.endswith(".yml") else tasks_from + ".yml"], set()
        while files:
            f = files.pop()
            path = ROOT / "roles" / role / "tasks" / f
            if f in done or not path.is_file():
                continue
            done.add(f)
            for kind, target in _walk(yaml.safe_load(path.read_text()) or [], windows):
                if kind == "role":
                    todo.append(target)
                elif "{{" not in target:
                    files.append(target)
        meta = yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text()) or {}
        todo += [(d if isinstance(d, str) else d.get("role", d.get("name")), "main")
                 for d in meta.get("dependencies") or []]
    return roles


def playbook_roles(name, windows):
    """Roles of the plays of playbooks/<name> (imports followed): of the Windows plays, or of the others."""
    entries = []
    for play in yaml.safe_load((ROOT / "playbooks" / name).read_text()) or []:
        imported = play.get("import_playbook") or play.get("ansible.builtin.import_playbook")
        if imported:
            entries += [(r, "main") for r in playbook_roles(imported, windows)]
            continue
        hosts = str(play.get("hosts", ""))
        # a Windows play names windows hosts; the report's play takes both kinds (tokentrust_firefox:tokentrust_windows)
        kinds = ({True} if "windows" in hosts else set()) | ({False} if "windows" not in hosts or "firefox" in hosts
                                                              else set())
        if windows not in kinds:
            continue
        entries += [(r if isinstance(r, str) else r.get("role", r.get("name")), "main")
                    for r in play.get("roles") or []]
        entries += [target for kind, target in _walk([play], windows) if kind == "role"]
    return role_closure(entries, windows)


def playbooks_run_by(paths):
    found = set()
    for p in paths:
        found |= set(re.findall(r"(?:playbooks/|\.playbook\(\s*\")(\w+\.yml)", p.read_text()))
    return found


def roles_of_runs(paths, windows=False):
    """The roles of the playbooks that the files at `paths` run."""
    return set().union(*(playbook_roles(pb, windows=windows) for pb in playbooks_run_by(paths)))


@functools.cache
def roles_tested_on_trixie():
    assert "trixie" in fleet.SUITES
    runs = [ROOT / p for p in TRIXIE_RUNS]
    assert all("trixie" in p.read_text() or "Debian 13" in p.read_text() for p in runs), runs
    return roles_of_runs(runs)


@functools.cache
def roles_tested_on_debian():
    tests = [*(ROOT / "tests" / "fleet").glob("test_*.py"), *(ROOT / "tests" / "integration").glob("test_*.py")]
    return roles_of_runs([t for t in tests if "winsim" not in t.read_text()])


@functools.cache
def roles_tested_on_the_windows_mock():
    sim = ROOT / "tests" / "integration" / "test_windows_roles_sim.py"
    text = sim.read_text()
    named = set(re.findall(r'"(\w+)"', text)) & set(ROLES)
    return roles_of_runs([sim], windows=True) | role_closure([(r, "main") for r in named], True)


def meta(role):
    return yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text())["galaxy_info"]


def test_the_covered_sets_are_read_not_empty():
    assert debian_versions_tested() >= {fleet.SUITE}
    debian, windows = roles_tested_on_debian(), roles_tested_on_the_windows_mock()
    assert {"firefox_nss", "firefox_policies", "ca_certificates", "token_verify", "fleet_report"} <= debian
    assert {"windows_trust_store", "windows_uac", "token_middleware", "windows_private_dir"} <= windows
    assert set(ROLES) == debian | windows, "a role no test runs: " + str(set(ROLES) - debian - windows)


@pytest.mark.parametrize("role", ROLES)
def test_meta_claims_only_what_the_tests_run(role):
    info = meta(role)
    assert info["min_ansible_version"] == CORE, (
        f"roles/{role}/meta/main.yml: min_ansible_version {info['min_ansible_version']} but the tests run ansible-core "
        f"{ANSIBLE_CORE} (requirements.txt)")
    tested = {}
    if role in roles_tested_on_debian():
        tested["Debian"] = debian_versions_tested() | ({"trixie"} if role in roles_tested_on_trixie() else set())
    if role in roles_tested_on_the_windows_mock():
        tested["Windows"] = set()  # a MOCKED host: no Windows version runs
    claimed = {p["name"]: set(p.get("versions") or []) for p in info["platforms"]}
    assert claimed == tested, f"roles/{role}/meta/main.yml claims {claimed}, the tests run {tested}"


def test_collection_requires_the_ansible_core_tested():
    runtime = yaml.safe_load((ROOT / "collection" / "meta" / "runtime.yml").read_text())
    assert re.fullmatch(r">=\s*(\d+\.\d+)(\.0)?", runtime["requires_ansible"]).group(1) == CORE
