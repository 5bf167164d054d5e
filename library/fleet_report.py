#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_report
short_description: Write the tokentrust fleet report (fleet.json and a self-contained fleet.html)
description:
  - "Runs on the controller (C(hosts: localhost) or C(delegate_to: localhost)). Takes what role C(fleet_report)
    gathered on every host, the CA set and the test-login results, decides per host whether it is fine (green),
    needs attention (amber) or needs action (red), with the reasons in words, and writes
    C(fleet.json) (machine-readable, see C(docs/report.md)) and C(fleet.html) (one file, inline CSS, JavaScript and
    SVG, no network: a sortable host table, summary counts and the certificate expiry timeline)."
  - A host without a test-login result in the C(token) of its O(hosts) entry gets the one in
    O(token_dir)C(/<host>.json) when that file exists (written by C(playbooks/verify.yml)), else "not run".
  - "A host whose O(hosts) entry has no C(data) was not reached: it is C(unreachable) (amber), never the status an
    older report gave it, with when it was last seen and last converged, read from O(state_dir)."
  - Files are written atomically and only when their content changed.
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  hosts:
    description:
      - One entry per host of the report, with C(name), C(data) (the C(fleet_report_host) fact, or null when the
        host was not reached) and optionally C(token) (the C(tokentrust_token_report) fact).
    type: list
    elements: dict
    required: true
  ca_set:
    description: The CA set (the C(tokentrust_ca_set) fact); PEMs are not needed and not copied into the report.
    type: list
    elements: dict
    default: []
  dest:
    description: Directory of C(fleet.json) and C(fleet.html) (created when missing).
    type: path
    required: true
  token_dir:
    description: Directory of the per-host test-login results (C(<inventory_hostname>.json)). Empty to not look.
    type: path
    default: ""
  state_dir:
    description:
      - The controller-side fleet state written by callback plugin C(tokentrust_state) (C(state.json), with the
        last seen and last converged times per host). Empty to not look.
      - A host whose C(data) has a C(pull) result (pull mode, the host converged itself) that converged has that
        time recorded there as C(pull_converged) (not in check mode), so that it leaves C(not_converged).
    type: path
    default: ""
  expiry_warning_days:
    description: A certificate with fewer days left makes its host amber.
    type: int
    default: 90
  expiry_critical_days:
    description: A certificate with fewer days left (or expired) makes its host red.
    type: int
    default: 30
  token_required:
    description: A host without a test-login result is amber (otherwise the report only says "not run").
    type: bool
    default: false
  token_max_age_hours:
    description: A test-login result that said ok but is older than this many hours, or has no C(checked_at), is
      "unknown" (amber), never ok.
    type: int
    default: 168
  check_policies:
    description: Linux/macOS hosts must have our entries in the policies.json Firefox reads.
    type: bool
    default: true
  title:
    description: Title of the page.
    type: str
    default: tokentrust fleet report
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    details: Builds the report and says whether the files would change, without writing them.
  diff_mode:
    support: partial
    details: The diff shows the per-host statuses before and after.
"""

EXAMPLES = r"""
# Normally through role fleet_report (tasks_from: render) in playbooks/report.yml.
- name: Write the report of two hosts (one not reached)
  fleet_report:
    hosts:
      - name: ws1
        data: "{{ hostvars['ws1'].fleet_report_host }}"
      - name: ws2
        data: null
    ca_set: "{{ tokentrust_ca_set }}"
    dest: "{{ playbook_dir }}/../reports"
    token_dir: "{{ playbook_dir }}/../reports/token"
"""

RETURN = r"""
summary:
  description: Counts (hosts, ok, warning, failed, profiles, profiles_ok, token_ok, token_failed, token_not_run,
    windows_hosts, cas, next_expiry_days).
  returned: always
  type: dict
statuses:
  description: Host name to status (ok, warning, unreachable, failed).
  returned: always
  type: dict
  sample: {"lab-ws-01": "ok", "lab-ws-02": "failed"}
reasons:
  description: Host name to the reasons in words (failed, unreachable and warning only). A test login that failed
    because of the key's state (no card, PIN blocked, ...) ends with "What to do:" and the advice.
  returned: always
  type: dict
json_path:
  description: Path of fleet.json.
  returned: always
  type: str
html_path:
  description: Path of fleet.html.
  returned: always
  type: str
