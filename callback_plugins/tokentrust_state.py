# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback plugin: the controller-side fleet state (module_utils/tokentrust_state.py) recorded while a playbook runs.

Where module_utils come from: see filter_plugins/tokentrust.py (the same repository layout block).
"""
from __future__ import annotations

DOCUMENTATION = r"""
name: tokentrust_state
type: aggregate
short_description: Record when each host was last seen, found unreachable and converged (controller side)
description:
  - "Writes C(state.json) and C(not_converged) in the fleet state directory while a playbook runs, atomically
    (temp file + rename, under a lock), at every task boundary and at the end: a run killed at any point loses at
    most the results of the task it was in, never the file."
  - A host is I(seen) when a task ran on it (not delegated, not a controller-only action such as set_fact or
    group_by); I(unreachable) when Ansible could not reach it; I(converged) when a converge playbook (site.yml,
    firefox.yml, windows.yml, pull.yml) ended with no failure and no unreachable on it, in a full run (no --check,
    no --tags/--skip-tags) that reached it.
  - "C(not_converged) lists the hosts a converge playbook attempted and no run has converged since; re-run only
    those with C(ansible-playbook -i INVENTORY playbooks/site.yml --limit @reports/state/not_converged)."
  - The state directory is the extra variable C(fleet_state_dir), else E(TOKENTRUST_STATE_DIR), else
    C(fleet_report_dest)/state when that extra variable is set, else reports/state of the project the playbook
    belongs to (what role fleet_report reads by default, C(fleet_report_state_dir)).
requirements:
  - enable in ansible.cfg (C(callbacks_enabled = tokentrust_state))
"""

import os

from ansible import context
from ansible.plugins.callback import CallbackBase

# --- repository layout: begin (the build replaces this block with the collection's imports)
# isort: split
# tokentrust_state stays in module_utils: module fleet_report uses it on the host too. Loaded by file through
# plugin_utils/_layout.py, without patching a search path: see filter_plugins/tokentrust.py.
import importlib.util

_spec = importlib.util.spec_from_file_location("tokentrust_layout", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugin_utils", "_layout.py"))
_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_layout)
_layout.load("tokentrust_errors", "tokentrust_files", "tokentrust_facts", "tokentrust_state")
from ansible.module_utils import tokentrust_facts as facts
from ansible.module_utils import tokentrust_state as state

# --- repository layout: end

CONVERGE_PLAYBOOKS = ("site.yml", "firefox.yml", "windows.yml", "pull.yml")
# Actions that run on the controller only: their results say nothing about the host being up.
LOCAL_ACTIONS = frozenset((
    "set_fact", "group_by", "add_host", "assert", "debug", "fail", "meta", "include_tasks", "import_tasks",
    "include_role", "import_role", "include_vars", "set_stats", "pause", "validate_argument_spec", "noop",
    "include", "import_playbook",
))


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "tokentrust_state"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display=display)
        self._playbook = None
        self._basedir = None
        self._dir = None
        self._converge = False
        self._attempted, self._seen, self._unreachable = set(), set(), set()
        self._pending = {}
        self._broken = False

    # ------------------------------------------------------------------ helpers
    def _state_dir(self, play):
        try:
            extra = play.get_variable_manager().extra_vars or {}
        except AttributeError:
            extra = {}
        for value, suffix in ((extra.get("fleet_state_dir"), ""), (os.environ.get("TOKENTRUST_STATE_DIR"), ""),
                              (extra.get("fleet_report_dest"), "state")):
            if isinstance(value, str) and value and "{{" not in value:
                return os.path.join(os.path.expanduser(value), suffix) if suffix else os.path.expanduser(value)
        return os.path.join(facts.project_dir(self._basedir or os.getcwd(), os.getcwd()), "reports", "state")

    def _note(self, host, **fields):
        if self._dir is None:  # ad-hoc commands record nothing
            return
        self._pending.setdefault(host, {}).update(fields)

    def _flush(self):
        if not self._pending or self._dir is None or self._broken:
            return
        changes, self._pending = self._pending, {}
        try:
            state.update(self._dir, changes)
        except state.StateError as exc:
            self._broken = True
            self._display.warning("tokentrust_state: %s; the fleet state is not recorded in this run" % exc)

    @staticmethod
    def _host(result_or_host):
        host = getattr(result_or_host, "host", None) or getattr(result_or_host, "_host", None) or result_or_host
        if getattr(host, "implicit", False):  # the implicit localhost (report rendering, lab plays)
            return None
        return host.get_name()

    @staticmethod
    def _contacted(result):
        task = result.task
        if task.delegate_to:
            return False
        return (task.action or "").rsplit(".", 1)[-1] not in LOCAL_ACTIONS

    @staticmethod
    def _full_run():
        args = context.CLIARGS
        return (not args.get("check") and tuple(args.get("tags") or ("all",)) == ("all",)
                and not args.get("skip_tags"))

    # ------------------------------------------------------------------ events
    def v2_playbook_on_start(self, playbook):
        self._playbook = os.path.basename(getattr(playbook, "_file_name", "") or "")
        self._basedir = getattr(playbook, "_basedir", None)
        self._converge = self._playbook in CONVERGE_PLAYBOOKS and self._full_run()

    def v2_playbook_on_play_start(self, play):
        self._flush()
        if self._dir is None and self._playbook and not self._playbook.startswith("__adhoc"):
            self._dir = self._state_dir(play)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._flush()

    def v2_runner_on_start(self, host, task):
        name = self._host(host)
        if name and self._converge and name not in self._attempted:
            self._attempted.add(name)
            self._note(name, last_attempt=state.now_stamp(), last_playbook=self._playbook)

    def _seen_now(self, result):
        name = self._host(result)
        if name and name not in self._seen and self._contacted(result):
            self._seen.add(name)
            self._note(name, last_seen=state.now_stamp())

    def v2_runner_on_ok(self, result):
        self._seen_now(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._seen_now(result)

    def v2_runner_on_unreachable(self, result):
        name = self._host(result)
        if not name:
            return
        self._unreachable.add(name)
        msg = str(result.result.get("msg") or "unreachable")[:300]
        self._note(name, last_unreachable=state.now_stamp(), unreachable_msg=msg)
        self._flush()

    def v2_playbook_on_stats(self, stats):
        if self._converge:
            now = state.now_stamp()
            for name in self._attempted:
                s = stats.summarize(name)
                if s["unreachable"] or name in self._unreachable:
                    self._note(name, last_result="unreachable")
                elif s["failures"]:
                    self._note(name, last_result="failed")
                elif name in self._seen:
                    self._note(name, last_converged=now, last_result="converged")
        self._flush()
