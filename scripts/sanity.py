#!/usr/bin/env python3
"""`ansible-test sanity` in full on the built collection, as a collection maintainer runs it (`make sanity`).

ansible-test runs each sanity test that has Python requirements (pylint, pep8, import, validate-modules,
ansible-doc, yamllint, runtime-metadata, changelog) in a virtual environment of its own, which it creates and
bootstraps with a `get-pip` script downloaded from a CI file host. That host is not reachable here (only the package
registries are), so this script puts a stand-in for that script where ansible-test caches it
(~/.ansible/test/cache/get_pip_<version>.py): the stand-in has this Python's pip install ansible-test's pinned pip
into the new environment; ansible-test then installs its own pinned requirements there, from the package registry,
as it always does. The environments are kept under .cache/ansible-test/ (ansible-test's HOME), so only the first run
installs them: `--prime` does just that (`ansible-test sanity --prime-venvs`), for `make setup`-like steps.

Sanity tests that cannot run here (OFFLINE_SKIPPED) are those ansible-test itself skips for a program that no Debian
package provides; every other test runs, and the run fails if one is skipped for another reason.

  python scripts/sanity.py [--prime] [--out build/sanity] [-- <more ansible-test sanity arguments>]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import build_collection  # noqa: E402

# sanity test -> why it cannot run here (ansible-test skips it with a warning naming the missing program)
OFFLINE_SKIPPED = {
    "pslint": "PSScriptAnalyzer needs PowerShell (pwsh), which Debian does not package and no package registry "
              "reachable here provides",
}

BOOTSTRAP = '''"""Stand-in for ansible-test's get-pip bootstrap (written by scripts/sanity.py): the pip of
{outer} installs the requested packages (ansible-test's pinned pip) into this new virtual environment, from the
package registry."""
import os
import subprocess
import sys

env = {{k: v for k, v in os.environ.items() if k != "PIP_CONFIG_FILE"}}
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([{outer!r}, "-m", "pip", "--python", sys.executable, "install", "-q"] + args, env=env))
'''


def ansible_test():
    return os.path.join(os.path.dirname(sys.executable), "ansible-test")


def default_home():
    return os.environ.get("TOKENTRUST_SANITY_HOME") or os.path.join(ROOT, ".cache", "ansible-test")


def pip_versions():
    """The pip version(s) ansible-test bootstraps its environments with (python_requirements.get_venv_packages)."""
    import ansible_test

    path = os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")
    with open(path, encoding="utf-8") as f:
        found = set(re.findall(r"pip='(\d+(?:\.\d+)+)'", f.read()))
    if not found:
        raise RuntimeError(f"{path}: no pip='<version>' found: ansible-test changed how it bootstraps pip")
    return sorted(found)


def install_bootstrap(home):
    """The stand-in get-pip script, for every pip version this ansible-test may ask for; returns their paths."""
    cache = os.path.join(home, ".ansible", "test", "cache")
    os.makedirs(cache, exist_ok=True)
    paths = []
    for version in pip_versions():
        path = os.path.join(cache, "get_pip_%s.py" % version.replace(".", "_"))
        with open(path, "w", encoding="utf-8") as f:
            f.write(BOOTSTRAP.format(outer=sys.executable))
        paths.append(path)
    return paths


def sanity_env(home, collections_root):
    """Nothing of this repository's Ansible configuration: the built tree only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(home), ANSIBLE_COLLECTIONS_PATH=str(collections_root),
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    return env


def run(tree, collections_root, home=None, args=(), timeout=1800):
    """ansible-test sanity --local on the controller's Python, in the built tree: the CompletedProcess."""
    home = home or default_home()
    install_bootstrap(home)
    python = "%d.%d" % sys.version_info[:2]
    cmd = [ansible_test(), "sanity", "--local", "--python", python, "--color", "no", *args]
    return subprocess.run(cmd, cwd=str(tree), env=sanity_env(home, collections_root), capture_output=True, text=True,
                          timeout=timeout)


def skipped(output):
    """{test: reason} of the tests ansible-test skipped for a missing program, from its warnings."""
    out = {}
    current = None
    for line in output.splitlines():
        if line.startswith("WARNING: Reviewing previous"):  # the warnings repeated at the end
            break
        m = re.match(r'Running sanity test "([\w-]+)"', line)
        if m:
            current = m.group(1)
        m = re.match(r'WARNING: Required program "([^"]+)" not found', line)
        if m and current:
            out[current] = m.group(1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "sanity"), help="where the collection is built")
    ap.add_argument("--prime", action="store_true", help="only create ansible-test's environments (--prime-venvs)")
    ap.add_argument("rest", nargs="*", help="more ansible-test sanity arguments (after --)")
    a = ap.parse_args(argv)
    _tarball, tree = build_collection.build(a.out)
    p = run(tree, a.out, args=(["--prime-venvs"] if a.prime else []) + a.rest)
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr)
    unexpected = {t: prog for t, prog in skipped(p.stdout + p.stderr).items() if t not in OFFLINE_SKIPPED}
    if unexpected:
        print(f"sanity: skipped for a missing program, and not known to be impossible here: {unexpected}",
              file=sys.stderr)
        return 1
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
