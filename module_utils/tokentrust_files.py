# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The one atomic write of the modules that write files on the host (firefox_policies, ca_bundle, fleet_report).

write_file(): nothing is written when the content is the same; otherwise a temporary file in the same directory
gets the data, is flushed to disk (fsync) and renamed over the target by AnsibleModule.atomic_move (an existing
file keeps its mode, owner and SELinux context; O(unsafe_writes) honoured), then the directory is synced. The
file attributes of add_file_common_args (mode, owner, group, seuser, serole, setype, selevel, attributes) are
then applied with AnsibleModule.set_fs_attributes_if_different, in check mode too (it only reports), with their
before/after in the diff. A module without those options, or a file with its own owner (firefox_policies'
certificate files), passes `attributes` explicitly.

Writes without an AnsibleModule (the NSS database's pkcs11.txt and restore, in a child that has dropped to the
profile owner; the controller's fleet state) use write_nofollow(): it must never follow a link planted in a user's
profile or a shared directory (O_CREAT | O_EXCL | O_NOFOLLOW on the temporary file, fsync, os.replace), which
atomic_move does not promise. Their locks are lock_file(): a lock file created O_NOFOLLOW 0600 in a directory that
private_dir() checked (owned by us, writable by nobody else), a bounded wait, and a message naming who holds it.
(The pull agent, roles/tokentrust_pull/files/tokentrust_pull.py, runs on a workstation before any content is trusted
and cannot import this file: it keeps a minimal copy of write_nofollow.)
"""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import tempfile
import time

from ansible.module_utils.tokentrust_errors import TokentrustError

FILE_ARGS = ("mode", "owner", "group", "seuser", "serole", "setype", "selevel", "attributes")


class WriteError(TokentrustError):
    """A file could not be written (the message names it and the reason): nothing else was changed after it."""

    def __init__(self, path, exc, hint=None):
        super().__init__("write", "cannot write %s: %s" % (path, getattr(exc, "strerror", None) or exc), hint=hint,
                         path=path)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_args(module, path, attributes=None, default_mode=None):
    """The file attributes to apply to `path`: `attributes` (a dict of FILE_ARGS) when given, else the module's
    common file options (add_file_common_args); `default_mode` (e.g. 0o644) when no mode is asked for. None values
    mean "leave as it is"."""
    params = module.params if attributes is None else dict(attributes)
    args = module.load_file_common_arguments({k: params.get(k) for k in FILE_ARGS}, path=path)
    args["unsafe_writes"] = bool(module.params.get("unsafe_writes"))
    if args.get("mode") is None and default_mode is not None:
        args["mode"] = default_mode
    return args


def write_file(module, path, data, attributes=None, default_mode=0o644, backup=False, create_dir_mode=0o755):
    """Write `data` (bytes or text, UTF-8) to `path` unless it already holds it; apply the file attributes.

    Returns a dict: changed (content or attributes, or would be in check mode), content_changed, backup_file
    (when `backup` and an existing file was replaced), attributes_diff ({"before": {...}, "after": {...}}: what
    set_fs_attributes_if_different changed). `default_mode` is the mode of a new file when no mode is asked for;
    an existing file keeps its own.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    current = _read(path)
    existed = current is not None
    out = {"changed": current != data, "content_changed": current != data, "backup_file": None,
           "attributes_diff": {"before": {}, "after": {}}}
    args = file_args(module, path, attributes, default_mode=None if existed else default_mode)
    if out["content_changed"] and not module.check_mode:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, create_dir_mode)
        if backup and existed:
            out["backup_file"] = module.backup_local(path)
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if not existed and default_mode is not None:
                os.chmod(tmp, default_mode)
            module.atomic_move(tmp, path, unsafe_writes=bool(args.get("unsafe_writes")))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _fsync_dir(directory)
    if os.path.exists(path):  # not yet in check mode for a new file: nothing to compare, `changed` is set already
        out["changed"] = module.set_fs_attributes_if_different(args, out["changed"], diff=out["attributes_diff"])
    return out


def set_attributes(module, path, attributes=None):
    """The file attributes only, on an existing file whose content is left alone; same result as write_file."""
    out = {"changed": False, "content_changed": False, "backup_file": None,
           "attributes_diff": {"before": {}, "after": {}}}
    if os.path.exists(path):
        out["changed"] = module.set_fs_attributes_if_different(file_args(module, path, attributes), False,
                                                               diff=out["attributes_diff"])
    return out


def with_attributes_diff(diff, writes):
    """The module's diff, plus one entry per written file whose attributes changed (the diff becomes a list then);
    `writes` are (path, write_file result) pairs."""
    extra = [{"before_header": "%s (attributes)" % path, "after_header": "%s (attributes)" % path,
              "before": w["attributes_diff"]["before"], "after": w["attributes_diff"]["after"]}
             for path, w in writes if w["attributes_diff"]["before"] or w["attributes_diff"]["after"]]
    if not extra:
        return diff
    return ([diff] if isinstance(diff, dict) else list(diff or [])) + extra


