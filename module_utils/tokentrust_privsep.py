# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The privilege model: root decides, the owner acts.

tokentrust runs as root (become) but writes into users' Firefox profiles, which their owners control: any file
there can be a symlink, any directory can be swapped. So every open, read, write, backup and lock inside a
user's profile runs in a forked child that has dropped to the profile's owner (supplementary groups, gid, uid):
whatever the user planted, the child can only reach what the user could reach anyway.

- `acting_owner(path)`: who must act on a directory; refuses paths whose control is mixed (a symlink or a
  writable directory of another user on the way) or that leave the expected owner's hands.
- `run_as(owner, fn, ...)`: fn in a forked child as that owner; its result comes back as JSON. An exception in
  the child, or a crash (a PKCS#11 library that segfaults), is a `ChildError` for that call only.
- `profile_lock(directory)`: our own runs serialize per profile (flock on the directory, taken as the owner,
  bounded wait, `BusyError`).
- `read_bounded(path)`: a local input file read with a size bound, regular files only.
"""
from __future__ import annotations

import codecs
import configparser  # noqa: F401 - imported before any child drops privileges (see below)  # pylint: disable=unused-import
import errno
import fcntl
import grp
import json
import os
import pwd
import select
import signal
import stat
import sys
import time

from ansible.module_utils.tokentrust_errors import TokentrustError

# Imported and looked up now, not lazily in a child: a child that dropped to a user can no longer read root-only
# places such as Ansible's module payload in root's ~/.ansible/tmp, or a Python installed under /root.
for _codec in ("utf-8", "utf-8-sig", "ascii", "latin-1", "idna"):
    codecs.lookup(_codec)

MAX_INPUT_BYTES = 1024 * 1024  # a certificate or a CA bundle file is a few KiB; 1 MiB is generous
MAX_RESULT_BYTES = 16 * 1024 * 1024  # what one worker may send back (a profile's certificate list is a few KiB)
DEFAULT_DEADLINE = 300.0  # seconds a worker may take unless its caller gives its own budget
RESULT_FD = 3  # the one descriptor a worker keeps: its result pipe


class PrivilegeError(TokentrustError):
    """A path tokentrust refuses to act on (name says why, for the per-profile result)."""

    kind = "refused"

    def __init__(self, text, name="TT_REFUSED"):
        super().__init__(None, text)
        self.name = name


class BusyError(PrivilegeError):
    kind = "busy"

    def __init__(self, text):
        super().__init__(text, name="TT_BUSY")


class ChildError(TokentrustError):
    """What went wrong in a child: the exception's class, name and text, or the signal that killed it
    (kind "exception" or "signal")."""

    def __init__(self, text, name=None, kind="exception"):
        super().__init__(kind, text)
        self.name = name or "TT_CHILD_FAILED"


# --------------------------------------------------------------------------------------------- who acts


def owner_of_uid(uid, gid=None):
    try:
        pw = pwd.getpwuid(uid)
        return {"uid": uid, "gid": pw.pw_gid if gid is None else gid, "name": pw.pw_name}
    except KeyError:
        return {"uid": uid, "gid": uid if gid is None else gid, "name": str(uid)}


def _group_members(gid):
    members = set()
    try:
        g = grp.getgrgid(gid)
        for n in g.gr_mem:
            try:
                members.add(pwd.getpwnam(n).pw_uid)
            except KeyError:
                pass
    except KeyError:
        pass
    for pw in pwd.getpwall():
        if pw.pw_gid == gid:
            members.add(pw.pw_uid)
    return members


def _controllers(path, seen):
    """uids that control `path` or a directory on its way (can swap or replace it), from lstat of every prefix.

    Raises PrivilegeError for a world-writable directory without the sticky bit on the way.
    """
    out = set()
    cur = "/"
    comps = [c for c in path.split("/") if c]
    for i, comp in enumerate(comps):
        parent = cur
        cur = os.path.join(cur, comp)
        try:
            st = os.lstat(parent)
        except OSError:
            break
        if parent not in seen:
            seen.add(parent)
            out.add(st.st_uid)
            if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
                raise PrivilegeError("%s is world-writable (mode %o) and not sticky: anybody can swap what lies "
                                     "below it; refused" % (parent, stat.S_IMODE(st.st_mode)))
            if st.st_mode & stat.S_IWGRP and not st.st_mode & stat.S_ISVTX:
                out |= _group_members(st.st_gid)
        try:
            lst = os.lstat(cur)
        except OSError:
            break
        if stat.S_ISLNK(lst.st_mode) or i == len(comps) - 1:
            out.add(lst.st_uid)
    return out


def acting_owner(path, expected_uid=None):
    """{uid, gid, name} of the user who must act on directory `path`; PrivilegeError when refused.

    The actor is the owner of the resolved directory. Refused: a directory owned by someone other than
    `expected_uid` (the home's owner for a discovered profile); a path on which another non-root user controls a
    symlink or a directory (mixed control: they could redirect us); root acting below a user-controlled directory.
    Not running as root: the caller acts as itself (it cannot do harm beyond its own rights).
    """
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise PrivilegeError("directory %s does not exist (%s)" % (path, exc.strerror),
                             name="TT_NO_DIRECTORY") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PrivilegeError("%s is not a directory" % path, name="TT_NO_DIRECTORY")
    if os.geteuid() != 0:
        return owner_of_uid(os.geteuid(), os.getegid())
    uid = st.st_uid
    where = path if real == path else "%s (resolves to %s)" % (path, real)
    if expected_uid is not None and uid != expected_uid:
        raise PrivilegeError("%s is owned by uid %d, not by the owner of its home (uid %d): refused (a profile is "
                             "provisioned as its owner, never as root in a path another user controls)"
                             % (where, uid, expected_uid))
    seen = set()
    others = (_controllers(path, seen) | _controllers(real, seen)) - {0, uid}
    if others:
        names = ", ".join(sorted(owner_of_uid(u)["name"] for u in others))
        raise PrivilegeError("%s: the way to it is controlled by %s as well as by its owner %s (a symlink or a "
                             "writable directory): refused" % (where, names, owner_of_uid(uid)["name"]))
    return owner_of_uid(uid)


# --------------------------------------------------------------------------------------------- acting as the owner


def _drop_to(owner):
    uid, gid = owner["uid"], owner["gid"]
    if os.geteuid() != 0 or uid == 0:
        return
    try:
        groups = os.getgrouplist(owner["name"], gid)
    except (KeyError, OSError):
        groups = [gid]
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise OSError("could not drop privileges to uid %d" % uid)
    try:
        os.setuid(0)
    except OSError:
        pass
    else:
        raise OSError("privileges could be regained after dropping to uid %d" % uid)


def _error_fields(exc):
    name = getattr(exc, "name", None)
    if not isinstance(name, str):
        name = None
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError)):
        text = "%s: %s" % (exc.__class__.__name__, text)
    return {"error": text, "name": name or "TT_%s" % exc.__class__.__name__.upper()}


def _clean_child(wfd):
    """In a fresh child, before anything else runs: the result pipe becomes fd 3, stdin/stdout/stderr /dev/null,
    every other descriptor inherited from root (the module's real stdout, a dup of it, other pipes, sockets) is
    closed. Nothing loaded later in this child can write into the module's result or reach root's files."""
    if wfd != RESULT_FD:
        os.dup2(wfd, RESULT_FD)
        os.close(wfd)
    os.set_inheritable(RESULT_FD, False)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(RESULT_FD + 1, _max_fd())
    try:
        os.setpgid(0, 0)  # its own process group: what it starts is killed with it at the deadline
    except OSError:
        pass


def _max_fd():
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 1024)
    except (ValueError, OSError):
        return 65536


def _exited(pid, block):
    """True once child pid has exited, without reaping it (its pid, and so its process group id, stays ours until
    _reap): killing its group then never reaches an unrelated process that reused the number."""
    if not hasattr(os, "waitid"):
        return True
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG))
        except ChildProcessError:
            return True
        except InterruptedError:
            continue
        return info is not None


def _reap(pid):
    """The exit status of child pid (waits for it)."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def _kill_group(pid):
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def run_as(owner, fn, *args, deadline=None, result_limit=MAX_RESULT_BYTES, **kwargs):
    """fn(*args, **kwargs) in a forked child running as `owner`; returns its (JSON-able) result.

    The child starts clean (`_clean_child`: no descriptor of root's but its result pipe, stdin/stdout/stderr on
    /dev/null) before it drops privileges and calls fn. Its result is one JSON document on that pipe, read with
    a size bound (`result_limit`) and a time bound: at `deadline` (seconds from now, default DEFAULT_DEADLINE) the
    child and its process group are killed and the call is a ChildError (name TT_DEADLINE).

    Raises ChildError when fn raised (with its text and name) or the child died (a signal, e.g. a crashing
    PKCS#11 library). The parent never touches what the child touches.
    """
    limit_s = DEFAULT_DEADLINE if deadline is None else max(float(deadline), 0.05)
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        _child_main(rfd, wfd, owner, fn, args, kwargs)  # never returns
    os.close(wfd)
    chunks, why = _read_result(rfd, pid, limit_s, result_limit)
    if why:
        _kill_group(pid)
    _exited(pid, block=True)
    _kill_group(pid)  # whatever the worker started and left behind (its pid is not reaped yet: still ours)
    status = _reap(pid)
    return _outcome(owner, status, why, chunks, limit_s, result_limit)


def _child_main(rfd, wfd, owner, fn, args, kwargs):
    """In the forked child: start clean, drop to `owner`, call fn, write its result on RESULT_FD; never returns."""
    code = 0
    try:
        os.close(rfd)
        _clean_child(wfd)
        os.chdir("/")
        _drop_to(owner)
        payload = {"ok": fn(*args, **kwargs)}
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        payload = _error_fields(exc)
    try:
        data = json.dumps(payload).encode()
    except (TypeError, ValueError) as exc:
        data = json.dumps({"error": "result not serialisable: %s" % exc, "name": "TT_INTERNAL"}).encode()
    try:
        view = memoryview(data)
        while view:
            n = os.write(RESULT_FD, view)
            view = view[n:]
    except OSError:
        code = 3
    os._exit(code)


def _read_result(rfd, pid, limit_s, result_limit):
    """In the parent: read the child's result pipe (closed after) with a size and a time bound.

    Returns (chunks, why): why is None (the pipe ended or the child exited), "deadline" or "size"."""
    chunks, size = [], 0
    end = time.monotonic() + limit_s
    why = None
    try:
        os.set_blocking(rfd, False)
        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                why = "deadline"
                break
            ready = poller.poll(int(min(left, 0.5) * 1000) + 1)
            if ready:
                try:
                    b = os.read(rfd, 65536)
                except BlockingIOError:
                    continue
                if not b:
                    break
                chunks.append(b)
                size += len(b)
                if size > result_limit:
                    why = "size"
                    break
                continue
            # nothing to read: a child that exited while something it started keeps the pipe open is done
            if _exited(pid, block=False):
                break
    finally:
        os.close(rfd)
    return chunks, why


def _outcome(owner, status, why, chunks, limit_s, result_limit):
    """The reaped child's result: fn's value, or a ChildError (deadline, size, signal, no valid result, fn raised)."""
    if why == "deadline":
        raise ChildError("the worker acting as %s did not finish within %.0f s (a file that never ends, a FIFO, a "
                         "lock held by its owner, a hanging library?): it was killed; nothing more was done there"
                         % (owner["name"], limit_s), name="TT_DEADLINE", kind="deadline")
    if why == "size":
        raise ChildError("the worker acting as %s sent a result larger than %d bytes: it was killed and its result "
                         "ignored" % (owner["name"], result_limit), name="TT_RESULT_TOO_LARGE", kind="crash")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = str(sig)
        raise ChildError("the worker acting as %s died with signal %s (a crashing PKCS#11 library or NSS?); this "
                         "database only was affected" % (owner["name"], signame), name="TT_CRASHED", kind="crash")
    raw = b"".join(chunks)
    try:
        payload = json.loads(raw.decode()) if raw else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not ("ok" in payload or isinstance(payload.get("error"), str)):
        raise ChildError("the worker acting as %s exited (status %d) without a valid result" % (
            owner["name"], os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1), kind="crash")
    if "ok" in payload:
        return payload["ok"]
    name = payload.get("name")
    raise ChildError(payload["error"], name=name if isinstance(name, str) else None)


# --------------------------------------------------------------------------------------------- in the profile


class profile_lock:  # noqa: N801 - a context manager
    """Exclusive advisory lock of our own runs on one profile directory (flock on the directory itself, so no
    lock file is left behind), taken as the owner, waiting at most `timeout` seconds; BusyError after that.

    The directory is opened with O_NOFOLLOW and must still be `expect` (dev, inode) when given.
    """

    def __init__(self, directory, timeout=60.0, expect=None):
        self.directory = directory
        self.timeout = float(timeout)
        self.expect = expect
        self.fd = None
        self.waited = 0.0

    def __enter__(self):
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            self.fd = os.open(self.directory, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PrivilegeError("%s became a symlink or not a directory: refused" % self.directory) from None
            raise
        st = os.fstat(self.fd)
        if self.expect and (st.st_dev, st.st_ino) != tuple(self.expect):
            os.close(self.fd)
            raise PrivilegeError("%s was replaced while tokentrust was checking it: refused" % self.directory)
        start = time.monotonic()
        delay = 0.02
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(self.fd)
                    raise
            self.waited = time.monotonic() - start
            if self.waited >= self.timeout:
                os.close(self.fd)
                raise BusyError("%s is busy: another tokentrust run has been working on it for %.0f s (lock_timeout); "
                                "nothing was changed, run again when it has finished" % (self.directory, self.waited))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        self.waited = time.monotonic() - start
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None
        return False


# files an interrupted run (kill -9) of ours, or of NSS on our behalf, can leave in a profile
LEFTOVER_SUFFIX = ".tokentrust-restore"
NEW_PKCS11_TXT = "pkcs11.txt.tokentrust-new"  # tokentrust_nss.database.PKCS11_TXT_NEW: pkcs11.txt being rewritten
STALE_TXU_SECONDS = 60


def clean_leftovers(directory, names=("cert9.db", "key4.db", "pkcs11.txt")):
    """Remove our own leftovers of an interrupted run (call it under profile_lock, never in check mode):
    `<db>.tokentrust-restore` files, `pkcs11.txt.tokentrust-new`, and NSS's `pkcs11.txu` temporary when it is
    older than a minute (NSS renames it at once). Returns the names removed."""
    removed = []
    for p in [os.path.join(directory, n + LEFTOVER_SUFFIX) for n in names] + [os.path.join(directory, NEW_PKCS11_TXT)]:
        try:
            os.unlink(p)
            removed.append(os.path.basename(p))
        except FileNotFoundError:
            pass
        except OSError:  # a read-only file system: left for the database's own check to report (truthfully)
            pass
    txu = os.path.join(directory, "pkcs11.txu")
    try:
        st = os.lstat(txu)
        if time.time() - st.st_mtime > STALE_TXU_SECONDS:
            os.unlink(txu)
            removed.append("pkcs11.txu")
    except OSError:
        pass
    return removed


def read_bounded(path, what="file", limit=MAX_INPUT_BYTES):
    """Bytes of a local input file: a regular file of at most `limit` bytes; ValueError with the reason otherwise
    (OSError when it cannot be opened)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # OSError (missing, no access) to the caller
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("%s: %s is not a regular file (a device, FIFO or directory); give a certificate file"
                             % (what, path))
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError("%s: %s is larger than %d bytes: not a certificate file" % (what, path, limit))
    return data
