"""Independent checkers: NSS's own command-line tools (certutil, modutil), never our bindings."""
import hashlib
import os
import re
import subprocess


def tool_env():
    """certutil/modutil run against the same NSS build as our bindings (TOKENTRUST_NSS_LIBDIR, e.g. Firefox's)."""
    from ansible.module_utils.tokentrust_nss._ffi import nss_libdir

    env = dict(os.environ)
    libdir = nss_libdir()
    if libdir:
        env["LD_LIBRARY_PATH"] = libdir
    return env


def certutil_list(d):
    """{nickname: trust} as `certutil -L` prints it."""
    out = subprocess.run(["certutil", "-L", "-d", "sql:%s" % d], capture_output=True, text=True, check=True,
                         env=tool_env()).stdout
    return parse_certutil_list(out)


def parse_certutil_list(out):
    """`certutil -L` output -> {nickname: trust}."""
    res = {}
    for line in out.splitlines()[4:]:
        m = re.match(r"^(.*\S)\s+(\S*,\S*,\S*)\s*$", line)
        if m:
            res[m.group(1)] = m.group(2)
    return res


def certutil_der(d, nickname):
    return subprocess.run(["certutil", "-L", "-d", "sql:%s" % d, "-n", nickname, "-r"],
                          capture_output=True, check=True, env=tool_env()).stdout


def modutil_modules(d):
    """{module name: library path or None} from `modutil -list`."""
    out = subprocess.run(["modutil", "-list", "-dbdir", "sql:%s" % d], capture_output=True, text=True,
                         check=True, env=tool_env()).stdout
    mods = {}
    cur = None
    for line in out.splitlines():
        m = re.match(r"^\s+\d+\.\s+(.*)$", line)
        if m:
            cur = m.group(1).strip()
            mods[cur] = None
            continue
        m = re.match(r"^\s+library name:\s+(.*)$", line)
        if m and cur:
            mods[cur] = m.group(1).strip()
    return mods


def snapshot(d):
    """Content hash of every file of a directory (to prove that nothing changed)."""
    res = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                res[name] = hashlib.sha256(f.read()).hexdigest()
    return res