# ------------------------------------------------------------------------------------------ without a module


class LockError(TokentrustError):
    """A lock could not be taken (busy past its bound, or a file or directory others could steer)."""

    def __init__(self, message, path=None, hint=None):
        super().__init__("lock", message, hint=hint, path=path)


def private_dir(path, create_mode=0o700, what="directory"):
    """`path` as a directory we may keep locks and state in: made (create_mode) when missing; refused (LockError)
    when it is a link, not owned by us (or root), or writable by group or others (anyone could plant a link or a
    lock there). Returns its lstat."""
    try:
        os.makedirs(path, mode=create_mode, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise LockError("cannot use the %s %s: %s" % (what, path, exc.strerror or exc), path=path) from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise LockError("the %s %s is not a directory (a link or a file): refused, nothing written" % (what, path),
                        path=path)
    if st.st_uid not in (os.geteuid(), 0):
        raise LockError("the %s %s belongs to uid %d, not to us (uid %d): refused, nothing written"
                        % (what, path, st.st_uid, os.geteuid()), path=path,
                        hint="Use a directory of your own")
    if st.st_mode & 0o022:
        raise LockError("the %s %s is group- or world-writable (mode %04o): another user could plant a link or hold "
                        "a lock there; refused, nothing written" % (what, path, stat.S_IMODE(st.st_mode)), path=path,
                        hint="chmod go-w it, or use a directory only you can write")
    return st


def lock_holders(fd):
    """Who holds a lock on the file open at `fd`, from /proc/locks: ["pid 123 (flock, uid 1000 alice)", ...]."""
    st = os.fstat(fd)
    want = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    out = []
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) < 6 or parts[5] != want:
            continue
        pid = parts[4]
        who = "pid %s" % pid
        try:
            uid = os.stat("/proc/%s" % pid).st_uid
            with open("/proc/%s/comm" % pid, encoding="utf-8", errors="replace") as f:
                comm = f.read(64).strip()
            try:
                import pwd
                name = pwd.getpwuid(uid).pw_name
            except (KeyError, ImportError):
                name = "?"
            who += " (%s, uid %d %s)" % (comm, uid, name)
        except OSError:
            pass
        if who not in out and pid != str(os.getpid()):
            out.append(who)
    return out


class lock_file:
    """flock(2) on <directory>/<name> around a read-modify-write; the directory checked by private_dir(), the file
    opened O_NOFOLLOW and created 0600, refused unless a regular file of ours; the wait bounded by `timeout`
    seconds (LockError naming the holders). `timeout` must be 0 or more."""

    def __init__(self, directory, name, timeout, what="lock", create_mode=0o700):
        if timeout is None or timeout < 0:
            raise LockError("the %s timeout must be 0 or more seconds, not %r" % (what, timeout))
        self.directory, self.path, self.timeout, self.what = directory, os.path.join(directory, name), timeout, what
        self.create_mode, self.fd = create_mode, None

    def __enter__(self):
        private_dir(self.directory, self.create_mode, what="%s directory" % self.what)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            why = "a link was planted there" if exc.errno == errno.ELOOP else exc.strerror or exc
            raise LockError("cannot open the %s %s: %s; refused, nothing written" % (self.what, self.path, why),
                            path=self.path) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise LockError("the %s %s is not a regular file of ours (uid %d, mode %04o): refused, nothing written"
                            % (self.what, self.path, st.st_uid, stat.S_IMODE(st.st_mode)), path=self.path,
                            hint="Remove it; the next run makes it again")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)  # ours but opened up (an earlier release made it 0644): nobody else opens it again
        end = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= end:
                    holders = lock_holders(fd) if exc.errno in (errno.EAGAIN, errno.EACCES) else []
                    os.close(fd)
                    raise LockError("the %s %s was held for %ss by %s" % (
                        self.what, self.path, self.timeout, ", ".join(holders) or "another process"), path=self.path,
                        hint="Run again when it has ended") from exc
                time.sleep(0.1)

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the flock
        self.fd = None
        return False


def write_nofollow(path, data, mode=0o600, uid=None, gid=None, tmp_name=None):
    """Atomically replace `path` with `data` (bytes or text): a temporary file in the same directory created
    O_CREAT | O_EXCL | O_NOFOLLOW with `mode` (a link planted at its name is never followed: a fixed `tmp_name`'s
    leftover is unlinked first, unlink acting on a link itself), written, given `uid`/`gid` (when root) and `mode`,
    fsync'ed, renamed over
    `path`, the directory synced. On any failure the temporary file is removed and `path` is as it was."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    if tmp_name:
        tmp = os.path.join(directory, tmp_name)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    else:
        tmp = os.path.join(directory, ".%s.%s.tmp" % (os.path.basename(path), secrets.token_hex(6)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            st = os.fstat(f.fileno())
            want = (st.st_uid if uid is None else uid, st.st_gid if gid is None else gid)
            if (st.st_uid, st.st_gid) != want and os.geteuid() == 0:  # only root gives a file away
                os.fchown(f.fileno(), *want)
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
