"""Hostile tests of the privilege model (issue 11): a real unprivileged user, created here, attacks the root run.

The module runs as root (through ansible, or provision() in-process as root); the user owns a home and plants
symlinks, traversal paths, leftovers. Every test asserts that nothing outside the user's reach was read or
written (bytes, owner and mode of root's files), that the other profiles still completed, and what was reported.
Concurrency and kill -9 tests run at a small size here; their figures are printed (pytest -s shows them).
"""
import hashlib
import json
import os
import pwd
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.hostile import HOSTILE_UIDS
from tests.support.ansible_run import ROOT, run_module
from tests.support.ca import standin_ca_set
from tests.support.nsstools import certutil_list, modutil_modules

OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
USER = "tt_hostile"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks need root running the module and a real user")


@pytest.fixture(scope="module")
def ca_set():
    return standin_ca_set()


@pytest.fixture
def user():
    subprocess.run(["userdel", "-r", "-f", USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", *HOSTILE_UIDS, USER], check=True)
    yield pwd.getpwnam(USER)
    subprocess.run(["pkill", "-9", "-u", USER], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", USER], capture_output=True)


def as_user(pw, *cmd):
    return subprocess.run(["runuser", "-u", pw.pw_name, "--", *cmd], check=True, capture_output=True, text=True)


def user_profiles(pw, names, extra_ini=""):
    """profiles.ini and profile directories made by the user (as Firefox -CreateProfile would), no database yet."""
    root = os.path.join(pw.pw_dir, ".mozilla", "firefox")
    ini = ["[General]", "StartWithLastProfile=1", ""]
    paths = []
    for i, n in enumerate(names):
        ini += ["[Profile%d]" % i, "Name=%s" % n, "IsRelative=1", "Path=%s" % n, ""]
        paths.append(os.path.join(root, n))
    as_user(pw, "mkdir", "-p", *paths)
    ini_path = os.path.join(root, "profiles.ini")
    with open(ini_path, "w") as f:
        f.write("\n".join(ini) + extra_ini)
    os.chown(ini_path, pw.pw_uid, pw.pw_gid)
    return root, paths


def plant(pw, target, link):
    """The user plants a symlink (owned by the user)."""
    as_user(pw, "ln", "-sfn", target, link)


def victim(tmp_path, name="secret", content=b"root only: do not touch\n"):
    """A root-owned 0600 file in a root-only 0700 directory."""
    d = tmp_path / "rootonly"
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    p = d / name
    p.write_bytes(content)
    os.chmod(p, 0o600)
    return str(p)


def fingerprint(path):
    st = os.lstat(path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_ino


def all_files_owned_by(pw, top):
    bad = []
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            st = os.lstat(os.path.join(d, n))
            if st.st_uid != pw.pw_uid:
                bad.append(os.path.join(d, n))
    return bad


# ---------------------------------------------------------------------------------------------- 1: restore path


def test_restore_never_follows_a_planted_symlink(user, ca_set, tmp_path, monkeypatch):
    """Item 1: the restore of a failed write, with <db>.tokentrust-restore planted as a link to a root file."""
    from ansible.module_utils import tokentrust_nss
    from ansible.module_utils.tokentrust_nss import NSSError
    from ansible.module_utils.tokentrust_nss.database import NSSDatabase
    from ansible.module_utils.tokentrust_provision import normalise_certificates, normalise_databases, provision

    _, (prof,) = user_profiles(user, ["work"])
    certs = normalise_certificates(ca_set)
    dbs = normalise_databases([prof])
    results, changed, failed, _ = provision(dbs, certs[:1], None)
    assert changed and not failed, results
    target = victim(tmp_path)
    before = fingerprint(target)
    for name in ("cert9.db", "key4.db", "pkcs11.txt"):
        plant(user, target, os.path.join(prof, name + ".tokentrust-restore"))

    real_add = NSSDatabase.add_certificate
    calls = {"n": 0}

    def add_then_fail(self, der, nickname, trust="C,,"):
        calls["n"] += 1
        out = real_add(self, der, nickname, trust)  # the first write lands in cert9.db
        if calls["n"] == 2:
            raise NSSError("add certificate %r" % nickname, self.spec, name="TT_TEST_FAILURE", text="induced failure")
        return out

    monkeypatch.setattr(NSSDatabase, "add_certificate", add_then_fail)
    assert tokentrust_nss  # the class patched above is the one the worker uses
    results, changed, failed, _ = provision(normalise_databases([prof]), normalise_certificates(ca_set), None)
    assert failed == [prof] and "induced failure" in results[0]["error"]
    assert fingerprint(target) == before, "root's file was written, re-owned or re-moded"
    for name in ("cert9.db", "key4.db"):
        p = os.path.join(prof, name)
        assert not os.path.islink(p) and os.stat(p).st_uid == user.pw_uid
        assert not os.path.lexists(p + ".tokentrust-restore")
    # the failed run was rolled back: only the first run's certificate
    first = certs[0]["name"]
    assert set(certutil_list(prof)) == {first}


# ---------------------------------------------------------------------------------------------- 2: symlinks


def test_symlinked_database_files_are_refused_and_never_read(user, ca_set, tmp_path):
    """Item 2: pkcs11.txt -> a root-only file, cert9.db -> root's own NSS database; backup on."""
    _, (evil, good) = user_profiles(user, ["evil", "good"])
    secret = victim(tmp_path, "pkcs11-secret", b"library=\nname=root secret module\nSECRET-TOKEN-1234\n")
    rootdb = tmp_path / "rootonly" / "nssdb"
    rootdb.mkdir()
    subprocess.run(["certutil", "-N", "-d", "sql:%s" % rootdb, "--empty-password"], check=True, capture_output=True)
    plant(user, secret, os.path.join(evil, "pkcs11.txt"))
    plant(user, str(rootdb / "cert9.db"), os.path.join(evil, "cert9.db"))
    before = {p: fingerprint(p) for p in (secret, str(rootdb / "cert9.db"), str(rootdb / "key4.db"))}
    r = run_module("nss_provision", {"users": [USER], "certificates": ca_set, "module_library": OPENSC,
                                     "backup": True})
    assert r["failed"] is True and r["failed_databases"] == [evil], r
    err = [d for d in r["databases"] if d["path"] == evil][0]
    assert err["error_name"] == "TT_SYMLINK" and "symbolic link" in err["error"]
    assert {p: fingerprint(p) for p in before} == before
    assert "gem" in modutil_modules(good) and len(certutil_list(good)) == len(ca_set)
    # nothing of the secret reached a file the user can read
    for d, _, files in os.walk(user.pw_dir):
        for n in files:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    assert b"SECRET-TOKEN-1234" not in f.read(), p
    assert all_files_owned_by(user, user.pw_dir) == []


# ---------------------------------------------------------------------------------------------- 3: outside the home


@pytest.fixture
def request_cleanup():
    todo = []
    yield todo
    for f in todo:
        f()


def test_profiles_outside_the_home_are_refused(user, ca_set, request_cleanup):
    """Item 3: profiles.ini Path=../../.. into a root directory, a profile directory that is a symlink to one."""
    import pathlib
    import tempfile

    # root directories the user can see (as /etc): a root-only one is already out of the user's reach
    top = pathlib.Path(tempfile.mkdtemp(prefix="tt-escape-", dir="/tmp"))
    request_cleanup.append(lambda: shutil.rmtree(top, ignore_errors=True))
    os.chmod(top, 0o755)
    target_rel = top / "escape-rel"
    target_link = top / "escape-link"
    target_rel.mkdir()
    target_link.mkdir()
    root, (ok,) = user_profiles(user, ["ok"])
    ups = "../" * (root.count("/"))
    extra = ("[Profile1]\nName=rel\nIsRelative=1\nPath=%s%s\n\n[Profile2]\nName=link\nIsRelative=1\nPath=linked\n"
             % (ups, str(target_rel).lstrip("/")))
    with open(os.path.join(root, "profiles.ini"), "a") as f:
        f.write(extra)
    plant(user, str(target_link), os.path.join(root, "linked"))
    r = run_module("nss_provision", {"users": [USER], "certificates": ca_set, "module_library": OPENSC})
    assert r["failed"] is True, r
    refused = {x["path"]: x["reason"] for x in r["refused"]}
    assert len(refused) == 2 and all("outside the home" in why for why in refused.values()), refused
    assert os.listdir(target_rel) == [] and os.listdir(target_link) == []
    assert len(certutil_list(ok)) == len(ca_set)
    info = run_module("firefox_profiles_info", {"users": [USER]})
    assert [p["path"] for p in info["profiles"]] == [ok] and len(info["refused"]) == 2


# ---------------------------------------------------------------------------------------------- 4: one bad profile


CRASH_C = r"""
#include <signal.h>
int C_GetFunctionList(void **list) { (void)list; raise(SIGSEGV); return 0; }
"""


def test_one_bad_profile_fails_alone_even_a_crashing_library(user, ca_set, request_cleanup):
    """Item 4: a dangling cert9.db link in one profile; a PKCS#11 library that segfaults when NSS loads it."""
    _, (broken, fine) = user_profiles(user, ["broken", "fine"])
    plant(user, "/nonexistent/cert9.db", os.path.join(broken, "cert9.db"))
    r = run_module("nss_provision", {"users": [USER], "certificates": ca_set, "module_library": OPENSC})
    assert r["failed"] is True and r["failed_databases"] == [broken], r
    assert "Module result deserialization" not in r.get("msg", "")
    assert len(certutil_list(fine)) == len(ca_set) and modutil_modules(fine)["gem"] == OPENSC

    import pathlib
    import tempfile

    libdir = pathlib.Path(tempfile.mkdtemp(prefix="tt-crashlib-", dir="/tmp"))  # readable by the user, as /usr/lib
    request_cleanup.append(lambda: shutil.rmtree(libdir, ignore_errors=True))
    os.chmod(libdir, 0o755)
    src = libdir / "crash.c"
    src.write_text(CRASH_C)
    lib = libdir / "libcrash.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    _, (p1, p2) = user_profiles(user, ["c1", "c2"])
    args = {"databases": [p1, p2], "certificates": ca_set, "module_name": "crashy", "module_library": str(lib),
            "missing_library": "fail"}
    # issue 29: the library is proved first, in a disposable child as nobody; one that crashes is not registered
    # (on main it was, and Firefox then crashed at every start), the run itself survives, the CA set is in place.
    # f8c7a58 loaded it in the provisioning worker, which died with SIGSEGV.
    r = run_module("nss_provision", args)
    assert r.get("failed") and r["changed"] is True and "CA set is in place" in r["msg"], r
    for p in (p1, p2):
        copy = pathlib.Path(tempfile.mkdtemp(prefix="tt-copy-"))
        request_cleanup.append(lambda c=copy: shutil.rmtree(c, ignore_errors=True))
        for n in ("cert9.db", "key4.db"):
            shutil.copyfile(os.path.join(p, n), copy / n)
        assert len(certutil_list(str(copy))) == len(ca_set)
        txt = os.path.join(p, "pkcs11.txt")
        assert not os.path.exists(txt) or str(lib) not in open(txt).read()
    mods = [d["module"] or {} for d in r["databases"]]
    assert all("crashed" in (m.get("error") or "") and str(lib) in m["error"] for m in mods), mods
    r = run_module("nss_provision", args)
    assert r.get("failed") and r["changed"] is False, r


# ---------------------------------------------------------------------------------------------- 5: concurrency


def _runner(spec):
    return subprocess.Popen([sys.executable, "-m", "tests.support.provision_runner", json.dumps(spec)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_at_once_lose_no_update(ca_set, tmp_path):
    """Item 5: two runs at once, two different modules and halves of the CA set, on the same profiles."""
    libs = []
    for n in ("a", "b"):
        p = tmp_path / ("libmod%s.so" % n)
        shutil.copy(OPENSC, p)
        libs.append(str(p))
    # small in CI; TT_HOSTILE_SCALE=N multiplies (the closing note's figures come from a larger run)
    scale = int(os.environ.get("TT_HOSTILE_SCALE", "1"))
    rounds, nprof = 4 * scale, 4
    lost = {"module": 0, "certificate": 0, "said_changed_not_on_disk": 0}
    runs = 0
    for k in range(rounds):
        profs = []
        for i in range(nprof):
            d = tmp_path / ("r%d" % k) / ("p%d" % i)
            d.mkdir(parents=True)
            profs.append(str(d))
        half = len(ca_set) // 2
        specs = [{"databases": profs, "certificates": ca_set[:half], "module": {"name": "moda", "library": libs[0]}},
                 {"databases": profs, "certificates": ca_set[half:], "module": {"name": "modb", "library": libs[1]}}]
        procs = [_runner(s) for s in specs]
        outs = []
        for p in procs:
            o, e = p.communicate(timeout=300)
            assert p.returncode == 0, e
            outs.append(json.loads(o))
        runs += 2 * nprof
        for out in outs:
            assert out["failed"] == [], out
        for i, prof in enumerate(profs):
            mods = modutil_modules(prof)
            certs = certutil_list(prof)
            lost["module"] += ("moda" not in mods) + ("modb" not in mods)
            lost["certificate"] += sum(1 for c in ca_set if c["name"] not in certs)
            for out in outs:
                r = out["results"][i]
                if r["changed"] and r["module"]["action"] == "add" and r["module"]["name"] not in mods:
                    lost["said_changed_not_on_disk"] += 1
            with open(os.path.join(prof, "pkcs11.txt")) as f:
                text = f.read()
            assert text.count("NSS Internal PKCS #11 Module") == 1, text
    print("\nconcurrency: %d profile-runs, lost updates %s" % (runs, lost))
    assert lost == {"module": 0, "certificate": 0, "said_changed_not_on_disk": 0}


def test_busy_profile_gives_a_clear_busy_result(ca_set, tmp_path):
    import fcntl

    prof = tmp_path / "p"
    prof.mkdir()
    fd = os.open(prof, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run of ours holds the profile
    try:
        p = _runner({"databases": [str(prof)], "certificates": ca_set, "lock_timeout": 1})
        out = json.loads(p.communicate(timeout=120)[0])
    finally:
        os.close(fd)
    r = out["results"][0]
    assert out["failed"] == [str(prof)] and r["error_name"] == "TT_BUSY" and "busy" in r["error"], r
    assert not (prof / "cert9.db").exists()


# ---------------------------------------------------------------------------------------------- 6, 7: bad input


@pytest.mark.parametrize("name,message", [
    ("gem\nlibrary=/tmp/evil.so\nname=evil", "control characters"),
    ("", "is empty"),
    ("x" * 200, "at most 128"),
])
def test_module_name_is_validated(name, message, ca_set, tmp_path):
    prof = tmp_path / "p"
    prof.mkdir()
    r = run_module("nss_provision", {"databases": [str(prof)], "certificates": ca_set, "module_name": name,
                                     "module_library": OPENSC})
    assert r["failed"] is True and message in r["msg"], r
    assert os.listdir(prof) == []


def test_nickname_with_control_characters_is_refused(ca_set, tmp_path):
    prof = tmp_path / "p"
    prof.mkdir()
    bad = [dict(ca_set[0], name="Root\nCA")]
    r = run_module("nss_provision", {"databases": [str(prof)], "certificates": bad, "module_state": "ignore"})
    assert r["failed"] is True and "control characters" in r["msg"], r


def test_unbounded_inputs_are_refused_with_a_reason(ca_set, tmp_path):
    prof = tmp_path / "p"
    prof.mkdir()
    zero = [{"name": "Zero", "path": "/dev/zero"}]
    r = run_module("nss_provision", {"databases": [str(prof)], "certificates": zero, "module_state": "ignore"})
    assert r["failed"] is True and "/dev/zero is not a regular file" in r["msg"], r
    big = tmp_path / "big.pem"
    with open(big, "wb") as f:
        f.truncate(5 * 1024 * 1024)
    r = run_module("nss_provision", {"databases": [str(prof)], "certificates": [{"name": "Big", "path": str(big)}],
                                     "module_state": "ignore"})
    assert r["failed"] is True and "larger than" in r["msg"], r
    r = run_module("ca_bundle", {"dest": str(tmp_path / "cache"), "cas": [
        {"name": "Zero", "sha256": "AA" * 32, "path": "/dev/zero"}]})
    assert r["failed"] is True and "not a regular file" in json.dumps(r), r


def test_backup_keeps_the_original_mode(user, ca_set):
    _, (prof,) = user_profiles(user, ["work"])
    run_module("nss_provision", {"users": [USER], "certificates": ca_set[:1], "module_state": "ignore"})
    modes = {n: stat.S_IMODE(os.stat(os.path.join(prof, n)).st_mode) for n in ("cert9.db", "key4.db")}
    assert set(modes.values()) == {0o600}, modes
    r = run_module("nss_provision", {"users": [USER], "certificates": ca_set, "module_state": "ignore",
                                     "backup": True})
    dest = r["databases"][0]["backup"]
    assert dest and os.path.isdir(dest)
    for n, mode in modes.items():
        st = os.stat(os.path.join(dest, n))
        assert stat.S_IMODE(st.st_mode) == mode and st.st_uid == user.pw_uid, n
    assert all_files_owned_by(user, user.pw_dir) == []


def test_fleet_report_unwritable_dest_fails_cleanly(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    r = run_module("fleet_report", {"hosts": [], "dest": str(blocker / "reports"), "check_policies": False})
    assert r["failed"] is True and "cannot write the report into" in r["msg"], r
    assert "Traceback" not in r.get("module_stderr", "")


# ---------------------------------------------------------------------------------------------- 8: kill -9


def test_kill9_loop_never_corrupts_and_leftovers_are_cleaned(ca_set, tmp_path):
    scale = int(os.environ.get("TT_HOSTILE_SCALE", "1"))
    profs = []
    for i in range(4 * scale):
        d = tmp_path / ("p%d" % i)
        d.mkdir()
        profs.append(str(d))
    lib = str(tmp_path / "libgem.so")
    shutil.copy(OPENSC, lib)
    spec = {"databases": profs, "certificates": ca_set, "module": {"name": "gem", "library": lib}}
    rnd = random.Random(11)
    kills = 0
    for _ in range(8 * scale):
        p = _runner(spec)
        time.sleep(rnd.uniform(0.05, 0.6))
        if p.poll() is None:
            # kill the whole group of ours: the runner and its per-profile workers
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.communicate()
        subprocess.run(["pkill", "-9", "-f", "tests.support.provision_runner"], capture_output=True)
    # what an interrupted run can leave behind
    old = time.time() - 3600
    for prof in profs[:2]:
        leftover = os.path.join(prof, "pkcs11.txu")
        with open(leftover, "w") as f:
            f.write("library=\n")
        os.utime(leftover, (old, old))
        with open(os.path.join(prof, "cert9.db.tokentrust-restore"), "wb") as f:
            f.write(b"partial")
    corrupted = 0
    for prof in profs:
        if os.path.exists(os.path.join(prof, "cert9.db")):
            cu = subprocess.run(["certutil", "-L", "-d", "sql:%s" % prof], capture_output=True, text=True)
            ok = cu.returncode == 0
            if not ok:
                sizes = {n: os.path.getsize(os.path.join(prof, n)) for n in os.listdir(prof)}
                print("\ncorrupted %s: %s %s" % (prof, cu.stderr.strip(), sizes))
            corrupted += not ok
    out = json.loads(_runner(spec).communicate(timeout=300)[0])
    assert out["failed"] == [], out
    for prof in profs:
        assert len(certutil_list(prof)) == len(ca_set) and modutil_modules(prof)["gem"] == lib
        assert not os.path.exists(os.path.join(prof, "pkcs11.txu"))
        assert not os.path.exists(os.path.join(prof, "cert9.db.tokentrust-restore"))
    again = json.loads(_runner(spec).communicate(timeout=300)[0])
    assert again["changed"] is False
    print("\nkill -9: %d kills over %d profiles, %d corrupted databases, converged on the next run"
          % (kills, len(profs), corrupted))
    assert corrupted == 0


# ---------------------------------------------------------------------------------------------- issue 10, item 5


def test_an_unloadable_token_library_does_not_cost_the_ca_set(ca_set, tmp_path):
    """A PKCS#11 library that exists but cannot be loaded (not a shared object, as opensc without libpcsclite1
    fails to load): every certificate is imported all the same; the module is a warning (warn) or a failure."""
    bad = tmp_path / "libbroken.so"
    bad.write_text("not an ELF shared object\n")
    profs = []
    for n in ("a", "b"):
        (tmp_path / n).mkdir()
        profs.append(str(tmp_path / n))
    args = {"databases": profs, "certificates": ca_set, "module_library": str(bad)}
    r = run_module("nss_provision", args)
    assert not r.get("failed") and r["changed"] is True, r
    assert sum("could not be registered" in w for w in r["warnings"]) == 2, r["warnings"]
    for p in profs:
        assert len(certutil_list(p)) == len(ca_set) and "gem" not in modutil_modules(p)
    r = run_module("nss_provision", dict(args, missing_library="fail"))
    assert r["failed"] is True and sorted(r["failed_databases"]) == sorted(profs)
    assert "CA set is in place" in r["msg"]
