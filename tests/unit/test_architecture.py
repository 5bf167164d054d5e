"""docs/architecture.md kept true (issue 30): the layers of the design, read from the code's own imports.

Every production Python file is parsed (ast) and every import it makes is collected, top-level and function-local
alike (an import inside a function is still an edge of the graph), in the forms the code uses:
`import ansible.module_utils.x`, `from ansible.module_utils.x import y`, `from ansible.module_utils import x`,
`from ansible.module_utils.x import submodule`, relative imports, and the collection's
`ansible_collections.tokentrust.workstation.plugins.module_utils.x`. Then:

1. `module_utils/tokentrust_nss/` (the bindings) imports only the floor (`tokentrust_errors`, `tokentrust_files`,
   `tokentrust_facts`) and itself; the floor imports only the floor.
2. No file under `module_utils/` is imported only by controller-side plugins (filter_plugins, callback_plugins,
   plugin_utils): what ships to hosts is what the modules of library/ reach.
3. Nothing in production code patches a module search path (`ansible.module_utils.__path__`, `sys.path`).
4. No production function is over 80 lines.

ALLOWED lists today's known violations, each with the issue whose branch removes it: the lead empties it as those
branches merge (an entry that no longer occurs fails too, so the list cannot go stale). Any NEW violation fails.
test_a_new_violation_is_caught proves each rule red on a planted file.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("library", "module_utils", "plugin_utils", "filter_plugins", "callback_plugins", "doc_fragments")
CONTROLLER = ("filter_plugins", "callback_plugins", "plugin_utils")
FLOOR = {"tokentrust_errors", "tokentrust_files", "tokentrust_facts"}
BINDINGS = "tokentrust_nss"
MAX_FUNCTION_LINES = 80
_PREFIXES = ("ansible.module_utils.", "ansible_collections.tokentrust.workstation.plugins.module_utils.")

# Known violations, each with the issue that removes it (none left since issues 26, 28 and 30 merged on 2026-12-07).
# Keys: (rule, subject). A new entry needs a reason and an owner; the test fails on a stale one.
ALLOWED: set = set()


def _module_of(path: Path):
    """'tokentrust_nss.token' for module_utils/tokentrust_nss/token.py (package __init__: the package)."""
    rel = path.relative_to(ROOT / "module_utils").with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _known_modules(root=ROOT):
    base = root / "module_utils"
    return {_module_of_at(p, base) for p in base.rglob("*.py")}


def _module_of_at(path, base):
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set, base: Path):
    """The module_utils modules `path` imports (anywhere in the file), as dotted names relative to module_utils."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_of_at(path, base).split(".") if base in path.parents else []
    out = set()

    def add(name):
        # the longest known module that the dotted name names or lies in (`module_utils.x` from a relative import
        # of a controller file, e.g. plugin_utils' `from ..module_utils.x import y`, is x too)
        name = name[len("module_utils."):] if name.startswith("module_utils.") else name
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in known:
                out.add(".".join(parts[:n]))
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                for p in _PREFIXES:
                    if a.name.startswith(p):
                        add(a.name[len(p):])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative, inside module_utils
                pkg = here[:-node.level] if path.name != "__init__.py" else here[:len(here) - node.level + 1]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
                for p in _PREFIXES + ("ansible.module_utils", "ansible_collections.tokentrust.workstation.plugins"
                                      ".module_utils"):
                    if mod == p.rstrip("."):
                        mod = ""
                        break
                    if mod.startswith(p):
                        mod = mod[len(p):]
                        break
                else:
                    continue
            for a in node.names:
                add(f"{mod}.{a.name}" if mod else a.name)
            if mod:
                add(mod)
    return out


def production_files(root=ROOT):
    for d in PRODUCTION:
        if (root / d).is_dir():
            yield from sorted(p for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts)


def violations(root=ROOT):
    base = root / "module_utils"
    known = _known_modules(root)
    found = set()
    graph = {p: imports_of(p, known, base) for p in production_files(root)}
    rel = {p: p.relative_to(root).as_posix() for p in graph}

    # 1. the bindings import only the floor and themselves; the floor only the floor
    for p, deps in graph.items():
        if base not in p.parents:
            continue
        me = _module_of_at(p, base)
        top = me.split(".")[0]
        if top == BINDINGS:
            allowed = FLOOR | {d for d in deps if d.split(".")[0] == BINDINGS}
        elif top in FLOOR:
            allowed = FLOOR
        else:
            continue
        for d in sorted(deps - allowed):
            found.add(("climbs", f"{rel[p]} -> {d}"))

    # 2. what the modules of library/ reach ships to hosts; module_utils reached only from controller plugins is not
    by_module = {_module_of_at(p, base): p for p in graph if base in p.parents}

    def closure(starts):
        seen, todo = set(), [d for s in starts for d in graph[s]]
        while todo:
            m = todo.pop()
            for prefix in _parents(m):  # importing a.b runs a/__init__.py too
                if prefix not in seen and prefix in by_module:
                    seen.add(prefix)
                    todo += graph[by_module[prefix]]
        return seen

    host = closure([p for p in graph if p.relative_to(root).parts[0] == "library"])
    controller = closure([p for p in graph if p.relative_to(root).parts[0] in CONTROLLER])
    for m in sorted(controller - host):
        found.add(("controller_only", rel[by_module[m]]))

    # 3. no search-path patch; 4. no function over MAX_FUNCTION_LINES
    for p in graph:
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "__path__" and isinstance(
                    getattr(node, "ctx", None), ast.Load) and _is_patch(tree, node):
                found.add(("path_patch", rel[p]))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "append", "insert", "extend") and ast.unparse(node.func.value) in ("sys.path",):
                found.add(("path_patch", rel[p]))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    found.add(("long_function", f"{rel[p]}:{node.name}"))
    return found


