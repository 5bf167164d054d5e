# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository layout only (the build leaves this file out of the collection): how our controller plugins
(filter_plugins/, callback_plugins/) import our module_utils and plugin_utils without patching a search path.

Ansible puts neither module_utils/ (ansible.cfg's `module_utils=` serves modules packed for a target only) nor
plugin_utils/ on the controller's import path. A plugin loads this file by its path, relative to the plugin, and
calls `load()`: each named module_utils file is loaded by file under the name modules import it by
(`ansible.module_utils.tokentrust_x`: their imports of each other then resolve from sys.modules, so name them in
dependency order), and plugin_utils/ becomes the package `plugin_utils`, from which the plugin imports normally.
Nothing else is made importable, and a module already imported under its name (tests/conftest.py, another
plugin) is reused, never loaded twice (one WindowsPlanError class, one module state).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import ansible.module_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_utils(name):
    full = "ansible.module_utils." + name
    mod = sys.modules.get(full)
    if mod is None:
        spec = importlib.util.spec_from_file_location(full, os.path.join(ROOT, "module_utils", name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[full]
            raise
        setattr(ansible.module_utils, name, mod)
    return mod


def _plugin_utils():
    here = os.path.realpath(os.path.join(ROOT, "plugin_utils"))
    mod = sys.modules.get("plugin_utils")
    if mod is None:
        spec = importlib.machinery.ModuleSpec("plugin_utils", None, is_package=True)
        spec.submodule_search_locations = [here]
        mod = importlib.util.module_from_spec(spec)
        sys.modules["plugin_utils"] = mod
    elif here not in [os.path.realpath(p) for p in getattr(mod, "__path__", [])]:
        raise ImportError(f"another package named plugin_utils is imported ({mod!r}), not {here}")
    return mod


def load(*module_utils, plugin_utils=False):
    """Make `ansible.module_utils.<name>` for each name (in dependency order) and, with plugin_utils, the package
    `plugin_utils` (the repository's plugin_utils/) importable."""
    for name in module_utils:
        _module_utils(name)
    if plugin_utils:
        _plugin_utils()
