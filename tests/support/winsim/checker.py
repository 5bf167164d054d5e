"""Check every ansible.windows / community.windows task of the Windows roles against `ansible-doc --json`
of the module versions installed here: unknown options, and literal values outside `choices`.

    .venv/bin/python -m tests.support.winsim.checker [role dir ...]

(ansible-lint does not do this for these modules: their argument specs live in PowerShell.)
Templated values ("{{ ... }}") cannot be checked statically; tests/integration/test_windows_roles_sim.py
checks the rendered ones at run time against the same documentation.
"""
import glob
import os
import sys

import yaml

from tests.support.winsim import ROOT, ansible_doc, comma_separated, split_value

PREFIXES = ("ansible.windows.", "community.windows.")
TASK_KEYS = {"name", "when", "loop", "loop_control", "register", "tags", "vars", "no_log", "changed_when",
             "failed_when", "become", "become_user", "become_method", "check_mode", "diff", "ignore_errors",
             "notify", "delegate_to", "run_once", "until", "retries", "delay", "environment", "args", "listen",
             "throttle", "timeout", "async", "poll", "module_defaults", "collections", "any_errors_fatal",
             "ignore_unreachable", "delegate_facts", "debugger", "connection", "with_items", "with_dict"}


def default_dirs():
    roles = os.path.join(ROOT, "roles")
    return sorted(glob.glob(os.path.join(roles, "windows_*"))) + [os.path.join(roles, "token_middleware")]


def module_calls(dirs=None):
    """[(file, task name, fqcn, args)] for every ansible.windows / community.windows task."""
    out = []

    def walk(tasks, path):
        for t in tasks or []:
            if not isinstance(t, dict):
                continue
            for key in ("block", "rescue", "always"):
                walk(t.get(key), path)
            for k, v in t.items():
                if k.startswith(PREFIXES):
                    out.append((os.path.relpath(path, ROOT), t.get("name", "?"), k, v if isinstance(v, dict) else {}))

    for d in dirs or default_dirs():
        files = glob.glob(os.path.join(d, "tasks", "*.yml")) + glob.glob(os.path.join(d, "handlers", "*.yml"))
        for path in sorted(files):
            with open(path, encoding="utf-8") as f:
                walk(yaml.safe_load(f), path)
    return out


def check(calls):
    """Problems, one readable line each (file, task, option, what is allowed)."""
    docs = ansible_doc(tuple(sorted({c[2] for c in calls})))
    problems = []
    for path, name, fqcn, args in calls:
        doc = docs.get(fqcn)
        if doc is None:
            problems.append(f"{path}: task {name!r}: module {fqcn} is not installed")
            continue
        opts = {}
        for oname, o in (doc.get("options") or {}).items():
            for n in [oname, *(o.get("aliases") or [])]:
                opts[n] = o
        for arg, value in args.items():
            if arg not in opts:
                problems.append(f"{path}: task {name!r}: {fqcn} has no option {arg!r} "
                                f"(options: {', '.join(sorted(doc.get('options') or {}))})")
                continue
            choices = opts[arg].get("choices")
            if not choices:
                continue
            for v in split_value(value, comma_separated(opts[arg])):
                if isinstance(v, str) and "{{" in v:
                    continue
                if isinstance(choices, dict):
                    choices = list(choices)
                if str(v) not in [str(c) for c in choices]:
                    problems.append(f"{path}: task {name!r}: {fqcn} option {arg!r} = {v!r} is not one of "
                                    f"{', '.join(map(str, choices))}")
    return problems


def main(argv):
    calls = module_calls(argv or None)
    problems = check(calls)
    for p in problems:
        print(p)
    print(f"{len(calls)} ansible.windows/community.windows task(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
