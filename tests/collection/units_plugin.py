"""pytest plugin: run tests/unit against the module_utils of an INSTALLED tokentrust.workstation collection.

    TOKENTRUST_COLLECTIONS=<dir with ansible_collections/> python -m pytest -p tests.collection.units_plugin tests/unit

The unit tests import our code as Ansible modules do (`ansible.module_utils.tokentrust_*`). Before any test module is
imported, every module of the collection's plugins/module_utils is imported under its collection name (the
collection's own imports between them are `ansible_collections.tokentrust.workstation.plugins.module_utils.*`, as the
build rewrote them) and the same module object is registered under its `ansible.module_utils.*` name: one object per
module, so exception classes and constants the tests compare are the collection's. The same for the controller-only
plugins/plugin_utils (registered as `plugin_utils.*`: the tests import the Windows planner as
`plugin_utils.tokentrust_windows`). The filter plugin the tests load is the one next to that module_utils
(tests/unit/test_windows_filters.py). At the end of collection, every `ansible.module_utils.tokentrust_*` module
in use must come from the collection: none from the repository.
"""
import importlib
import os
import sys

import ansible.module_utils

PREFIX = "ansible_collections.tokentrust.workstation.plugins.module_utils"
PU_PREFIX = "ansible_collections.tokentrust.workstation.plugins.plugin_utils"
ROOT = os.environ["TOKENTRUST_COLLECTIONS"]
TREE = os.path.join(ROOT, "ansible_collections", "tokentrust", "workstation", "plugins", "module_utils")


def _names():
    for dirpath, _dirs, files in os.walk(TREE):
        rel = os.path.relpath(dirpath, TREE)
        pkg = "" if rel == "." else rel.replace(os.sep, ".") + "."
        for n in sorted(files):
            if n.endswith(".py"):
                yield pkg + ("" if n == "__init__.py" else n[:-3])


def _alias():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # ansible_collections/ is a namespace package: this tree joins it
    names = sorted({n.rstrip(".") for n in _names()}, key=lambda n: n.count("."))
    for name in names:
        mod = importlib.import_module(f"{PREFIX}.{name}")
        sys.modules[f"ansible.module_utils.{name}"] = mod
        parent, _, leaf = f"ansible.module_utils.{name}".rpartition(".")
        setattr(sys.modules[parent], leaf, mod)
    pu = os.path.join(os.path.dirname(TREE), "plugin_utils")
    for dirpath, _dirs, files in sorted(os.walk(pu)):
        rel = os.path.relpath(dirpath, pu)
        pkg = "plugin_utils" + ("" if rel == "." else "." + rel.replace(os.sep, "."))
        for n in ["__init__.py"] + sorted(f for f in files if f.endswith(".py") and f != "__init__.py"):
            name = pkg if n == "__init__.py" else f"{pkg}.{n[:-3]}"
            sys.modules[name] = importlib.import_module(PU_PREFIX + name[len("plugin_utils"):])
    return names


ALIASED = _alias()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"module_utils under test: {TREE} ({len(ALIASED)} modules, from the installed "
                                "collection)")


def pytest_collection_finish(session):
    foreign = sorted(n for n, m in list(sys.modules.items())
                     if n.startswith("ansible.module_utils.tokentrust") and m is not None
                     and not os.path.realpath(getattr(m, "__file__", "") or "").startswith(os.path.realpath(TREE)))
    assert not foreign, f"modules not from the installed collection: {foreign}"
    assert ansible.module_utils.tokentrust_facts.__name__.startswith(PREFIX)
