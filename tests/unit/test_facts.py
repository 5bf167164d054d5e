"""Issue 12 item 6: one per-OS table of the middleware's PKCS#11 library, and no other copy that disagrees."""
from __future__ import annotations

import re
from pathlib import Path

from ansible.module_utils import tokentrust_facts as tl

ROOT = Path(__file__).resolve().parents[2]
MAC = "/Library/Frameworks/Pkcs11ClassicClient.framework/Versions/A/Pkcs11ClassicClient/libgclib.dylib"


def test_the_table():
    assert tl.default_library("Linux") == "/usr/lib/pkcs11/libgclib.so"
    assert tl.default_library("Darwin") == MAC
    assert tl.default_library("Windows").endswith("\\Gemalto\\Classic Client\\BIN\\gclib.dll")
    assert tl.default_library("Plan9") is None and tl.library_candidates("Plan9") == []


def test_every_module_uses_the_table():
    from ansible.module_utils.tokentrust_nss.token import default_module
    from ansible.module_utils.tokentrust_provision import default_library

    assert default_module("Darwin") == MAC and default_module("Linux") == tl.default_library("Linux")
    assert default_library() == tl.default_library()


def test_no_other_macos_path_anywhere():
    """Every macOS framework path in code, roles and docs is the table's default (there were two)."""
    found = {}
    for p in ROOT.rglob("*"):
        if (p.suffix not in (".py", ".yml", ".yaml", ".md") or ".venv" in p.parts or ".git" in p.parts
                or p.name == "test_libraries.py"):
            continue
        for m in re.finditer(r"/Library/Frameworks/Pkcs11ClassicClient\.framework[^\s`)'\"]*",
                             p.read_text(errors="replace")):
            found.setdefault(m.group(0).rstrip(".,"), []).append(str(p.relative_to(ROOT)))
    assert found and set(found) == {MAC}, found
