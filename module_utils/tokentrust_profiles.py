# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find Firefox (and optionally Thunderbird / Chromium) NSS profiles of local users.

Pure Python (stdlib only), read-only; each home is read as its owner
(tokentrust_privsep). Sources of truth are each root's `profiles.ini` and
`installs.ini`:

    [Profile0]                 [Install4F96D1932A9F858E]      (installs.ini, or the same
    Name=default-esr           Default=abcd.default-esr        section inside profiles.ini)
    IsRelative=1               Locked=1
    Path=abcd.default-esr
    Default=1

A root that cannot be parsed is reported with its error; the other roots are still listed.
"""
from __future__ import annotations

import configparser
import errno
import os
import platform
import pwd
import socket
import stat
import struct
import time

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_privsep import ChildError, run_as

MAX_INI_BYTES = 256 * 1024  # profiles.ini / installs.ini list a few profiles: a few hundred bytes
HOME_SCAN_BUDGET = 60  # seconds to scan one home (its owner's worker is killed after that)
SCAN_RUN_BUDGET = 600  # seconds to scan all homes; the homes not reached are reported as not scanned

# (kind, path relative to the home, needs include_*)
FIREFOX_ROOTS = (
    ("firefox", ".mozilla/firefox"),
    ("firefox", ".config/mozilla/firefox"),                        # Firefox 147+ new installs (XDG)
    ("firefox-snap", "snap/firefox/common/.mozilla/firefox"),
    ("firefox-flatpak", ".var/app/org.mozilla.firefox/.mozilla/firefox"),
    ("firefox-flatpak", ".var/app/org.mozilla.firefox/config/mozilla/firefox"),
    ("firefox", "Library/Application Support/Firefox"),           # macOS
)
THUNDERBIRD_ROOTS = (
    ("thunderbird", ".thunderbird"),
    ("thunderbird", "snap/thunderbird/common/.thunderbird"),
    ("thunderbird", ".var/app/org.mozilla.Thunderbird/.thunderbird"),
    ("thunderbird", "Library/Thunderbird"),                        # macOS
)
CHROMIUM_NSSDB = ".pki/nssdb"

SQL_FILES = ("cert9.db", "key4.db", "pkcs11.txt")
DBM_FILES = ("cert8.db", "key3.db", "secmod.db")


class ProfilesError(TokentrustError):
    """Users or homes that cannot be searched (the message says which and why)."""

    def __init__(self, message):
        super().__init__("profiles", message)


# ---------------------------------------------------------------------------------------------
# users and homes
# ---------------------------------------------------------------------------------------------
def _min_uid():
    return 500 if platform.system() == "Darwin" else 1000


def _real_home(home):
    return bool(home) and home not in ("/", "/nonexistent", "/dev/null", "/var/empty") and os.path.isdir(home)


def _owner(uid, gid):
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return {"name": name, "uid": uid, "gid": gid}


def select_homes(users=None, homes=None):
    """List of (home, owner dict) to scan.

    `homes` (explicit dirs, owner = the dir's owner) wins; else `users` (names, looked up in
    pwd); else every user with a real home and uid >= 1000 (500 on macOS), plus root.
    """
    out = []
    if homes:
        for h in homes:
            h = os.path.abspath(os.path.expanduser(h))
            try:
                st = os.stat(h)
            except OSError as e:
                raise ProfilesError(f"home {h}: {e.strerror}") from e
            out.append((h, _owner(st.st_uid, st.st_gid)))
        return out
    if users:
        for u in users:
            try:
                pw = pwd.getpwnam(u)
            except KeyError:
                raise ProfilesError(f"user {u!r} does not exist on this host") from None
            out.append((pw.pw_dir, {"name": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid}))
        return out
    seen = set()
    for pw in sorted(pwd.getpwall(), key=lambda p: p.pw_uid):
        if not (pw.pw_uid == 0 or (pw.pw_uid >= _min_uid() and pw.pw_uid != 65534)):
            continue
        if not _real_home(pw.pw_dir) or pw.pw_dir in seen:
            continue
        seen.add(pw.pw_dir)
        out.append((pw.pw_dir, {"name": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid}))
    return out


# ---------------------------------------------------------------------------------------------
# per profile
# ---------------------------------------------------------------------------------------------
def db_format(path):
    """sql (cert9.db/key4.db/pkcs11.txt), dbm (cert8.db/key3.db/secmod.db only) or none yet."""
    if any(os.path.exists(os.path.join(path, f)) for f in SQL_FILES):
        return "sql"
    if any(os.path.exists(os.path.join(path, f)) for f in DBM_FILES):
        return "dbm"
    return "none"


def _local_addresses():
    addrs = {"127.0.0.1", "127.0.1.1", "::1"}
    try:
        name = socket.gethostname()
        for info in socket.getaddrinfo(name, None):
            addrs.add(info[4][0])
    except OSError:
        pass
    return addrs


def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def _fcntl_holder(path):
    """pid holding a POSIX lock on `path` (F_GETLK: we never take the lock), or None; None if unsupported."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))  # a FIFO never blocks us
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        if platform.system() == "Linux":
            fmt = "@hhqqi4x"      # struct flock on Linux 64-bit: type, whence, start, len, pid
        elif platform.system() == "Darwin":
            fmt = "@qqihh"        # start, len, pid, type, whence
        else:
            return None
        if fmt.startswith("@hh"):
            req = struct.pack(fmt, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        else:
            req = struct.pack(fmt, 0, 0, 0, fcntl.F_WRLCK, os.SEEK_SET)
        try:
            res = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        except OSError:
            return None
        vals = struct.unpack(fmt, res)
        if fmt.startswith("@hh"):
            l_type, l_pid = vals[0], vals[4]
        else:
            l_type, l_pid = vals[3], vals[2]
        return None if l_type == fcntl.F_UNLCK else (l_pid or -1)
    finally:
        os.close(fd)


def lock_state(path, local_addresses=None):
    """(in_use, how) for a profile dir: Firefox's `lock` symlink ("host:+pid") and `.parentlock` fcntl lock."""
    link = os.path.join(path, "lock")
    if os.path.islink(link):
        target = os.readlink(link)
        host, sep, pid_s = target.rpartition(":+")
        if sep and pid_s.isdigit():
            pid = int(pid_s)
            local = local_addresses if local_addresses is not None else _local_addresses()
            if host not in local:
                return True, f"lock symlink -> {target}: held by another host ({host}), cannot check its pid"
            if _pid_running(pid):
                return True, f"lock symlink -> {target}: pid {pid} is running"
            stale = f"stale lock symlink -> {target} (pid {pid} not running)"
        else:
            stale = f"unrecognised lock symlink -> {target}"
    else:
        stale = None
    parent = os.path.join(path, ".parentlock")
    if os.path.exists(parent):
        holder = _fcntl_holder(parent)
        if holder:
            return True, f".parentlock is locked (fcntl) by pid {holder}"
    if stale:
        return False, stale + "; .parentlock not locked"
    return False, "no lock held (no live lock symlink, .parentlock not locked)"


# ---------------------------------------------------------------------------------------------
# per root
# ---------------------------------------------------------------------------------------------
def read_small_file(path, limit=MAX_INI_BYTES):
    """Text of a small regular file of a user's: opened without blocking, refused (OSError)
    when it is not a regular file (a FIFO, a device) or larger than `limit` (an endless or huge file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # as its owner: a link is theirs to follow, a FIFO never blocks
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a socket): refused", path)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, "larger than %d bytes: refused" % limit, path)
    return data.decode("utf-8-sig")


def _read_ini(path):
    cp = configparser.RawConfigParser(strict=True, interpolation=None)
    cp.optionxform = str
    cp.read_string(read_small_file(path), source=path)
    return cp


def _abs_profile_path(root, value, relative):
    value = value.replace("\\", "/") if os.sep == "/" else value
    return os.path.normpath(os.path.join(root, value) if relative else value)


def scan_root(root, kind, owner, locks=True, local_addresses=None):
    """Profiles of one root (the dir holding profiles.ini): (profiles, root report, warnings)."""
    report = {"path": root, "kind": kind, "user": owner["name"], "profiles": 0, "error": None}
    warnings = []
    ini = os.path.join(root, "profiles.ini")
    try:
        cp = _read_ini(ini)
    except OSError as e:  # not a regular file (a FIFO), too large, unreadable: this root cannot be scanned
        report["error"] = f"profiles.ini cannot be read: {e.strerror or e}"
        report["unreadable"] = True
        warnings.append(f"{ini}: {report['error']}; its profiles are not listed")
        return [], report, warnings
    except (configparser.Error, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        report["error"] = f"malformed profiles.ini: {e.__class__.__name__}: {msg}"
        warnings.append(f"{ini}: {report['error']}; its profiles are not listed")
        return [], report, warnings

    # installs: installs.ini sections plus [Install...] sections of profiles.ini
    install_defaults = {}
    for sec in cp.sections():
        if sec.startswith("Install") and cp.has_option(sec, "Default"):
            install_defaults[sec[len("Install"):]] = cp.get(sec, "Default")
    inst_ini = os.path.join(root, "installs.ini")
    if os.path.exists(inst_ini):
        try:
            icp = _read_ini(inst_ini)
            for sec in icp.sections():
                if icp.has_option(sec, "Default"):
                    install_defaults[sec] = icp.get(sec, "Default")
        except (configparser.Error, UnicodeDecodeError, OSError) as e:
            warnings.append(f"{inst_ini}: malformed, ignored ({e.__class__.__name__})")
    default_for = {}
    for install, value in install_defaults.items():
        p = _abs_profile_path(root, value, not os.path.isabs(value))
        default_for.setdefault(p, []).append(install)

    profiles = []
    for sec in cp.sections():
        if not sec.startswith("Profile"):
            continue
        if not cp.has_option(sec, "Path"):
            warnings.append(f"{ini}: [{sec}] has no Path, skipped")
            continue
        rel_s = cp.get(sec, "IsRelative", fallback="1").strip()
        relative = rel_s != "0"
        path = _abs_profile_path(root, cp.get(sec, "Path"), relative)
        if not os.path.isdir(path):
            warnings.append(f"{ini}: [{sec}] profile directory {path} does not exist, skipped")
            continue
        st = os.stat(path)
        entry = {
            "path": path,
            "name": cp.get(sec, "Name", fallback=os.path.basename(path)),
            "kind": kind,
            "root": root,
            "relative": relative,
            "default": cp.get(sec, "Default", fallback="0").strip() == "1" or path in default_for,
            "default_for_installs": sorted(default_for.get(path, [])),
            "format": db_format(path),
            "owner": dict(owner),
            "path_owner": _owner(st.st_uid, st.st_gid),
            "nss_db": "sql:" + path,
        }
        if locks:
            entry["in_use"], entry["lock"] = lock_state(path, local_addresses)
        profiles.append(entry)
    report["profiles"] = len(profiles)
    return profiles, report, warnings


def chromium_db(home, owner):
    path = os.path.join(home, CHROMIUM_NSSDB)
    if not os.path.isdir(path):
        return None
    st = os.stat(path)
    return {
        "path": path, "name": "nssdb", "kind": "chromium", "root": os.path.dirname(path), "relative": False,
        "default": False, "default_for_installs": [], "format": db_format(path), "owner": dict(owner),
        "path_owner": _owner(st.st_uid, st.st_gid), "nss_db": "sql:" + path,
        "in_use": False, "lock": "shared NSS sql database: no profile lock (sqlite handles concurrent use)",
    }


def _inside(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


def scan_home(home, owner, roots_def, include_chromium=False, locks=True, local_addresses=None):
    """Profiles of one home, confined to it: every root and profile directory is resolved, and one that leaves
    the home (`Path=../..`, a symlink) or is not the home owner's is refused (listed in "refused", never
    provisioned). Meant to run as the home's owner (tokentrust_privsep.run_as)."""
    out = {"profiles": [], "roots": [], "refused": [], "warnings": []}
    top = os.path.realpath(home)
    seen = set()

    def admit(p, what):
        rp = os.path.realpath(p["path"])
        why = None
        if not _inside(rp, top):
            why = f"{what} {p['path']} resolves to {rp}, outside the home {home}: refused"
        else:
            st = os.stat(rp)
            if st.st_uid != owner["uid"]:
                why = (f"{what} {p['path']} is owned by uid {st.st_uid}, not by {owner['name']} "
                       f"(uid {owner['uid']}): refused")
        if why:
            out["refused"].append({"path": p["path"], "owner": dict(owner), "reason": why})
            out["warnings"].append(why)
            return False
        if rp in seen:
            return False
        seen.add(rp)
        return True

    for kind, rel in roots_def:
        root = os.path.join(home, rel)
        ini = os.path.join(root, "profiles.ini")
        if not os.path.isfile(ini) and not (os.path.lexists(ini) and not os.path.isdir(ini)):
            continue  # no profiles.ini; one that is not a regular file (a FIFO) is reported by scan_root
        real = os.path.realpath(root)
        if not _inside(real, top):
            why = f"profile root {root} resolves to {real}, outside the home {home}: refused"
            out["refused"].append({"path": root, "owner": dict(owner), "reason": why})
            out["warnings"].append(why)
            continue
        if real in seen:
            continue
        seen.add(real)
        profiles, report, warnings = scan_root(root, kind, owner, locks, local_addresses)
        if report.pop("unreadable", False):  # fails the task as a refused profile does: its profiles are unknown
            out["refused"].append({"path": root, "owner": dict(owner),
                                   "reason": f"{os.path.join(root, 'profiles.ini')}: {report['error']}: refused"})
        out["roots"].append(report)
        out["warnings"].extend(warnings)
        out["profiles"].extend(p for p in profiles if admit(p, "profile"))
    if include_chromium:
        c = chromium_db(home, owner)
        if c and admit(c, "Chromium database"):
            out["profiles"].append(c)
    return out


