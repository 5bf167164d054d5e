"""README and docs/ say what the repository holds (issue 30, item 6): read from the tree, not copied.

- README's Layout block names every role, every playbook and every module of library/.
- Every `make X` that README or a page of docs/ mentions is a target of the Makefile.
- Every relative link of README and docs/ reaches a file of the repository, and no path climbs out of it
  (`../shared/...`: the project's shared material is not in the repository).
- The exception list of docs/architecture.md ("One exception base") names every direct subclass of
  TokentrustError defined in module_utils/ (and plugin_utils/ once it exists).
- The command README says CI runs is the one .ci/run runs.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))


def layout_block(text=README):
    m = re.search(r"^## Layout\n+```\n(.*?)^```", text, re.S | re.M)
    assert m, "README has no '## Layout' section opening with a code block"
    return m.group(1)


def _words(text):
    return set(re.findall(r"[\w.-]+", text))


def test_layout_names_every_role_playbook_and_module():
    words = _words(layout_block())
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
    playbooks = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))
    modules = sorted(p.stem for p in (ROOT / "library").glob("*.py") if not p.name.startswith("_"))
    missing = [f"role {r}" for r in roles if r not in words] + [f"playbook {p}" for p in playbooks if p not in words]
    missing += [f"module {m}" for m in modules if m not in words]
    assert roles and playbooks and modules
    assert not missing, "README's Layout misses: " + ", ".join(missing)


def make_targets():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w-]+)\s*:(?!=)", text, re.M))


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_make_target_mentioned_exists(page):
    targets = make_targets()
    assert {"setup", "test", "lint", "demo"} <= targets
    mentioned = set(re.findall(r"`make ([a-z][\w-]*)", page.read_text(encoding="utf-8")))
    mentioned |= set(re.findall(r"^make ([a-z][\w-]*)", page.read_text(encoding="utf-8"), re.M))
    assert not mentioned - targets, f"{page.name} mentions make targets the Makefile lacks: {mentioned - targets}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_links_stay_inside_the_repository_and_resolve(page):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{page.name} points at ../shared, outside the repository"
    bad = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path = (page.parent / target).resolve()
        if ROOT not in path.parents and path != ROOT or not path.exists():
            bad.append(target)
    assert not bad, f"{page.name}: links that do not reach a file of the repository: {bad}"


def tokentrust_error_classes():
    found = {}
    for base in ("module_utils", "plugin_utils"):
        for path in sorted((ROOT / base).rglob("*.py")) if (ROOT / base).is_dir() else []:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and any(
                        getattr(b, "id", getattr(b, "attr", None)) == "TokentrustError" for b in node.bases):
                    found[node.name] = path.relative_to(ROOT).as_posix()
    return found


def test_exception_list_is_complete():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    m = re.search(r"\*\*One exception base.*?(?:\n\n|\n- )", text, re.S)
    assert m, "docs/architecture.md has no 'One exception base' paragraph"
    classes = tokentrust_error_classes()
    assert {"NSSError", "TokenError", "WriteError"} <= set(classes)
    missing = {c: p for c, p in classes.items() if f"`{c}`" not in m.group(0)}
    assert not missing, f"docs/architecture.md's exception list misses {missing}"


def test_readme_says_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1].strip()
    assert ci == "make test"
    assert re.search(r"make test\s+# .*what CI runs", README), "README's Try-it block should say make test is CI's"
