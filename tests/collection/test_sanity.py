"""ansible-test sanity on the built collection, from inside <tmp>/ansible_collections/tokentrust/workstation.

`ansible-test sanity` runs in full (scripts/sanity.py: every test; only those it skips for a program no Debian
package provides are allowed to be skipped, listed in OFFLINE_SKIPPED), with its own virtual environments, which it
creates from its pinned requirements (scripts/sanity.py stands in for the pip bootstrap it would download from a CI
file host). A planted fault per test family shows the run can fail. validate-modules, yamllint and runtime-metadata
are also run directly (their scripts, with ansible-test's arguments) on copies with planted faults."""
import json
import os
import re
import shutil
import subprocess
import sys

import ansible_test
import pytest
import yaml

from tests.collection.build import build_collection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import sanity  # noqa: E402 - scripts/sanity.py

BIN = os.path.dirname(sys.executable)
VALIDATE = os.path.join(os.path.dirname(ansible_test.__file__), "_util", "controller", "sanity", "validate-modules",
                        "validate.py")
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("sanity")
    build_collection(out)
    return out, out / "ansible_collections" / "tokentrust" / "workstation"


def _copy(top, root):
    """A copy of the built tree under <root>/ansible_collections/tokentrust/workstation, to plant a fault in."""
    copy = root / "ansible_collections" / "tokentrust" / "workstation"
    shutil.copytree(top, copy)
    return copy


def _plant(path, old, new):
    text = path.read_text()
    path.write_text(text.replace(old, new, 1))
    assert path.read_text() != text, f"{path}: {old!r} not found, nothing planted"


def _env(home, collections_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(home), ANSIBLE_COLLECTIONS_PATH=str(collections_root), PATH=BIN + os.pathsep + env["PATH"])
    return env


def test_validate_modules_bites_here(tree, tmp_path):
    """The same invocation on a copy with one documentation fault (an undocumented option, and the colon
    that once broke nss_provision's DOCUMENTATION) reports both: a clean run above is not a run that saw nothing."""
    out, top = tree
    copy_root = tmp_path / "copy"
    copy = _copy(top, copy_root)
    _plant(copy / "plugins" / "modules" / "nss_info.py", 'databases=dict(type="list"',
           'canary=dict(type="str"), databases=dict(type="list"')
    _plant(copy / "plugins" / "modules" / "nss_provision.py", "home itself; each home", "home itself: each home")
    p = subprocess.run([sys.executable, VALIDATE, "--format", "json", "--arg-spec",
                        "--collection", "ansible_collections/tokentrust/workstation",
                        "plugins/modules/nss_info.py", "plugins/modules/nss_provision.py"],
                       cwd=copy, env=_env(tmp_path, copy_root), capture_output=True, text=True, timeout=600)
    found = json.loads(p.stdout)
    assert "undocumented-parameter" in {e["code"] for e in found["plugins/modules/nss_info.py"]["errors"]}
    assert found["plugins/modules/nss_provision.py"]["errors"], found


def test_ansible_test_sanity_in_full(tree):
    out, top = tree
    listed = subprocess.run([sanity.ansible_test(), "sanity", "--list-tests"], cwd=top, capture_output=True, text=True,
                            env=sanity.sanity_env(sanity.default_home(), out), timeout=300).stdout.split()
    assert {"import", "pep8", "pylint", "validate-modules", "ansible-doc", "changelog", "yamllint"} <= set(listed)
    p = sanity.run(top, out)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:]
    ran = set(re.findall(r'Running sanity test "([\w-]+)"', log))
    assert ran == set(listed), set(listed) - ran
    assert sanity.skipped(log) == {"pslint": "pwsh"}  # the one test that cannot run here (README says why)
    assert set(sanity.OFFLINE_SKIPPED) == {"pslint"}
    # the ignore file covers the generated NSS declarations, and skips validate-modules for our PowerShell modules
    # only (its arg spec inspection of a .ps1 needs pwsh; tests/unit/test_windows_probes.py checks spec vs docs)
    with open(top / "tests" / "sanity" / "ignore-2.19.txt", encoding="utf-8") as f:
        entries = [line.split()[:2] for line in f if line.strip() and not line.startswith("#")]
    ps1 = sorted(p.name for p in (top / "plugins" / "modules").glob("*.ps1"))
    assert len(ps1) == 8
    assert sorted(path for path, test in entries if test == "validate-modules!skip") == [
        f"plugins/modules/{n}" for n in ps1]
    assert {path for path, test in entries if test != "validate-modules!skip"} == {
        "plugins/module_utils/tokentrust_nss/_ffi_abi.py"}


