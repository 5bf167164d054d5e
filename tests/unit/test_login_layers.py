"""Issue 30 item 2, for the test-login and PIN workflows (issue 26): tokentrust_nss keeps only bindings and imports
nothing above the floor, at any depth (no function-local import that climbs); the workflows and their texts live
above it; no production function of these files is over 80 lines. The checker itself is shown to catch a climbing
import and a long function (mutation)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOOR = ("tokentrust_errors", "tokentrust_files", "tokentrust_facts")
TOUCHED = ["module_utils/tokentrust_login.py", "module_utils/tokentrust_pin_action.py",
           "module_utils/tokentrust_advice.py", "module_utils/tokentrust_nss/token.py",
           "module_utils/tokentrust_nss/tls.py", "library/pkcs11_token_login.py", "library/pkcs11_pin.py"]
MAX_LINES = 80


def climbing_imports(source: str) -> list:
    """(line, module) of every ansible.module_utils import, at any depth, that is neither the bindings nor the floor."""
    out = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "ansible.module_utils":
                names = [a.name for a in node.names]
            elif node.module.startswith("ansible.module_utils."):
                names = [node.module.split(".")[2]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[2] for a in node.names if a.name.startswith("ansible.module_utils.")]
        out += [(node.lineno, n) for n in names if n != "tokentrust_nss" and n not in FLOOR
                and n not in ("basic", "common")]
    return out


def long_functions(source: str, limit: int = MAX_LINES) -> list:
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "module_utils" / "tokentrust_nss").glob("*.py")))
def test_bindings_import_nothing_above_the_floor(path):
    assert climbing_imports((ROOT / "module_utils" / "tokentrust_nss" / path).read_text()) == []


@pytest.mark.parametrize("path", TOUCHED)
def test_no_function_over_80_lines(path):
    assert long_functions((ROOT / path).read_text()) == []


def test_workflows_live_above_the_bindings():
    token = (ROOT / "module_utils/tokentrust_nss/token.py").read_text()
    for name in ("def verify_token", "def pin_action", "CARD_STATES", "def choose_certificate", "token_verify_"):
        assert name not in token
    assert "def verify_token" in (ROOT / "module_utils/tokentrust_login.py").read_text()
    assert "def pin_action" in (ROOT / "module_utils/tokentrust_pin_action.py").read_text()


def test_the_checks_catch_what_they_guard():
    """Mutation: a function-local import that climbs, and a function of 81 lines."""
    climbing = "def f():\n    from ansible.module_utils.tokentrust_ca import cert_dates\n    return cert_dates\n"
    assert climbing_imports(climbing) == [(2, "tokentrust_ca")]
    assert climbing_imports("from ansible.module_utils import tokentrust_pin\n") == [(1, "tokentrust_pin")]
    assert climbing_imports("from ansible.module_utils.tokentrust_errors import TokentrustError\n") == []
    long = "def g():\n" + "    x = 1\n" * 80
    assert long_functions(long) == [("g", 81)]