"""

import json
import os
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import fail, require
from ansible.module_utils.tokentrust_files import with_attributes_diff, write_file

try:
    from ansible.module_utils.tokentrust_report import ReportError, build_report, reason_text, render_html, to_json
    from ansible.module_utils.tokentrust_state import StateError
    from ansible.module_utils.tokentrust_state import load as load_state
    from ansible.module_utils.tokentrust_state import update as update_state

    IMPORT_ERROR = None
except ImportError:
    IMPORT_ERROR = traceback.format_exc()


def read_token_file(module, token_dir, host):
    if not token_dir:
        return None
    path = os.path.join(token_dir, "%s.json" % host)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        fail(module, ReportError("cannot read the test-login result %s: %s (fix or delete the file, then run again)"
                                 % (path, exc)))


def pull_converged(data):
    """The time of the host's last pull-mode run that converged it (its pull result, gathered by the role)."""
    pull = data.get("pull") if isinstance(data, dict) else None
    if isinstance(pull, dict) and pull.get("result") == "converged" and isinstance(pull.get("finished"), str):
        return pull["finished"]
    return None


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def previous_statuses(text):
    try:
        return {h["name"]: h["status"] for h in json.loads(text).get("hosts", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def same_as_previous(report, text):
    """The report with the previous time stamp when nothing else differs, else None."""
    try:
        generated = json.loads(text)["generated"]
    except (ValueError, KeyError, TypeError):
        return None
    candidate = dict(report, generated=generated)
    return candidate if to_json(candidate) == text else None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            hosts=dict(type="list", elements="dict", required=True),
            ca_set=dict(type="list", elements="dict", default=[]),
            dest=dict(type="path", required=True),
            token_dir=dict(type="path", default=""),
            state_dir=dict(type="path", default=""),
            expiry_warning_days=dict(type="int", default=90),
            expiry_critical_days=dict(type="int", default=30),
            token_required=dict(type="bool", default=False),
            token_max_age_hours=dict(type="int", default=168, no_log=False),
            check_policies=dict(type="bool", default=True),
            title=dict(type="str", default="tokentrust fleet report"),
        ),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    require(module, IMPORT_ERROR, "tokentrust_report (module_utils)")
    p = module.params
    try:
        pulls = {h.get("name"): pull_converged(h.get("data")) for h in p["hosts"]}
        pulls = {k: v for k, v in pulls.items() if k and v}
        if p["state_dir"] and pulls and not module.check_mode:
            update_state(p["state_dir"], {k: {"pull_converged": v} for k, v in pulls.items()})
        states = load_state(p["state_dir"]) if p["state_dir"] else {}
    except StateError as exc:
        fail(module, ReportError(str(exc)))
    hosts = []
    for h in p["hosts"]:
        h = dict(h)
        if not h.get("token"):
            h["token"] = read_token_file(module, p["token_dir"], h.get("name"))
        h["state"] = dict(states.get(h.get("name")) or {})
        if h.get("name") in pulls:
            h["state"]["pull_converged"] = max(h["state"].get("pull_converged") or "", pulls[h["name"]])
        hosts.append(h)
    ca_set = [{k: v for k, v in ca.items() if k not in ("pem", "der")} for ca in p["ca_set"]]
    dest = p["dest"]
    json_path, html_path = os.path.join(dest, "fleet.json"), os.path.join(dest, "fleet.html")
    previous = read_text(json_path)
    try:
        report = build_report(hosts, ca_set, settings={k: p[k] for k in (
            "expiry_warning_days", "expiry_critical_days", "token_required", "token_max_age_hours", "check_policies",
            "title")})
        # Same findings as the report on disk: keep its time stamp, so that an unchanged fleet changes nothing.
        same = same_as_previous(report, previous)
        if same is not None:
            report = same
        page = render_html(report)
    except ReportError as exc:
        fail(module, exc)
    if not os.path.isdir(dest):
        if os.path.exists(dest):
            fail(module, ReportError("dest %s exists and is not a directory" % dest))
    before = previous_statuses(previous)
    writes = []
    try:
        if not os.path.isdir(dest) and not module.check_mode:
            os.makedirs(dest, mode=0o755)
        changed = not os.path.isdir(dest)
        for path, text in ((json_path, to_json(report)), (html_path, page)):
            w = write_file(module, path, text)
            changed = changed or w["changed"]
            writes.append((path, w))
    except OSError as exc:
        fail(module, ReportError("cannot write the report into %s: %s (%s). Choose a writable dest "
                                 "(fleet_report_dest) or fix its permissions; nothing was written"
                                 % (dest, exc.strerror or exc, exc.filename or dest)))
    statuses = {m["name"]: m["status"] for m in report["hosts"]}
    result = dict(
        changed=changed, summary=report["summary"], statuses=statuses, json_path=json_path, html_path=html_path,
        reasons={m["name"]: [reason_text(r) for r in m["reasons"] if r["level"] in ("failed", "unreachable", "warning")]
                 for m in report["hosts"]},
    )
    if module._diff:
        result["diff"] = with_attributes_diff({"before": json.dumps(before, indent=2, sort_keys=True) + "\n",
                                               "after": json.dumps(statuses, indent=2, sort_keys=True) + "\n",
                                               "before_header": json_path, "after_header": json_path}, writes)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
