# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters exposing to the roles the facts (module_utils/tokentrust_facts.py: CA file names, policies.json
locations, per-OS PKCS#11 libraries) and the Windows planner (plugin_utils/tokentrust_windows/, controller only).

Only what roles, playbooks and templates use is a filter; the planner's other functions are plain Python, imported
by whoever needs them from plugin_utils (the tests do).

How the imports are found. In a collection, the collection loader imports
`ansible_collections.<ns>.<name>.plugins.module_utils.*` and `...plugins.plugin_utils.*` anywhere, and the build
(scripts/build_collection.py) replaces the block between the two `repository layout` markers below with those
imports. In the repository layout, Ansible puts neither our module_utils/ (ansible.cfg's `module_utils=` is used
only when a MODULE is packed for a target: ansible/ansible#27748, #28770) nor plugin_utils/ on the controller's
import path. Rather than patching a search path (`ansible.module_utils.__path__` or `sys.path`, for the whole
process), the block loads by file, relative to this plugin, exactly the files it needs (plugin_utils/_layout.py,
one definition for both plugins): each module_utils file under the name modules use
(`ansible.module_utils.tokentrust_x`, so their own imports of each other resolve), and plugin_utils/ as the package
`plugin_utils`. A file already imported under that name (tests/conftest.py) is reused, never loaded twice.

Every filter turns a WindowsPlanError into an AnsibleFilterError with the same message.
"""
from __future__ import annotations

import functools
import os

from ansible.errors import AnsibleFilterError

# --- repository layout: begin (the build replaces this block with the collection's imports)
# isort: split
import importlib.util

_spec = importlib.util.spec_from_file_location("tokentrust_layout", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugin_utils", "_layout.py"))
_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_layout)
_layout.load("tokentrust_errors", "tokentrust_facts", "tokentrust_policies", plugin_utils=True)
from ansible.module_utils import tokentrust_facts as facts

from plugin_utils import tokentrust_windows as tw

# --- repository layout: end


def _wrap(fn):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except tw.WindowsPlanError as e:
            raise AnsibleFilterError(str(e)) from e

    return inner


def _uac_plan(current_properties, mode, phase, record_text=None, disable_lua=True, install_pending=True):
    return tw.uac_plan(mode, phase, tw.uac_current(current_properties), record_text, disable_lua, install_pending)


def _reg_values(reg_stat_result):
    """{name: raw_value} of a win_reg_stat result on a key (empty when the key is missing)."""
    if not reg_stat_result or not reg_stat_result.get("exists"):
        return {}
    props = reg_stat_result.get("properties") or {}
    return {k: v.get("raw_value", v.get("value")) for k, v in props.items() if k and k.lower() != "(default)"}


def _loop_values(results):
    """{item: raw_value} of looped win_reg_stat results on one value each; None where the value does not
    exist (win_reg_stat then returns no raw_value at all)."""
    return {r.get("item"): (r.get("raw_value", r.get("value")) if r.get("exists") else None) for r in results or []}


def _project_dir(playbook_dir):
    """facts.project_dir with the controller's working directory (filters run in the ansible-playbook process)."""
    return facts.project_dir(playbook_dir, os.getcwd())


def _ca_files(ca_set, directory, only_tls_server_cas=True):
    """The files role firefox_policies deploys for a CA set (and lists in Certificates.Install): [{name, path}]."""
    return [{"name": f["name"], "path": f["path"]} for f in facts.ca_files(ca_set, directory, only_tls_server_cas)]


class FilterModule:
    def filters(self):
        f = {
            "tokentrust_ca_files": _ca_files,
            "tokentrust_ca_file_name": facts.ca_file_name,
            "tokentrust_project_dir": _project_dir,
            "tokentrust_policies_candidates": facts.policies_candidates,
            "tokentrust_library_candidates": facts.library_candidates,
            "tokentrust_default_library": facts.default_library,
            "tokentrust_firefox_install_dirs": facts.firefox_install_dirs,
            "tokentrust_win_store_plan": tw.store_plan,
            "tokentrust_win_store_thumbprints": tw.store_thumbprints,
            "tokentrust_win_uac_plan": _uac_plan,
            "tokentrust_win_ie_plan": tw.ie_plan,
            "tokentrust_win_ie_users": tw.ie_users,
            "tokentrust_win_ie_urls": tw.ie_urls,
            "tokentrust_win_ie_gpo_advice": tw.ie_gpo_advice,
            "tokentrust_win_ie_checks": tw.ie_checks,
            "tokentrust_win_firefox_plan": tw.firefox_plan,
            "tokentrust_win_firefox_checks": tw.firefox_checks,
            "tokentrust_win_legacy_match": tw.legacy_match,
            "tokentrust_win_msi_source": tw.msi_source,
            "tokentrust_win_msi_second_hop": tw.msi_second_hop,
            "tokentrust_win_middleware_checks": tw.middleware_checks,
            "tokentrust_win_middleware_pending": tw.middleware_pending,
            "tokentrust_win_middleware_other_versions": tw.other_versions,
            "tokentrust_win_check_stores": tw.check_stores,
            "tokentrust_win_check_registry": tw.check_registry,
            "tokentrust_win_check": tw.check,
            "tokentrust_win_report": tw.report,
            "tokentrust_win_token_checks": tw.token_checks,
            "tokentrust_win_token_not_verifiable": lambda _=None: list(tw.TOKEN_NOT_VERIFIABLE),
            "tokentrust_win_reg_values": _reg_values,
            "tokentrust_win_path": tw.win_path,
            "tokentrust_win_private_chain": tw.private_chain,
            "tokentrust_win_private_dir_problems": tw.private_dir_problems,
            "tokentrust_win_private_aces": tw.private_aces,
            "tokentrust_win_loop_values": _loop_values,
        }
        return {k: _wrap(v) for k, v in f.items()}
