"""Locks only root can touch (issue 29, items 2, 3 and 5's input checks): a real unprivileged user, created here,
tries to stall or steer a root run through the project's locks.

The controller's fleet state (module_utils/tokentrust_state.py, written by the callback while every playbook runs)
and the middleware role's lock (module_utils/tokentrust_middleware.py, pcsc_middleware) run as root in a child
process here, each with a hard timeout: a run that waits past its written bound fails the test. Asserted: the
run's duration, the files it wrote (and those it must not have: a link's target), the lock's owner and mode, and
the error's text (who holds the lock).

TT_MODULE_UTILS=<dir> runs another module_utils (how these tests were seen red on main before the fix).
"""
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from tests.hostile import HOSTILE_UIDS
from tests.support.ansible_run import ROOT, run_module

USER = "tt_locker"
MODULE_UTILS = os.environ.get("TT_MODULE_UTILS") or os.path.join(ROOT, "module_utils")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks need root running the code and a real user")


@pytest.fixture
def user():
    subprocess.run(["userdel", "-r", "-f", USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", *HOSTILE_UIDS, USER], check=True)
    yield pwd.getpwnam(USER)
    subprocess.run(["pkill", "-9", "-u", USER], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", USER], capture_output=True)


@pytest.fixture
def shared():
    """A directory the user can reach (the tests' own tmp_path is root-only 0700)."""
    d = tempfile.mkdtemp(prefix="tt-locks-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_user_bg(pw, *cmd):
    return subprocess.Popen(["runuser", "-u", pw.pw_name, "--", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def hold(*cmd):
    """Another root run holding a lock (flock(1) and its child, in a session of their own: stop() kills both)."""
    return subprocess.Popen(list(cmd), start_new_session=True)


def stop(p):
    try:
        os.killpg(p.pid, 9)
    except ProcessLookupError:
        pass
    p.wait()


def as_user(pw, *cmd):
    return subprocess.run(["runuser", "-u", pw.pw_name, "--", *cmd], capture_output=True, text=True)


def root_python(code, timeout=30):
    """`code` as root in a fresh Python with our module_utils importable; (rc, stdout+stderr, seconds)."""
    prog = textwrap.dedent("""
        import sys, ansible.module_utils
        ansible.module_utils.__path__.insert(0, %r)
    """ % MODULE_UTILS) + textwrap.dedent(code)
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("root's run waited past %d s (no bound on the lock wait)" % timeout) from exc
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


UPDATE = """
from ansible.module_utils import tokentrust_state as st
st.LOCK_TIMEOUT = %(timeout)s
try:
    st.update(%(dir)r, {"ws1": {"last_attempt": "2026-01-01T10:00:00Z"}})
except st.StateError as e:
    print("STATE ERROR:", e.message)
    sys.exit(3)
print("UPDATED")
"""


def test_a_user_cannot_hold_the_state_lock(user, shared):
    d = os.path.join(shared, "state")
    rc, out, _ = root_python(UPDATE % {"dir": d, "timeout": 5})
    assert rc == 0, out
    lock = os.path.join(d, ".lock")
    st = os.lstat(lock)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    # the user flocks the lock (read-only is enough for flock(2)) and keeps it
    holder = as_user_bg(user, "flock", "-s", lock, "sleep", "60")
    try:
        time.sleep(1)
        rc, out, secs = root_python(UPDATE % {"dir": d, "timeout": 5}, timeout=40)
        assert rc == 0 and "UPDATED" in out, out
        assert secs < 5, secs
    finally:
        subprocess.run(["pkill", "-9", "-u", USER], capture_output=True)
        holder.wait()
    assert "Permission denied" in holder.stderr.read()


def test_a_lock_wait_is_bounded_and_names_the_holder(shared):
    d = os.path.join(shared, "state")
    rc, out, _ = root_python(UPDATE % {"dir": d, "timeout": 5})
    assert rc == 0, out
    other = hold("flock", os.path.join(d, ".lock"), "sleep", "60")
    try:
        time.sleep(1)
        rc, out, secs = root_python(UPDATE % {"dir": d, "timeout": 2}, timeout=40)
    finally:
        stop(other)
    assert rc == 3, out
    assert "was held for 2s by pid %d (flock, uid 0 root)" % other.pid in out, out
    assert 2 <= secs < 6, secs


def test_a_world_writable_state_directory_is_refused_and_a_planted_link_not_followed(user, shared):
    d = os.path.join(shared, "state")
    os.mkdir(d)
    os.chmod(d, 0o1777)  # a shared working directory
    secret_dir = os.path.join(shared, "rootonly")
    os.mkdir(secret_dir, 0o700)
    target = os.path.join(secret_dir, "created-by-root")
    assert as_user(user, "ln", "-s", target, os.path.join(d, ".lock")).returncode == 0
    assert as_user(user, "ln", "-s", os.path.join(secret_dir, "state-by-root"),
                   os.path.join(d, "state.json")).returncode == 0
    rc, out, _ = root_python(UPDATE % {"dir": d, "timeout": 5})
    assert not os.path.lexists(target), "root created the file a user's link pointed at"
    assert not os.path.lexists(os.path.join(secret_dir, "state-by-root"))
    assert rc == 3 and "group- or world-writable" in out and "nothing written" in out, out
    assert not os.path.exists(os.path.join(d, "not_converged"))


def test_a_state_directory_of_another_user_is_refused(user, shared):
    d = os.path.join(shared, "state")
    os.mkdir(d, 0o755)
    os.chown(d, user.pw_uid, user.pw_gid)
    rc, out, _ = root_python(UPDATE % {"dir": d, "timeout": 5})
    assert rc == 3 and "belongs to uid %d" % user.pw_uid in out, out
    assert os.listdir(d) == []


MIDDLEWARE = """
import time
from ansible.module_utils import tokentrust_middleware as mw
t0 = time.monotonic()
try:
    with mw.Lock(timeout=3):
        print("LOCKED %.1f" % (time.monotonic() - t0))
except mw.MiddlewareError as e:
    print("MIDDLEWARE ERROR:", e.kind, e.message)
    sys.exit(3)
"""
OLD_LOCK = "/run/lock/tokentrust-pcsc-middleware.lock"


@pytest.fixture
def run_lock():
    for p in (OLD_LOCK,):
        if os.path.lexists(p) and os.lstat(p).st_uid != 0:
            os.unlink(p)
    yield
    if os.path.lexists(OLD_LOCK) and os.lstat(OLD_LOCK).st_uid != 0:
        os.unlink(OLD_LOCK)


def test_a_user_holding_a_lock_in_run_lock_does_not_stall_the_middleware_role(user, run_lock):
    if os.path.lexists(OLD_LOCK):
        pytest.skip("%s exists (another run's): not touched" % OLD_LOCK)
    holder = as_user_bg(user, "flock", OLD_LOCK, "sleep", "60")
    try:
        time.sleep(1)
        rc, out, secs = root_python(MIDDLEWARE, timeout=40)
    finally:
        subprocess.run(["pkill", "-9", "-u", USER], capture_output=True)
        holder.wait()
    assert rc == 0 and "LOCKED" in out, out
    assert secs < 3, secs
    st = os.lstat("/run/tokentrust")
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    st = os.lstat("/run/tokentrust/pcsc-middleware.lock")
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600


def test_a_link_planted_in_run_lock_is_not_followed(user, run_lock, shared):
    if os.path.lexists(OLD_LOCK):
        pytest.skip("%s exists (another run's): not touched" % OLD_LOCK)
    target = os.path.join(shared, "made-by-root")
    assert as_user(user, "ln", "-s", target, OLD_LOCK).returncode == 0
    rc, out, _ = root_python(MIDDLEWARE, timeout=40)
    assert rc == 0 and "LOCKED" in out, out
    assert not os.path.lexists(target)


def test_a_middleware_lock_held_by_another_run_is_bounded_and_named():
    os.makedirs("/run/tokentrust", mode=0o700, exist_ok=True)
    lock = "/run/tokentrust/pcsc-middleware.lock"
    other = hold("flock", lock, "sleep", "60")
    try:
        time.sleep(1)
        rc, out, secs = root_python(MIDDLEWARE, timeout=40)
    finally:
        stop(other)
    assert rc == 3 and "lock_timeout" in out and "was held for 3s by pid %d (flock, uid 0 root)" % other.pid in out, out
    assert secs < 7, secs


@pytest.mark.parametrize("args,msg", [
    ({"lock_timeout": -1}, "lock_timeout must be 0 or more seconds, not -1"),
    ({"polkit_users": ["alice\n"]}, "'alice\\n' is not a user name: it holds a control character"),
    ({"polkit_groups": ["staff\nx"]}, "is not a group name: it holds a control character"),
])
def test_pcsc_middleware_refuses_bad_inputs_with_a_message(args, msg):
    res = run_module("pcsc_middleware", dict(args, verify=False), check=True)
    assert res.get("failed"), res
    assert msg in res["msg"], res["msg"]
    assert "nothing was" in res["msg"]
