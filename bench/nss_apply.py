#!/usr/bin/env python3
"""Apply 4 CA certificates + 1 PKCS#11 module to K fresh profiles.

Compares:
  ours   - tokentrust_nss in-process: one NSS open per profile, all changes, close
  tools  - the obvious alternative: certutil -A per certificate and modutil -add per profile (processes)
  floor  - bare NSS_Initialize + NSS_Shutdown (read-write) on the same kind of databases: nothing faster exists

Prints both times and, last line, `ratio: X` = tools / ours.  Usage: bench/nss_apply.py [K]
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import conftest  # noqa: F401,E402 - makes ansible.module_utils.tokentrust_nss importable
from ansible.module_utils.tokentrust_nss import NSSDatabase  # noqa: E402
from ansible.module_utils.tokentrust_nss._ffi import lib, nss_libdir  # noqa: E402

from lab.pki import certeurope_standin  # noqa: E402

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
# certutil/modutil run on the same NSS build as the bindings (Firefox's own when it ships one)
TOOL_ENV = dict(os.environ, LD_LIBRARY_PATH=nss_libdir() or "")


def fresh_profiles(base, k):
    dirs = []
    for i in range(k):
        d = os.path.join(base, "p%03d" % i)
        os.makedirs(d)
        subprocess.run(["certutil", "-N", "-d", "sql:" + d, "--empty-password"], check=True, capture_output=True,
                       env=TOOL_ENV)
        dirs.append(d)
    return dirs


def run_ours(dirs, certs):
    t = time.perf_counter()
    for d in dirs:
        with NSSDatabase(d, readonly=False) as db:
            for name, der, trust in certs:
                db.add_certificate(der, name, trust)
            db.add_module("gem", MODULE)
    return time.perf_counter() - t


def run_tools(dirs, certs, tmp):
    files = []
    for name, der, trust in certs:
        p = os.path.join(tmp, name.replace(" ", "_") + ".der")
        with open(p, "wb") as f:
            f.write(der)
        files.append((name, p, trust))
    t = time.perf_counter()
    for d in dirs:
        for name, p, trust in files:
            subprocess.run(["certutil", "-A", "-d", "sql:" + d, "-n", name, "-t", trust, "-i", p], check=True,
                           capture_output=True, env=TOOL_ENV)
        subprocess.run(["modutil", "-dbdir", "sql:" + d, "-add", "gem", "-libfile", MODULE, "-force"], check=True,
                       capture_output=True, env=TOOL_ENV)
    return time.perf_counter() - t


def run_floor(dirs):
    os.environ.setdefault("NSS_SDB_USE_CACHE", "no")
    t = time.perf_counter()
    for d in dirs:
        assert lib.nss3.NSS_Initialize(("sql:" + d).encode(), b"", b"", b"secmod.db", 0x10 | 0x20) == 0
        assert lib.nss3.NSS_Shutdown() == 0
    return time.perf_counter() - t


def main():
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    chain = certeurope_standin()
    certs = [(n, c.der, "C,," if c.cert.issuer == c.cert.subject else ",,") for n, c in chain.items()]
    tmp = tempfile.mkdtemp(prefix="tt-bench-")
    try:
        ours = run_ours(fresh_profiles(os.path.join(tmp, "ours"), k), certs)
        tools = run_tools(fresh_profiles(os.path.join(tmp, "tools"), k), certs, tmp)
        floor = run_floor(fresh_profiles(os.path.join(tmp, "floor"), k))
    finally:
        shutil.rmtree(tmp)
    from ansible.module_utils.tokentrust_nss import nss_version

    print("NSS %s from %s (certutil/modutil on the same build)" % (nss_version(), nss_libdir()))
    print("profiles: %d, certificates: %d, modules: 1" % (k, len(certs)))
    print("floor (NSS init+shutdown only): %.3f s  (%.1f ms/profile)" % (floor, 1000 * floor / k))
    print("ours (in-process):              %.3f s  (%.1f ms/profile, %.2fx floor)" % (ours, 1000 * ours / k,
                                                                                       ours / floor))
    print("certutil/modutil processes:     %.3f s  (%.1f ms/profile)" % (tools, 1000 * tools / k))
    print("ratio: %.1f" % (tools / ours))


if __name__ == "__main__":
    main()
