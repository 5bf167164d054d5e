# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""Apply a CA set and a PKCS#11 module to many NSS databases, one database open at a time.

Pure orchestration over tokentrust_nss: decide per database, then act (unless check mode), report per database.
A failure in one database leaves it untouched (NSSDatabase restores its files) and the others still complete,
unless fail_fast.
"""
from __future__ import annotations

import ctypes
import datetime
import hashlib
import os
import re

from ansible.module_utils.tokentrust_errors import TokentrustError, module_name
from ansible.module_utils.tokentrust_nss import (
    NSSDatabase,
    NSSError,
    der_from_bytes,
    edit_pkcs11_txt,
    normalize_trust,
    read_pkcs11_txt,
)
from ansible.module_utils.tokentrust_privsep import (
    ChildError,
    PrivilegeError,
    acting_owner,
    clean_leftovers,
    owner_of_uid,
    profile_lock,
    read_bounded,
    run_as,
)
from ansible.module_utils.tokentrust_trust import encoded_trust

DEFAULT_LOCK_TIMEOUT = 60
# Time budgets (seconds). A home's profiles together get at most HOME_BUDGET (a user who holds locks on, or plants
# FIFOs in, many profiles costs the run that much, not lock_timeout per profile); the whole run RUN_BUDGET; one
# database's work (after its lock) WORK_BUDGET. A worker still running at its deadline is killed; what was not done
# is reported as failed with the reason, and the run goes on with the next home.
HOME_BUDGET = 180
RUN_BUDGET = 3600
WORK_BUDGET = 120
# security device names and nicknames end up in pkcs11.txt lines and NSS attributes
MAX_NAME_LENGTH = 128


class quiet_stdout:  # noqa: N801 - used as a context manager
    """Send file descriptor 1 to stderr while NSS and PKCS#11 libraries run.

    A module's result is the JSON on stdout: a PKCS#11 library that prints (debug builds of middleware, OpenSC's
    pkcs11-spy) would corrupt it. Python-level prints are not affected (sys.stdout is flushed first).
    """

    def __enter__(self):
        import sys

        sys.stdout.flush()
        self._saved = os.dup(1)
        os.dup2(2, 1)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 1)
        os.close(self._saved)
        return False


# Gemalto/Thales Classic Client's PKCS#11 library per OS: the one table (module_utils/tokentrust_facts.py).
def default_library():
    from ansible.module_utils.tokentrust_facts import default_library as _default

    return _default(guess=True)


def missing_library_message(library):
    return ("PKCS#11 library %s does not exist on this host: install the middleware (Gemalto/Thales Classic Client) "
            "first; the module was not registered" % library)


_ELF_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "i386": 3, "i686": 3, "armv7l": 40,
                 "ppc64le": 21, "s390x": 22, "riscv64": 243}


def library_problem(library, prove=True, warnings=None):
    """Why `library` cannot be a PKCS#11 module for this host, or None.

    First without loading it: a regular file, an ELF shared object of this machine's class and architecture (a
    32-bit library cannot be loaded by a 64-bit Firefox). Then, when `prove`, the library is proved the way NSS
    will use it (prove_library): loaded in a disposable child as nobody, C_GetFunctionList, C_Initialize,
    C_Finalize. Never loaded in this process. Not ELF platforms (macOS) are only checked to be a regular file."""
    import platform
    import struct
    import sys

    try:
        fd = os.open(library, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        return "cannot open %s: %s" % (library, exc.strerror)
    try:
        import stat as stat_mod

        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            return "%s is not a regular file" % library
        head = os.read(fd, 64)
    finally:
        os.close(fd)
    if platform.system() not in ("Linux", "FreeBSD"):
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return "%s is not a shared library (no ELF header): NSS and Firefox could not load it" % library
    bits = 64 if sys.maxsize > 2 ** 32 else 32
    if head[4] != (2 if bits == 64 else 1):
        return "%s is a %d-bit library; this host's NSS and Firefox are %d-bit and cannot load it" % (
            library, 32 if head[4] == 1 else 64, bits)
    endian = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack(endian + "HH", head[16:20])
    if e_type != 3:
        return "%s is not a shared object (ELF type %d): NSS and Firefox could not load it" % (library, e_type)
    want = _ELF_MACHINES.get(platform.machine().lower())
    if want is not None and e_machine != want:
        return "%s is built for another architecture (ELF machine %d, this host is %s)" % (
            library, e_machine, platform.machine())
    return prove_library(library, warnings=warnings) if prove else None


PROVE_DEADLINE = 20.0  # seconds: a real token library initializes in well under a second without a token
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2


def _pkcs11_proof(library):
    """In the disposable child (as nobody, descriptors closed): what loading `library` as NSS does gives."""
    os.environ.clear()  # nothing of root's environment (a PKCS11SPY or LD_PRELOAD of the caller) steers the library
    os.environ["PATH"] = "/usr/bin:/bin"
    try:
        os.close(os.open(library, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except PermissionError as exc:
        return {"stage": "unreadable", "error": str(exc)}
    except OSError:
        pass  # dlopen says why below
    try:
        lib = ctypes.CDLL(library, mode=getattr(os, "RTLD_NOW", 2) | getattr(os, "RTLD_LOCAL", 0))
    except OSError as exc:
        return {"stage": "load", "error": str(exc)}
    try:
        get_list = lib.C_GetFunctionList
    except AttributeError:
        return {"stage": "symbol"}

    class FunctionList(ctypes.Structure):
        _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte), ("C_Initialize", ctypes.c_void_p),
                    ("C_Finalize", ctypes.c_void_p)]

    class InitArgs(ctypes.Structure):
        _fields_ = [("create", ctypes.c_void_p), ("destroy", ctypes.c_void_p), ("lock", ctypes.c_void_p),
                    ("unlock", ctypes.c_void_p), ("flags", ctypes.c_ulong), ("reserved", ctypes.c_void_p)]

    get_list.restype = ctypes.c_ulong
    get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(FunctionList))]
    flist = ctypes.POINTER(FunctionList)()
    rv = get_list(ctypes.byref(flist))
    if rv != 0 or not flist or not flist.contents.C_Initialize or not flist.contents.C_Finalize:
        return {"stage": "list", "rv": rv}
    proto = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)
    args = InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
    rv = proto(flist.contents.C_Initialize)(ctypes.cast(ctypes.byref(args), ctypes.c_void_p))
    if rv not in (0, CKR_CRYPTOKI_ALREADY_INITIALIZED):
        return {"stage": "initialize", "rv": rv}
    rv = proto(flist.contents.C_Finalize)(None)
    return {"stage": "ok", "version": "%d.%d" % (flist.contents.major, flist.contents.minor), "finalize": rv}


def prove_library(library, deadline=PROVE_DEADLINE, warnings=None):
    """None when `library` loads as a PKCS#11 module, else why not (naming the file and what it did): it crashed,
    hung, cannot be loaded (wrong architecture, missing dependency), has no C_GetFunctionList (not PKCS#11). The
    library runs only in a forked child (tokentrust_privsep.run_as) that closed every descriptor, dropped to nobody,
    cleared its environment and is killed at `deadline`: a library that crashes, hangs or misbehaves cannot touch
    this run, root's files or any profile, and is then not registered.

    A library that loads and answers but returns an error from C_GetFunctionList or C_Initialize as nobody with an
    empty environment (SoftHSM without its token directory, pkcs11-spy without PKCS11SPY: libraries configured per
    user) did not crash: it is registered, with a warning appended to `warnings`."""
    try:
        import pwd
        nobody = owner_of_uid(pwd.getpwnam("nobody").pw_uid)
    except KeyError:
        nobody = owner_of_uid(65534, 65534)
    try:
        res = run_as(nobody, _pkcs11_proof, library, deadline=deadline)
    except ChildError as exc:
        if exc.name == "TT_CRASHED":
            sig = re.search(r"signal (\w+)", str(exc))
            return ("%s crashed when loaded and initialized as a PKCS#11 module (%s, in a disposable child as nobody): "
                    "Firefox would crash at every start with it; not registered"
                    % (library, sig.group(1) if sig else "killed by a signal"))
        if exc.name == "TT_DEADLINE":
            return ("%s did not finish loading and initializing as a PKCS#11 module within %.0f s (a hanging "
                    "library): not registered" % (library, deadline))
        return "%s could not be proved as a PKCS#11 module (%s): not registered" % (library, exc)
    stage = (res or {}).get("stage")
    if stage == "ok":
        return None
    if stage == "unreadable":
        # never loaded as root: a library only root can read is registered unproved (Firefox run by a user could
        # not load it either: that user must be able to read it)
        if warnings is not None:
            warnings.append("%s could not be proved as a PKCS#11 module: nobody may read it (%s); registered "
                            "unproved, and only users who can read it can load it" % (library, res.get("error")))
        return None
    if stage == "load":
        err = res.get("error") or ""
        if "wrong ELF class" in err or "ELFCLASS" in err:
            return "%s is the wrong architecture for this host (%s): not registered" % (library, err)
        return "%s cannot be loaded (%s): not registered" % (library, err)
    if stage == "symbol":
        return ("%s is not a PKCS#11 library (it has no C_GetFunctionList): not registered" % library)
    if stage in ("list", "initialize"):
        if warnings is not None:
            warnings.append("%s loaded without crashing, but %s returned 0x%x as nobody with an empty environment (a "
                            "library that needs its user's configuration does that): registered; check that Firefox "
                            "lists its token" % (library, "C_GetFunctionList" if stage == "list" else "C_Initialize",
                                                 res.get("rv") or 0))
        return None
    return "%s could not be proved as a PKCS#11 module (%r): not registered" % (library, res)


class InputError(TokentrustError, ValueError):
    """Bad module input: reported before any database is opened."""

    def __init__(self, message):
        super().__init__("input", message)


def require_nss():
    """Load NSS now (nss3, then smime3); None when it loads, else why not (for the prerequisites report)."""
    from ansible.module_utils.tokentrust_nss._ffi import lib

    for short in ("nss3", "smime3"):  # nss3 first: it brings the siblings of its own build
        try:
            getattr(lib, short)
        except Exception as exc:  # noqa: BLE001 - the message says which library and why
            return str(exc)
    return None


def _preload_nss():
    """dlopen NSS once in the parent: each per-profile child inherits the mapped libraries instead of loading them
    again (faster), and never has to read a library file after dropping privileges. A missing NSS is left for the
    first use to report, as before.

    The software token (softokn3) and its freebl, which NSS_InitContext loads in every child, are mapped here too:
    freebl runs its power-up self-tests when it is loaded, once here instead of once per profile (about 14 ms per
    profile measured on the fleet's Debian 12 workstations)."""
    if require_nss() is not None:
        return
    from ansible.module_utils.tokentrust_nss._ffi import nss_libdir

    d = nss_libdir()
    for name in ("libsoftokn3.so", "libfreeblpriv3.so"):
        path = os.path.join(d, name) if d else ""
        if path and os.path.isfile(path):
            try:
                ctypes.CDLL(path)
            except OSError:
                pass  # NSS will say it at NSS_InitContext, in the child, for that profile


def _each_database(databases, fresh, work, fail_fast, lock_timeout=DEFAULT_LOCK_TIMEOUT, check_mode=False,
                   home_budget=None, run_budget=None):
    """Run work(entry) on each database, one after another, each in a child acting as the database's owner
    (tokentrust_privsep) under our per-profile lock; any failure there (an exception, a crash, its deadline)
    fails that database only.

    Time: the databases of one owner together get at most `home_budget` seconds, the whole call `run_budget`;
    a database reached after its budget is used up is reported failed (TT_TIME_BUDGET), not started.
    fresh(entry) gives the result skeleton (with "skipped" set to leave the database alone).
    Returns (results, changed, failed paths); stops after the first failure when fail_fast.
    """
    import time

    home_budget = HOME_BUDGET if home_budget is None else float(home_budget)
    run_budget = RUN_BUDGET if run_budget is None else float(run_budget)
    run_end = time.monotonic() + run_budget
    spent = {}
    results, failed = [], []
    if databases:
        _preload_nss()
    for entry in databases:
        res = fresh(entry)
        if not res.get("skipped"):
            started = time.monotonic()
            key = None
            try:
                owner = acting_owner(entry["path"], entry.get("owner_uid"))
                key = owner["uid"]
                left_home = home_budget - spent.get(key, 0.0)
                left_run = run_end - started
                if min(left_home, left_run) <= 0:
                    raise ChildError("not done: %s (%.0f s) was used up before this database was reached; run "
                                     "again (the other databases were done)" % (
                                         "the time budget of %s's profiles" % owner["name"] if left_home <= 0
                                         else "this run's time budget", home_budget if left_home <= 0 else run_budget),
                                     name="TT_TIME_BUDGET", kind="deadline")
                budget = min(left_home, left_run)
                wait = min(float(lock_timeout), budget)
                res.update(run_as(owner, _locked_work, entry, work, wait, check_mode,
                                  deadline=min(wait + WORK_BUDGET, budget)))
            except (NSSError, PrivilegeError, ChildError) as exc:
                text = str(exc)
                if entry["path"] not in text:
                    text = "%s (%s)" % (text, entry["path"])
                res["error"] = text
                res["error_name"] = exc.name
                failed.append(entry["path"])
            if key is not None:
                spent[key] = spent.get(key, 0.0) + time.monotonic() - started
        results.append(res)
        if res["error"] and fail_fast:
            break
    return results, any(r["changed"] for r in results), failed


def _locked_work(entry, work, lock_timeout, check_mode=False):
    """In the owner's child: take our profile lock, clean what an interrupted run left (not in check mode: it
    changes nothing on disk), then work."""
    path = entry["path"]
    with profile_lock(path, lock_timeout):
        leftovers = [] if check_mode else clean_leftovers(path)
        out = work(entry)
    if leftovers:
        out["cleaned"] = leftovers
    return out


def check_name(value, what):
    """A security device name or a nickname: non-empty, bounded, no control characters (they would inject lines
    into pkcs11.txt), no surrounding spaces."""
    if value is not None and not isinstance(value, str):
        raise InputError("%s must be a string, got %s %r: give a plain one-line name" % (what, type(value).__name__,
                                                                                         value))
    if not isinstance(value, str) or not value.strip():
        raise InputError("%s is empty: give a name" % what)
    if len(value) > MAX_NAME_LENGTH:
        raise InputError("%s is %d characters long; at most %d are allowed" % (what, len(value), MAX_NAME_LENGTH))
    bad = sorted({"%r" % ch for ch in value if ord(ch) < 0x20 or ord(ch) == 0x7F})
    if bad:
        raise InputError("%s %r holds control characters (%s): newlines would inject lines into pkcs11.txt; "
                         "use a plain one-line name" % (what, value, ", ".join(bad)))
    if value != value.strip():
        raise InputError("%s %r has leading or trailing spaces" % (what, value))
    return value


def check_library_path(value, what="module library"):
    if value is None:
        return value
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InputError("%s %r holds control characters: give a plain file path" % (what, value))
    if not os.path.isabs(value):
        raise InputError("%s %r is not an absolute path" % (what, value))
    return value


def normalise_databases(databases):
    """Paths, 'sql:' specs or profile dicts (from firefox_profiles_info) -> list of dicts {path, in_use, owner}."""
    out = []
    seen = set()
    for i, d in enumerate(databases or []):
        if isinstance(d, dict):
            path = d.get("nss_db") or d.get("path")
            if not path:
                raise InputError("databases[%d]: a profile entry needs 'path' (or 'nss_db')" % i)
            if not isinstance(path, str):
                raise InputError("databases[%d]: 'path' must be a directory path (a string), got %s %r: give the "
                                 "profile directory, e.g. /home/jean/.mozilla/firefox/abcd.default-esr"
                                 % (i, type(path).__name__, path))
            entry = {"path": path, "in_use": bool(d.get("in_use")), "name": d.get("name"), "kind": d.get("kind")}
            if isinstance(d.get("owner"), dict) and d["owner"].get("uid") is not None:
                entry["owner_uid"] = int(d["owner"]["uid"])
            if d.get("format") == "dbm":
                entry["format"] = "dbm"
        elif isinstance(d, str) and d:
            entry = {"path": d, "in_use": False, "name": None, "kind": None}
        else:
            raise InputError("databases[%d]: expected a directory path or a profile entry (a dict with 'path'), got "
                             "%s %r" % (i, type(d).__name__, d))
        if entry["path"].startswith("sql:"):
            entry["path"] = entry["path"][4:]
        entry["path"] = os.path.abspath(os.path.expanduser(entry["path"]))
        if entry["path"] in seen:
            continue
        seen.add(entry["path"])
        out.append(entry)
    return out


def normalise_certificates(certificates, default_trust="C,,"):
    """Module input -> list of {name, der, sha256, trust}. Accepts the tokentrust_ca_set entries as they are."""
    out = []
    names = set()
    for i, c in enumerate(certificates or []):
        if not isinstance(c, dict):
            raise InputError("certificates[%d]: expected a dict with name and content/pem/path" % i)
        name = c.get("nickname") or c.get("name")
        if not name:
            raise InputError("certificates[%d]: 'name' is required (it becomes the NSS nickname)" % i)
        check_name(name, "certificates[%d] name" % i)
        data = c.get("content") or c.get("pem")
        if data is not None and not isinstance(data, (str, bytes)):
            key = "content" if c.get("content") is not None else "pem"
            raise InputError("certificates[%d] (%s): '%s' must be the certificate as PEM text, got %s: give the PEM "
                             "text (-----BEGIN CERTIFICATE----- ...) or a file in 'path'"
                             % (i, name, key, type(data).__name__))
        for key in ("path", "der_path"):
            if data is None and c.get(key):
                if not isinstance(c[key], str):
                    raise InputError("certificates[%d] (%s): '%s' must be a file path, got %s" % (
                        i, name, key, type(c[key]).__name__))
                try:
                    data = read_bounded(c[key], "certificates[%d] (%s) %s" % (i, name, key))
                except OSError as exc:
                    raise InputError("certificates[%d] (%s): cannot read %s: %s" % (i, name, c[key], exc.strerror)
                                     ) from None
                except ValueError as exc:
                    raise InputError(str(exc)) from None
        if data is None:
            raise InputError("certificates[%d] (%s): give 'content' (PEM text), 'pem' or 'path'" % (i, name))
        try:
            der = der_from_bytes(data, "certificates[%d] (%s)" % (i, name))
            trust = normalize_trust(c.get("trust") or c.get("nss_trust") or default_trust)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        sha256 = hashlib.sha256(der).hexdigest().upper()
        pin = (c.get("sha256") or "").replace(":", "").upper()
        if pin and pin != sha256:
            raise InputError("certificates[%d] (%s): content has SHA-256 %s but the entry says %s"
                             % (i, name, sha256, pin))
        if name in names:
            raise InputError("certificates[%d]: nickname %r is used twice in the input" % (i, name))
        names.add(name)
        out.append({"name": name, "der": der, "sha256": sha256, "trust": trust})
    return out


def _state_lines(certs):
    return "".join("%s  %s  %s\n" % (c["nickname"], c["sha256"], c["trust"]) for c in
                   sorted(certs, key=lambda c: c["nickname"] or ""))


def _backup(db, directory):
    """Copy the database files as they were before this open into a new tokentrust-backup-<time> directory of the
    profile. Runs as the profile's owner (tokentrust_privsep); each copy keeps its original's mode, and is created
    new (O_EXCL, O_NOFOLLOW): nothing planted there is followed."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    dest = os.path.join(directory, "tokentrust-backup-%s" % stamp)
    os.mkdir(dest, 0o700)
    before = db.file_modes()
    for name, data in (db.snapshot or {}).items():
        if data is None:
            continue
        fd = os.open(os.path.join(dest, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     before.get(name, 0o600))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return dest


def _plan_certificates(current, wanted, state, nickname_conflict):
    """-> list of (action, cert, nickname) with action in add / trust / delete / ok / rename-add."""
    by_der = {c.der: c for c in current}
    nick_der = {c.nickname: c.der for c in current}
    plan = []
    for w in wanted:
        have = by_der.get(w["der"])
        if state == "absent":
            plan.append(("delete" if have else "ok", w, have.nickname if have else w["name"]))
            continue
        if have:
            plan.append(("ok" if have.trust == w["trust_encoded"] else "trust", w, have.nickname))
            continue
        nick = w["name"]
        if nick in nick_der:
            if nickname_conflict == "rename":
                nick = "%s (%s)" % (w["name"], w["sha256"][:8])
            else:
                other = [c for c in current if c.nickname == nick][0]
                raise NSSError("plan", None, name="TT_NICKNAME_TAKEN", text="nickname %r is already used by another "
                               "certificate (SHA-256 %s, subject %s); set nickname_conflict=rename to import under "
                               "'%s (%s)'" % (nick, other.sha256, other.subject, nick, w["sha256"][:8]))
        plan.append(("add", w, nick))
    return plan


def _simulate(current, plan):
    after = {c.der: c.to_dict() for c in current}
    for action, w, nick in plan:
        if action == "add":
            after[w["der"]] = {"nickname": nick, "sha256": w["sha256"], "trust": w["trust_encoded"]}
        elif action == "trust":
            after[w["der"]] = dict(after[w["der"]], trust=w["trust_encoded"])
        elif action == "delete":
            after.pop(w["der"], None)
    return list(after.values())


def _module_lines(mods):
    return "".join("%s  %s\n" % (m["name"], m["library"]) for m in mods if not m["internal"])


def _module_decide(entry, mods, name, library, state):
    same_name = [m for m in mods if m["name"] == name]
    same_lib = [m for m in mods if library and m["library"] == library and m["name"] != name]
    out = {"before": _module_lines(mods), "other_names": [m["name"] for m in same_lib]}
    if state == "absent":
        action = "delete" if same_name else "ok"
    elif same_name and same_name[0]["library"] == library:
        action = "ok"
    elif same_lib:
        action = "registered_under_other_name"
    elif same_name:
        action = "replace"
    else:
        action = "add"
    changed = action in ("add", "replace", "delete")
    after = [m for m in mods if not (m["name"] == name and action in ("delete", "replace"))]
    if action in ("add", "replace"):
        after.append({"name": name, "library": library, "internal": False})
    out.update(action=action, changed=changed, after=_module_lines(after),
               restart_needed=changed and entry.get("in_use", False))
    return out


# --------------------------------------------------------------------------------------------- one call per host


def _module_plan(path, module_spec, lib_exists):
    """Decide the module action from pkcs11.txt read as text (no library loaded)."""
    if not module_spec or module_spec.get("state") == "ignore":
        return None
    state = module_spec.get("state", "present")
    if state == "present" and not lib_exists:
        return {"action": "skipped_missing_library", "changed": False, "other_names": [], "before": "", "after": ""}
    mods = read_pkcs11_txt(path)
    entry = {"in_use": False}
    return _module_decide(entry, mods, module_spec["name"], module_spec.get("library"), state)


def provision(databases, certificates, module_spec=None, state="present", check_mode=False,
              nickname_conflict="fail", backup=False, fail_fast=False, password=None,
              lock_timeout=DEFAULT_LOCK_TIMEOUT, home_budget=None, run_budget=None):
    """Certificates and the PKCS#11 module on every database, each in a child acting as its owner.

    The one apply path of nss_provision, nss_certificate (apply_certificates) and nss_pkcs11_module (apply_module).
    module_spec: {name, library, state (present|absent|ignore), missing_library (warn|fail), fail_on_error (a
    module that cannot be registered fails the database, not only with missing_library=fail), option (the option
    name used in messages, default module_name)} or None.
    Certificates are applied with the module database closed (NSS_INIT_NOMODDB); the module is registered or
    removed by editing pkcs11.txt as text under the same lock: no PKCS#11 library a profile lists is ever loaded;
    ours is proved first, only in a disposable child as nobody (library_problem, prove_library: one that crashes,
    hangs or is not PKCS#11 is not registered, and costs the module only, never the CA set). A database that does
    not exist is created only when something is to be written in it. Returns (results, changed, failed, warnings).
    """
    if lock_timeout is None or lock_timeout < 0:
        raise InputError("lock_timeout must be 0 or more seconds, not %r; nothing was done" % (lock_timeout,))
    for w in certificates:
        w["trust_encoded"] = encoded_trust(w["trust"])
    warnings = []
    lib_exists = True
    lib_problem = None
    if module_spec:
        check_name(module_spec.get("name"), module_spec.get("option") or "module_name")
        check_library_path(module_spec.get("library"))
    if module_spec and module_spec.get("state", "present") == "present":
        lib_exists = bool(module_spec.get("library")) and os.path.isfile(module_spec["library"])
        if not lib_exists:
            msg = missing_library_message(module_spec.get("library"))
            if module_spec.get("missing_library") == "fail":
                raise InputError(msg)
            warnings.append(msg)
        else:
            lib_problem = library_problem(module_spec["library"], warnings=warnings)

    def fresh(entry):
        res = {"path": entry["path"], "name": entry.get("name"), "kind": entry.get("kind"), "changed": False,
               "certificates": [], "module": None, "restart_needed": False, "created": False, "backup": None,
               "error": None}
        if entry.get("format") == "dbm":
            res["skipped"] = "legacy dbm database (cert8.db): start a current Firefox once on it, then run again"
        if entry.get("refused"):
            res["error"] = entry["refused"]
            res["error_name"] = "TT_REFUSED"
            res["skipped"] = "refused"
        return res

    results, changed, failed = _each_database(
        databases, fresh,
        lambda e: _provision_one(e, certificates, module_spec, lib_exists, state, check_mode, nickname_conflict,
                                 backup, password, lib_problem),
        fail_fast, lock_timeout, check_mode, home_budget, run_budget,
    )
    for r in results:
        if r.get("skipped") == "refused":
            failed.append(r["path"])
        mod = r.get("module") or {}
        if mod.get("error"):
            msg = "%s: %sPKCS#11 module %r could not be %s: %s" % (
                r["path"], "the CA set is in place, but " if certificates else "", mod["name"],
                "registered" if mod["action"] != "delete" else "removed", mod["error"])
            spec = module_spec or {}
            if spec.get("missing_library") == "fail" or spec.get("fail_on_error") or mod["action"] == "delete":
                r["error"] = msg
                r["error_name"] = "TT_MODULE_FAILED"
                failed.append(r["path"])
            else:
                warnings.append(msg + " (missing_library=warn: not failing the host)")
    return results, changed, failed, warnings


def _module_done(mods, module_spec, action):
    """Whether pkcs11.txt (as read) holds what `action` was to achieve."""
    named = [m for m in mods if m["name"] == module_spec["name"] and not m["internal"]]
    if action == "delete":
        return not named
    return len(named) == 1 and named[0]["library"] == module_spec.get("library")


def _module_change(path, module_spec, action):
    """The module change of one profile: pkcs11.txt edited as text (no library loaded), entries named exactly
    module_spec["name"] only. Returns the modules as read back from the file written (for the diff)."""
    mods = edit_pkcs11_txt(path, module_spec["name"], module_spec.get("library"),
                           remove=action in ("replace", "delete"), add=action in ("add", "replace"))
    return _module_lines(mods)


def _provision_one(entry, wanted, module_spec, lib_exists, state, check_mode, nickname_conflict, backup, password,
                   lib_problem=None):
    path = entry["path"]
    if not os.path.isdir(path):
        raise NSSError("open", "sql:%s" % path, text="directory %s does not exist" % path)
    exists = os.path.exists(os.path.join(path, "cert9.db"))
    mod = _module_plan(path, module_spec, lib_exists)
    mod_change = bool(mod and mod["changed"])
    if mod_change and lib_problem and mod["action"] in ("add", "replace"):  # check mode says it too
        mod["error"] = lib_problem
        mod["after"] = mod["before"]
        mod_change = False
    out = {}
    if check_mode or (not exists and not mod_change and (state == "absent" or not wanted)):
        current = []
        if exists:
            with NSSDatabase(path, readonly=True, password=password, modules=False) as db:
                current = db.certificates()
        plan = _plan_certificates(current, wanted, state, nickname_conflict)
        cert_change = any(step[0] != "ok" for step in plan)
        out["before"] = _state_lines([c.to_dict() for c in current])
        out["after"] = _state_lines(_simulate(current, plan))
        out["created"] = not exists and (cert_change or mod_change)
    else:
        with NSSDatabase(path, readonly=False, password=password, modules=False) as db:
            current = db.certificates()
            plan = _plan_certificates(current, wanted, state, nickname_conflict)
            cert_change = any(step[0] != "ok" for step in plan)
            out["before"] = _state_lines([c.to_dict() for c in current])
            if (cert_change or mod_change) and backup and not db.created:
                out["backup"] = _backup(db, path)
            for action, w, nick in plan:
                if action in ("add", "trust"):
                    db.add_certificate(w["der"], nick, w["trust"])
                elif action == "delete":
                    db.delete_certificate(der=w["der"])
            out["after"] = _state_lines([c.to_dict() for c in db.certificates()])
            out["created"] = db.created
        if mod_change:
            try:
                mod["after"] = _module_change(path, module_spec, mod["action"])
            except (NSSError, OSError) as exc:
                # the truth is what pkcs11.txt holds now (the write is a rename: old file or new, never half)
                why = "%s: %s" % (exc.__class__.__name__, exc) if isinstance(exc, OSError) else str(exc)
                try:
                    after = read_pkcs11_txt(path)
                except (NSSError, OSError) as again:
                    mod["error"] = "%s; pkcs11.txt could not be read back (%s): check whether the module is there" % (
                        why, again)
                    mod["after"] = mod["before"]
                    mod_change = False
                else:
                    mod["after"] = _module_lines(after)
                    mod_change = mod["after"] != mod["before"]
                    if not _module_done(after, module_spec, mod["action"]):
                        mod["error"] = why
    out["certificates"] = [{"name": w["name"], "nickname": n, "action": a, "sha256": w["sha256"]}
                           for a, w, n in plan]
    if mod is not None:
        out["module"] = {"name": module_spec["name"], "library": module_spec.get("library"), "action": mod["action"],
                         "other_names": mod["other_names"]}
        if mod.get("error"):
            out["module"]["error"] = mod["error"]
        out["module_before"], out["module_after"] = mod["before"], mod["after"]
    out["changed"] = cert_change or mod_change or bool(out["created"])
    out["restart_needed"] = out["changed"] and bool(entry.get("in_use"))
    return out


# --------------------------------------------------------------------------------------------- single-purpose modules
# nss_certificate and nss_pkcs11_module: provision() with only certificates, or only the module; their results
# keep the shapes those modules have always returned.


def apply_certificates(databases, certificates, state="present", check_mode=False, nickname_conflict="fail",
                       backup=False, fail_fast=False, password=None):
    """Certificates only. Returns (results, changed, failed); per database: path, changed, created, actions,
    restart_needed, backup, error (and before/after for the diff)."""
    results, changed, failed = provision(databases, certificates, None, state=state, check_mode=check_mode,
                                         nickname_conflict=nickname_conflict, backup=backup, fail_fast=fail_fast,
                                         password=password)[:3]
    for r in results:
        r["actions"] = r.pop("certificates")
        for key in ("name", "kind", "module", "module_before", "module_after"):
            r.pop(key, None)
    return results, changed, failed


def apply_module(databases, name, library, state="present", check_mode=False, missing_library="warn",
                 backup=False, fail_fast=False):
    """The PKCS#11 module only. Returns (results, changed, failed, warnings); per database: path, changed, action,
    other_names, restart_needed, backup, error (and before/after: pkcs11.txt's modules, for the diff)."""
    spec = {"name": name, "library": library, "state": state, "missing_library": missing_library,
            "fail_on_error": True, "option": "name"}
    results, changed, failed, warnings = provision(databases, [], spec, state=state, check_mode=check_mode,
                                                   backup=backup, fail_fast=fail_fast)
    for r in results:
        mod = r.pop("module") or {}
        r["action"] = mod.get("action", "ok")
        r["other_names"] = mod.get("other_names", [])
        r["before"], r["after"] = r.pop("module_before", ""), r.pop("module_after", "")
        for key in ("name", "kind", "certificates", "created"):
            r.pop(key, None)
    return results, changed, failed, warnings


def exit_databases(module, results, changed, failed, total, diff_suffix="", extra_diff=(), **extra):
    """End an NSS module with its per-database results: the diff (per changed database, from the before/after texts
    the results carry, which are then dropped; then `extra_diff`), the counts, and a failure naming every database
    that failed (the others completed) or a normal exit."""
    diff = []
    for r in results:
        if r.get("skipped"):
            module.warn("%s: %s" % (r["path"], r["skipped"]))
        before, after = r.pop("before", ""), r.pop("after", "")
        mb, ma = r.pop("module_before", ""), r.pop("module_after", "")
        if r["changed"]:
            diff.append({"before_header": "%s%s (before)" % (r["path"], diff_suffix),
                         "after_header": "%s%s (after)" % (r["path"], diff_suffix),
                         "before": before + ("modules:\n" + mb if mb else ""),
                         "after": after + ("modules:\n" + ma if ma else "")})
    out = dict(extra, changed=changed, databases=results, failed_databases=failed,
               changed_databases=sum(1 for r in results if r["changed"]),
               restart_needed=any(r["restart_needed"] for r in results), diff=diff + list(extra_diff))
    if failed:
        module.fail_json(msg="%s failed on %d of %d databases (the others completed): %s" % (
            module_name(module), len(failed), total, "; ".join(r["error"] for r in results if r["error"])), **out)
    module.exit_json(**out)
