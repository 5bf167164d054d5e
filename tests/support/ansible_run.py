"""Run our modules and playbooks through the real ansible CLIs (local connection) and return their results."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def ansible_env(**extra):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.update(extra)
    return env


def run_module(name, args, check=False, diff=False, verbose=False):
    """One module through `ansible localhost -m`; returns the host's result dict (with `_stdout` for log checks)."""
    env = ansible_env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    cmd = [os.path.join(BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-m", name]
    if args:  # `-a {}` would be taken as free-form parameters
        cmd += ["-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if verbose:
        cmd.append("-vvv")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    try:
        out = json.loads(p.stdout[p.stdout.index("{"):])
    except ValueError as exc:
        raise AssertionError("ansible output is not JSON: %s\n%s" % (p.stdout[-3000:], p.stderr[-3000:])) from exc
    res = out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    res["_stdout"] = p.stdout + p.stderr
    return res


def run_playbook(playbook, inventory, extra_vars=None, check=False, diff=False, tags=None, env=None, timeout=900):
    """ansible-playbook with the default callback; returns the CompletedProcess (stdout holds the recap)."""
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", inventory, playbook]
    for k, v in (extra_vars or {}).items():
        cmd += ["-e", json.dumps({k: v})]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if tags:
        cmd += ["--tags", tags]
    return subprocess.run(cmd, cwd=ROOT, env=ansible_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)