def find_profiles(users=None, homes=None, include_thunderbird=False, include_chromium=False, locks=True):
    """Everything: {"profiles": [...], "roots": [...], "homes": [...], "refused": [...], "warnings": [...]}.

    Each home is read by its owner (a forked child that dropped to that user when we run as root): root never
    opens a file inside a user's home.
    """
    roots_def = list(FIREFOX_ROOTS) + (list(THUNDERBIRD_ROOTS) if include_thunderbird else [])
    local = sorted(_local_addresses()) if locks else None
    result = {"profiles": [], "roots": [], "homes": [], "refused": [], "warnings": []}
    seen = set()
    run_end = time.monotonic() + SCAN_RUN_BUDGET
    for home, owner in select_homes(users, homes):
        result["homes"].append({"path": home, "owner": owner})
        left = run_end - time.monotonic()
        try:
            if left <= 0:
                raise ChildError(f"not scanned: the scan's time budget ({SCAN_RUN_BUDGET} s) was used up by the "
                                 "homes before it", name="TT_TIME_BUDGET", kind="deadline")
            found = run_as(owner, scan_home, home, owner, roots_def, include_chromium, locks, local,
                           deadline=min(HOME_SCAN_BUDGET, left))
        except ChildError as exc:
            # a home that cannot be scanned fails the task as a refused profile does: its profiles are unknown
            why = f"{home}: could not be scanned as {owner['name']}: {exc}"
            result["refused"].append({"path": home, "owner": dict(owner), "reason": why})
            result["warnings"].append(why)
            continue
        result["roots"].extend(found["roots"])
        result["refused"].extend(found["refused"])
        result["warnings"].extend(found["warnings"])
        for p in found["profiles"]:
            rp = os.path.realpath(p["path"])
            if rp in seen:
                continue
            seen.add(rp)
            result["profiles"].append(p)
    return result
