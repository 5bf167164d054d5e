"""Time bounds a user cannot stretch (issue 29, item 5): nss_info (what the report runs) has per-home and per-run
budgets, as nss_provision has; negative lock timeouts are refused with a written error.

A real unprivileged user, created here, owns three profiles and SIGSTOPs their own workers (the children that
nss_info runs as them) as soon as they appear: on main each read waited its whole 120 s (245 s in the audit for two).
Asserted: the call's duration, each database's error and error name.
"""
import os
import pwd
import subprocess
import time

import pytest

from tests.hostile import HOSTILE_UIDS
from tests.support.ansible_run import run_module

USER = "tt_stopper"
STOPPER = """
import os, signal
me, self = os.getuid(), os.getpid()
while True:
    with open("/proc/loadavg") as f:  # its last field: the newest pid; the workers are among the newest
        last = int(f.read().split()[-1])
    for pid in range(last - 8, last + 1):
        if pid == self:
            continue
        try:
            with open("/proc/%d/status" % pid) as f:  # not stat(): a worker that dropped from root is not dumpable
                uid = [l.split()[1] for l in f if l.startswith("Uid:")][0]
            if int(uid) == me:  # a process of theirs but this one: the workers nss_info runs as them
                os.kill(pid, signal.SIGSTOP)
        except (OSError, IndexError, ValueError):
            pass
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs root running the module and a real user")


@pytest.fixture
def user():
    subprocess.run(["userdel", "-r", "-f", USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", *HOSTILE_UIDS, USER], check=True)
    yield pwd.getpwnam(USER)
    subprocess.run(["pkill", "-9", "-u", USER], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", USER], capture_output=True)


def test_nss_info_stops_at_the_home_budget_when_a_user_stops_their_workers(user):
    profiles = [os.path.join(user.pw_dir, ".mozilla", "firefox", "p%d" % i) for i in range(3)]
    subprocess.run(["runuser", "-u", USER, "--", "mkdir", "-p", *profiles], check=True)
    for p in profiles:  # real databases, as Firefox leaves them
        subprocess.run(["runuser", "-u", USER, "--", "certutil", "-N", "--empty-password", "-d", "sql:" + p],
                       check=True, capture_output=True)
    # what the user can do to their own processes: stop every worker run as them, as soon as it appears
    stopper = subprocess.Popen(["runuser", "-u", USER, "--", "python3", "-c", STOPPER])
    time.sleep(0.5)
    t0 = time.monotonic()
    try:
        r = run_module("nss_info", {"databases": profiles, "home_budget": 6})
    finally:
        subprocess.run(["pkill", "-9", "-u", USER], capture_output=True)
        stopper.wait()
    secs = time.monotonic() - t0
    print("nss_info with a user stopping their 3 workers, home_budget 6: %.1f s" % secs)
    assert secs < 30, secs
    errs = [(d.get("error_name"), d.get("error") or "") for d in r["databases"]]
    assert len(errs) == 3 and all(e for _, e in errs), r
    assert errs[0][0] == "TT_DEADLINE", errs
    assert any(n == "TT_TIME_BUDGET" and "time budget of %s's profiles" % USER in e for n, e in errs[1:]), errs


@pytest.mark.parametrize("module,args,msg", [
    ("nss_info", {"databases": [], "home_budget": -1}, "home_budget must be more than 0 seconds, not -1"),
    ("nss_provision", {"databases": [], "lock_timeout": -5}, "lock_timeout must be 0 or more seconds, not -5"),
])
def test_negative_bounds_are_refused_with_a_message(tmp_path, module, args, msg):
    args = dict(args, databases=[str(tmp_path)])
    r = run_module(module, args)
    assert r.get("failed") and msg in r["msg"], r
    assert os.listdir(tmp_path) == []