def _parents(m):
    parts = m.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]


def _is_patch(tree, attr):
    """`x.__path__` used as the object of append/insert/extend or assigned to."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.value is attr \
                and node.func.attr in ("append", "insert", "extend"):
            return True
        if isinstance(node, (ast.Assign, ast.AugAssign)) and any(
                t is attr for t in (node.targets if isinstance(node, ast.Assign) else [node.target])):
            return True
    return False


@pytest.fixture(scope="module")
def found():
    return violations()


@pytest.mark.parametrize("rule", ["climbs", "controller_only", "path_patch", "long_function"])
def test_no_new_violation(found, rule):
    new = sorted(s for r, s in found if r == rule and (r, s) not in ALLOWED)
    assert not new, f"{rule}: {new} (docs/architecture.md, Layers; ALLOWED lists only today's known ones)"


def test_allowed_list_is_not_stale(found):
    gone = sorted(f"{r}: {s}" for r, s in ALLOWED - found)
    assert not gone, f"fixed, remove from ALLOWED in tests/unit/test_architecture.py: {gone}"


def test_the_graph_is_read(found):
    """The parser sees the edges the code has (a parser that saw nothing would pass every rule)."""
    base = ROOT / "module_utils"
    known = _known_modules()
    deps = imports_of(base / "tokentrust_provision.py", known, base)
    assert {"tokentrust_errors", "tokentrust_nss", "tokentrust_privsep"} <= deps, deps
    assert "tokentrust_facts" in deps  # imported inside a function only


_PLANTED = {
    "climbs": ("module_utils/tokentrust_nss/planted.py",
               "def f():\n    from ansible.module_utils.tokentrust_provision import provision\n    return provision\n"),
    "controller_only": ("module_utils/tokentrust_planted.py", "X = 1\n"),
    "path_patch": ("library/planted.py", "import ansible.module_utils\nansible.module_utils.__path__.append('x')\n"),
    "long_function": ("module_utils/tokentrust_files.py",
                      "\n\ndef planted():\n" + "    x = 1\n" * 80 + "    return x\n"),
}


@pytest.mark.parametrize("rule", sorted(_PLANTED))
def test_a_new_violation_is_caught(tmp_path, rule):
    """Mutation: a copy of the production tree with one planted violation of `rule` goes red."""
    import shutil
    for d in PRODUCTION:
        if (ROOT / d).is_dir():
            shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    name, text = _PLANTED[rule]
    target = tmp_path / name
    if rule == "long_function":
        target.write_text(target.read_text() + text)
    else:
        target.write_text(text)
    if rule == "controller_only":
        fp = tmp_path / "filter_plugins" / "planted.py"
        fp.write_text("from ansible.module_utils.tokentrust_planted import X\n")
    before = {(r, s) for r, s in violations(tmp_path)}
    new = {(r, s) for r, s in before if r == rule and (r, s) not in ALLOWED}
    assert new, f"planting {name} did not make rule {rule} red"


# Rule 3 for the repository's own scripts too (issue 30): scripts/gen_filter_docs.py and scripts/gen_nss_ffi.py
# appended module_utils/ to `ansible.module_utils.__path__`; a script loads what it needs by file
# (plugin_utils/_layout.py) instead. (`sys.path.insert` of scripts/ itself, to import a sibling script, is not a
# patch of where Ansible's packages are found and stays allowed here.)
SCRIPTS = ("scripts",)


def script_path_patches(root=ROOT):
    out = set()
    for d in SCRIPTS:
        for p in sorted((root / d).rglob("*.py")):
            tree = ast.parse(p.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr == "__path__" and isinstance(
                        getattr(node, "ctx", None), ast.Load) and _is_patch(tree, node):
                    out.add(p.relative_to(root).as_posix())
    return out


def test_no_script_patches_a_package_path():
    assert not script_path_patches(), "load module_utils by file (plugin_utils/_layout.py), do not patch __path__"


def test_a_script_path_patch_is_caught(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "planted.py").write_text(
        "import ansible.module_utils\n\nansible.module_utils.__path__.append('module_utils')\n")
    assert script_path_patches(tmp_path) == {"scripts/planted.py"}
