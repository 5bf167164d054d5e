"""ansible-test sanity on the built collection, from inside <tmp>/ansible_collections/tokentrust/workstation.

validate-modules, and the other sanity tests with Python requirements, run in virtual environments that
ansible-test creates itself and bootstraps with a pip script downloaded from a CI file host (not a package
registry): unreachable here, and tests never reach the internet. So validate-modules is run as ansible-test
runs it: the same validate.py shipped in ansible-test, with the same arguments (--format json --arg-spec
--collection ... --collection-version ...), on this project's Python, whose requirements.txt pins that
test's requirements (voluptuous, antsibull-docs-parser). Every sanity test that needs no extra requirement
runs through `ansible-test sanity --local` itself."""
import json
import os
import shutil
import subprocess
import sys

import ansible_test
import pytest
import yaml

from tests.collection.build import build_collection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
VALIDATE = os.path.join(os.path.dirname(ansible_test.__file__), "_util", "controller", "sanity", "validate-modules",
                        "validate.py")
# the ansible-test sanity tests that install nothing (no venv bootstrap needed)
NO_REQUIREMENT_TESTS = ["action-plugin-docs", "compile", "empty-init", "ignores", "line-endings", "no-assert",
                        "no-get-exception", "no-illegal-filenames", "no-smart-quotes", "replace-urlopen", "shebang",
                        "symlinks", "use-argspec-type-path", "use-compat-six"]


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


def test_validate_modules(tree, tmp_path):
    out, top = tree
    with open(top / "galaxy.yml", encoding="utf-8") as f:
        version = yaml.safe_load(f)["version"]
    modules = sorted(f"plugins/modules/{n}" for n in os.listdir(top / "plugins" / "modules") if n.endswith(".py"))
    assert [m.rsplit("/", 1)[1] for m in modules] == sorted(n for n in os.listdir(os.path.join(ROOT, "library"))
                                                            if n.endswith(".py"))
    p = subprocess.run([sys.executable, VALIDATE, "--format", "json", "--arg-spec",
                        "--collection", "ansible_collections/tokentrust/workstation", "--collection-version", version,
                        *modules], cwd=top, env=_env(tmp_path, out), capture_output=True, text=True, timeout=600)
    assert p.returncode in (0, 3) and not p.stderr.strip(), p.stderr  # 3: messages were reported
    found = json.loads(p.stdout)  # only the files with messages are listed
    problems = [f"{path}: {e['code']}: {e['msg']}" for path, r in sorted(found.items())
                for kind in ("errors", "warnings", "traces", "warning_traces") for e in r[kind]]
    assert problems == []


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


def test_ansible_test_sanity(tree, tmp_path):
    out, top = tree
    cmd = [os.path.join(BIN, "ansible-test"), "sanity", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}",
           "--local", "--color", "no"]
    for t in NO_REQUIREMENT_TESTS:
        cmd += ["--test", t]
    p = subprocess.run(cmd, cwd=top, env=_env(tmp_path, out), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    for t in NO_REQUIREMENT_TESTS:  # each one ran (none skipped for lack of targets or of requirements)
        assert f'Running sanity test "{t}"' in p.stdout + p.stderr, t
    assert "Installing requirements" not in p.stdout + p.stderr or "Downloading" not in p.stdout + p.stderr


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


def test_yamllint_sanity(tree, tmp_path):
    out, top = tree
    targets, problems = _yamllint(top, _env(tmp_path, out))
    assert "plugins/modules/nss_provision.py" in targets and "meta/runtime.yml" in targets and len(targets) > 80
    assert problems == []


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


def test_runtime_metadata_sanity(tree, tmp_path):
    """ansible-test's runtime-metadata test (its schema of meta/runtime.yml; voluptuous is pinned for it)."""
    out, top = tree
    assert _runtime_metadata(top, _env(tmp_path, out)) == []


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
