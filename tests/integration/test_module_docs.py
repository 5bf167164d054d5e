"""Every module's documentation, as ansible-doc renders it from this repository (doc fragments included): the
EXAMPLES are valid tasks whose arguments are all documented options of the module they call, and the shared
attribute block and options come from the doc fragments."""
import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
MODULES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "library")) if f.endswith(".py"))
TASK_KEYWORDS = {"name", "register", "no_log", "when", "become", "become_user", "loop", "vars", "check_mode",
                 "changed_when", "failed_when", "delegate_to", "run_once", "tags", "environment", "until", "retries",
                 "delay", "ignore_errors", "notify", "diff", "loop_control", "args"}
FILE_OPTIONS = {"mode", "owner", "group", "seuser", "serole", "setype", "selevel", "attributes", "unsafe_writes"}


def _docs():
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    p = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "module", "--json", *MODULES], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_examples_use_only_documented_options():
    docs = _docs()
    problems = []
    for m in MODULES:
        doc = docs[m]
        options = set(doc["doc"].get("options", {}))
        for task in yaml.safe_load(doc["examples"]):
            calls = [k for k in task if k == m or k.endswith("." + m)]
            if not calls and any(k.startswith("ansible.builtin.") for k in task):
                continue  # a task of another module in the example (e.g. debug of the result)
            if len(calls) != 1:
                problems.append("%s: example %r does not call the module once" % (m, task.get("name")))
                continue
            unknown_keys = set(task) - TASK_KEYWORDS - set(calls)
            if unknown_keys:
                problems.append("%s: example %r has task keys %s" % (m, task.get("name"), sorted(unknown_keys)))
            args = task[calls[0]] or {}
            unknown = set(args) - options
            if unknown:
                problems.append("%s: example %r passes undocumented %s" % (m, task.get("name"), sorted(unknown)))
    assert not problems, "\n".join(problems)


def test_shared_attributes_and_options_come_from_fragments():
    docs = _docs()
    for m in MODULES:
        doc = docs[m]["doc"]
        # our PowerShell modules (the Windows probes, a .ps1 next to their documentation) run on Windows
        windows = os.path.exists(os.path.join(ROOT, "library", m + ".ps1"))
        assert doc["attributes"]["platform"]["platforms"] == ("windows" if windows else "posix"), m
        assert {"check_mode", "diff_mode"} <= set(doc["attributes"]), m
        source = open(doc["filename"]).read()
        assert "  - tokentrust_common" in source and "\n  platform:\n" not in source, m
    for m in ("firefox_policies", "ca_bundle", "fleet_report"):  # add_file_common_args
        assert FILE_OPTIONS <= set(docs[m]["doc"]["options"]), m
    for m in ("firefox_profiles_info", "nss_provision"):
        assert {"users", "homes", "include_thunderbird", "include_chromium"} <= set(docs[m]["doc"]["options"]), m
    for m in ("nss_certificate", "nss_pkcs11_module", "nss_provision"):
        assert {"backup", "fail_fast"} <= set(docs[m]["doc"]["options"]), m