def test_ansible_test_sanity_bites_here(tree, tmp_path):
    """A copy with the cffi import unguarded (the code before the guard), a line too long and a `_` variable: the
    same ansible-test reports each in its test (import, pep8, pylint)."""
    _out, top = tree
    copy = _copy(top, tmp_path)
    ffi = copy / "plugins" / "module_utils" / "tokentrust_nss" / "_ffi.py"
    unguarded = "from cffi import FFI\n\nif FFI is None:\n"  # imported as before the guard
    _plant(ffi, "try:\n    from cffi import FFI\nexcept ImportError:\n    FFI = None\n", unguarded)
    facts = copy / "plugins" / "module_utils" / "tokentrust_facts.py"
    _plant(facts, "\n\n\ndef ", "\n\n\ndef planted_long():\n    return '" + "x" * 170 + "'\n\n\n"
           "def planted_underscore(pairs):\n    return [b for _, b in pairs]\n\n\ndef ")
    targets = ["plugins/module_utils/tokentrust_nss/_ffi.py", "plugins/module_utils/tokentrust_facts.py"]
    p = sanity.run(copy, tmp_path, args=["--test", "import", "--test", "pep8", "--test", "pylint", *targets])
    log = p.stdout + p.stderr
    assert p.returncode != 0, log[-4000:]
    assert re.search(r"ERROR: plugins/module_utils/tokentrust_nss/_ffi\.py:\d+:\d+: traceback: ModuleNotFoundError: "
                     r"No module named 'cffi'", log), log[-4000:]
    assert re.search(r"ERROR: plugins/module_utils/tokentrust_facts\.py:\d+:\d+: E501: line too long", log), log[-4000:]
    assert re.search(r'ERROR: plugins/module_utils/tokentrust_facts\.py:\d+:\d+: disallowed-name: Disallowed name "_"',
                     log), log[-4000:]


SANITY = os.path.dirname(os.path.dirname(VALIDATE))  # ansible_test/_util/controller/sanity


def _yamllint_targets(top):
    """What ansible-test's yamllint test lints: every .yml/.yaml, and every plugin .py but module_utils (their
    DOCUMENTATION, EXAMPLES and RETURN), as paths relative to the collection."""
    out = []
    for dirpath, _dirs, files in os.walk(top):
        for n in files:
            rel = os.path.relpath(os.path.join(dirpath, n), top)
            if n.endswith((".yml", ".yaml")) or (rel.startswith("plugins" + os.sep) and n.endswith(".py")
                                                 and n != "__init__.py" and "module_utils" not in rel.split(os.sep)):
                out.append(rel)
    return sorted(out)


def _yamllint(top, env):
    """ansible-test's yamllint sanity test as it runs it: its yamllinter.py, the paths on stdin, JSON out."""
    targets = _yamllint_targets(top)
    p = subprocess.run([sys.executable, os.path.join(SANITY, "yamllint", "yamllinter.py")], input="\n".join(targets),
                       cwd=top, env=env, capture_output=True, text=True, timeout=600)
    assert not p.stderr.strip(), p.stderr
    return targets, [f"{m['path']}:{m['line']}: {m['code']}: {m['message']}" for m in json.loads(p.stdout)["messages"]]


def test_yamllint_sanity_bites_here(tree, tmp_path):
    out, top = tree
    copy = _copy(top, tmp_path)
    _plant(copy / "plugins" / "modules" / "nss_info.py", '\nEXAMPLES = r"""\n', '\nEXAMPLES = r"""\n- name: a: b\n')
    _targets, problems = _yamllint(copy, _env(tmp_path, tmp_path))
    assert any(p.startswith("plugins/modules/nss_info.py:") for p in problems), problems


def _runtime_metadata(top, env):
    p = subprocess.run([sys.executable, os.path.join(SANITY, "code-smell", "runtime-metadata.py"), "meta/runtime.yml"],
                       cwd=top, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    return p.stdout.splitlines()


def test_runtime_metadata_sanity_bites_here(tree, tmp_path):
    out, top = tree
    copy = _copy(top, tmp_path)
    runtime = copy / "meta" / "runtime.yml"
    runtime.write_text(runtime.read_text() + "plugin_routing:\n  modules:\n    old_name:\n      redirect: 12\n")
    problems = _runtime_metadata(copy, _env(tmp_path, tmp_path))
    assert problems and all(p.startswith("meta/runtime.yml:") for p in problems), problems


def test_one_author_line_everywhere():
    """Modules, roles and galaxy.yml name the same author: the project, with no invented GitHub handle.
    validate-modules takes an author line only with a `(@handle)` or its `(!UNKNOWN)` marker for "no GitHub
    account"; the project has none, so the modules say `(!UNKNOWN)` rather than a fake `(@tokentrust)`."""
    import ast
    import glob

    with open(os.path.join(ROOT, "collection", "galaxy.yml"), encoding="utf-8") as f:
        [author] = yaml.safe_load(f)["authors"]
    lines = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "library", "*.py"))):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        doc = next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "DOCUMENTATION")
        lines[os.path.basename(path)] = yaml.safe_load(doc)["author"]
    assert len(lines) >= 10 and set(map(tuple, lines.values())) == {(f"{author} (!UNKNOWN)",)}, lines
    for path in sorted(glob.glob(os.path.join(ROOT, "roles", "*", "meta", "main.yml"))):
        with open(path, encoding="utf-8") as f:
            assert yaml.safe_load(f)["galaxy_info"]["author"] == author, path
