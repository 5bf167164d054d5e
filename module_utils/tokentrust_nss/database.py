# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""An NSS database (a Firefox profile, ~/.pki/nssdb, ...) opened in-process.

    with NSSDatabase("/home/jean/.mozilla/firefox/abcd.default-esr", readonly=False) as db:
        db.add_certificate(der, "CertEurope Root CA 2", "C,,")
        db.add_module("gem", "/usr/lib/pkcs11/libgclib.so")

NSS is process-global: one database is open at a time; open them one after another.
Guarantees:
- pre-checks before NSS touches anything (missing or read-only directory, legacy dbm database, empty, garbage
  or truncated cert9.db/key4.db): a clear NSSError and not a byte written;
- writable opens snapshot cert9.db / key4.db / pkcs11.txt first: if an operation fails after a write, the files
  are put back as they were when the database is closed;
- when running as root on somebody else's profile, every database file keeps (or gets) the profile owner and
  its mode: no root-owned cert9.db, key4.db or pkcs11.txt is left behind.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import os
import re
import sqlite3
import stat

from ansible.module_utils.tokentrust_facts import NSS_TRUST_HELP, is_nss_trust
from ansible.module_utils.tokentrust_files import write_nofollow
from ansible.module_utils.tokentrust_nss._ffi import ffi, lib
from ansible.module_utils.tokentrust_nss.errors import DatabaseLockedError, LegacyDatabaseError, NSSError, check

DB_FILES = ("cert9.db", "key4.db", "pkcs11.txt")
LEGACY_FILES = ("cert8.db", "key3.db", "secmod.db")
SQLITE_MAGIC = b"SQLite format 3\x00"
# A Firefox profile's cert9.db is a few hundred KiB, key4.db less, pkcs11.txt a few lines: anything larger is refused
# before it is read (a sparse 1 GB file in a user's profile must not cost root's run its memory, nor a backup).
MAX_DB_BYTES = 64 * 1024 * 1024
MAX_PKCS11_TXT_BYTES = 1024 * 1024
PKCS11_TXT_NEW = "pkcs11.txt.tokentrust-new"  # our temporary while pkcs11.txt is rewritten (renamed over it)

NSS_INIT_READONLY = 0x1
NSS_INIT_NOMODDB = 0x4
NSS_INIT_NOROOTINIT = 0x10
NSS_INIT_OPTIMIZESPACE = 0x20

# PKCS#11 token flags (pkcs11t.h)
TOKEN_FLAGS = {
    "rng": 0x1,
    "write_protected": 0x2,
    "login_required": 0x4,
    "user_pin_initialized": 0x8,
    "protected_authentication_path": 0x100,
    "token_initialized": 0x400,
    "user_pin_count_low": 0x10000,
    "user_pin_final_try": 0x20000,
    "user_pin_locked": 0x40000,
    "user_pin_to_be_changed": 0x80000,
    "so_pin_count_low": 0x100000,
    "so_pin_final_try": 0x200000,
    "so_pin_locked": 0x400000,
    "so_pin_to_be_changed": 0x800000,
}

_PEM_RE = re.compile(
    rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----(.+?)-----END (?:X509 |TRUSTED )?CERTIFICATE-----", re.S
)

_open_db = None  # the database currently open in this process


def split_dbspec(spec):
    """'sql:/x', 'dbm:/x' or '/x' -> (prefix, absolute directory)."""
    spec = str(spec)
    prefix = "sql"
    m = re.match(r"^(sql|dbm|extern|rdb|multiaccess):(.*)$", spec)
    if m:
        prefix, spec = m.group(1), m.group(2)
    return prefix, os.path.abspath(os.path.expanduser(spec))


def _str(p):
    return ffi.string(p).decode("utf-8", "replace") if p != ffi.NULL else None


def _padded(buf):
    return bytes(buf).decode("utf-8", "replace").rstrip(" \x00")


def der_from_bytes(data, what="certificate"):
    """DER bytes from DER or PEM input holding exactly one certificate; ValueError with a clear reason otherwise."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        blocks = _PEM_RE.findall(stripped)
        if not blocks:
            raise ValueError("%s: PEM data without a CERTIFICATE block" % what)
        if len(blocks) > 1:
            raise ValueError("%s: PEM data holds %d certificates; give exactly one" % (what, len(blocks)))
        try:
            der = base64.b64decode(b"".join(blocks[0].split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("%s: PEM block is not valid base64 (%s)" % (what, exc)) from exc
    else:
        der = data
    _check_der(der, what)
    return der


def _check_der(der, what):
    """Cheap structural check of a DER SEQUENCE (outer length must match the data)."""
    if len(der) < 4 or der[0] != 0x30:
        raise ValueError("%s: not a DER certificate (does not start with an ASN.1 SEQUENCE)" % what)
    n = der[1]
    if n < 0x80:
        length, hdr = n, 2
    else:
        k = n & 0x7F
        if k == 0 or k > 4 or len(der) < 2 + k:
            raise ValueError("%s: not a DER certificate (bad length encoding)" % what)
        length, hdr = int.from_bytes(der[2:2 + k], "big"), 2 + k
    if hdr + length != len(der):
        raise ValueError(
            "%s: DER length mismatch (header says %d bytes, got %d): truncated or trailing data"
            % (what, hdr + length, len(der))
        )


def open_regular(path, what="file", limit=MAX_DB_BYTES):
    """A descriptor on `path` opened without blocking and without following a link, refused (NSSError) unless it
    is a regular file of at most `limit` bytes: a FIFO, a device or a socket planted in a profile never blocks us,
    an endless or huge file is never read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)  # OSError (missing, ELOOP for a link) to the caller
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NSSError("open", path, name="TT_NOT_REGULAR_FILE",
                           text="%s %s is not a regular file (a FIFO, a device or a socket?): refused, nothing was "
                           "read or changed; remove it (Firefox recreates it)" % (what, path))
        if st.st_size > limit:
            raise NSSError("open", path, name="TT_FILE_TOO_LARGE",
                           text="%s %s is %d bytes, more than the %d a profile's %s can sanely be: refused, nothing "
                           "was read, backed up or changed; move it aside (Firefox recreates it)"
                           % (what, path, st.st_size, limit, os.path.basename(path)))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path, what="file", limit=MAX_DB_BYTES):
    """The bytes of `path` (open_regular), at most `limit` of them."""
    with os.fdopen(open_regular(path, what, limit), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew after the check
        raise NSSError("read", path, name="TT_FILE_TOO_LARGE", text="%s %s grew beyond %d bytes while being read: "
                       "refused, nothing was changed" % (what, path, limit))
    return data


def check_sqlite_file(path):
    """None if `path` looks like a complete SQLite database; otherwise a reason string."""
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    with os.fdopen(open_regular(path, "database file"), "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        return "is not an SQLite database (garbage or another format)"
    page_size = int.from_bytes(head[16:18], "big")
    if page_size == 1:
        page_size = 65536
    pages = int.from_bytes(head[28:32], "big")
    if page_size and pages and size < page_size * pages:
        return "is truncated (%d bytes, header says %d pages of %d bytes)" % (size, pages, page_size)
    return None


def sqlite_locked(path, write=True):
    """A reason string if another process holds a lock on the SQLite file that would block us, else None.

    Takes the lock NSS would need (RESERVED for a writer, SHARED for a reader) without waiting, then releases it:
    nothing is written to the file.
    """
    try:
        conn = sqlite3.connect("file:%s?mode=%s" % (path, "rw" if write else "ro"), uri=True, timeout=0,
                               isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        if not write:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute("ROLLBACK")
        return None
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return "SQLite: %s" % exc
        return None
    finally:
        conn.close()


def normalize_trust(trust):
    t = (trust or "").replace(" ", "")
    if not is_nss_trust(t):  # the one pattern: module_utils/tokentrust_facts.py
        raise ValueError("trust %r is not a certutil trust string: %s" % (trust, NSS_TRUST_HELP))
    return t


class Certificate:
    """A certificate as stored in the database (nickname, DER, fingerprints, names, validity, trust)."""

    __slots__ = ("nickname", "der", "subject", "issuer", "not_before", "not_after", "trust")

    def __init__(self, nickname, der, subject, issuer, not_before, not_after, trust):
        self.nickname = nickname
        self.der = der
        self.subject = subject
        self.issuer = issuer
        self.not_before = not_before
        self.not_after = not_after
        self.trust = trust

    @property
    def sha256(self):
        return hashlib.sha256(self.der).hexdigest().upper()

    @property
    def sha1(self):
        return hashlib.sha1(self.der).hexdigest().upper()  # noqa: S324 - fingerprint, not security

    def to_dict(self):
        return {
            "nickname": self.nickname,
            "sha256": self.sha256,
            "sha1": self.sha1,
            "subject": self.subject,
            "issuer": self.issuer,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "trust": self.trust,
        }

    def __repr__(self):
        return "Certificate(%r, %s, trust=%r)" % (self.nickname, self.sha256[:16], self.trust)


def _prtime_iso(t):
    return (datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
            + datetime.timedelta(microseconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fix_fd(fd, uid, gid, mode):
    """Owner (when root) and mode of an open file, without following any path."""
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid) and os.geteuid() == 0:
        os.fchown(fd, uid, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def _file_state(directory):
    out = {}
    for name in DB_FILES:
        p = os.path.join(directory, name)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            out[name] = None
            continue
        out[name] = st
    return out


class NSSDatabase:
    """Context manager around NSS_Initialize / NSS_Shutdown for one database directory.

    readonly=True opens with NSS_INIT_READONLY; a missing database is then an error. readonly=False creates
    cert9.db / key4.db / pkcs11.txt when the directory has none yet (as Firefox does), with an empty password.
    `password` is the database's primary password when it has one (needed to write to a protected database).
    modules=False opens the certificate and key databases only (NSS_INIT_NOMODDB): faster, and no PKCS#11 library
    registered in pkcs11.txt (middleware, a token) is loaded; module methods then refuse to run.
    """

    def __init__(self, path, readonly=True, password=None, modules=True):
        self.prefix, self.directory = split_dbspec(path)
        self.spec = "sql:%s" % self.directory
        self.readonly = readonly
        self.password = password
        self.load_modules = modules
        self._snapshot = None
        self._before = None
        self._dir_stat = None
        self._dirty = False
        self._slot = None
        self._handle = None
        self._cache = None  # certificates() result, kept up to date by our own writes
        self.created = False

    # ------------------------------------------------------------------ opening and closing
    def _precheck(self):
        d = self.directory
        if self.prefix not in ("sql",):
            raise LegacyDatabaseError(
                "open", self.spec, text="database type '%s:' is not supported: tokentrust works on sql: "
                "databases (cert9.db, key4.db, pkcs11.txt) as every Firefox since 58 uses" % self.prefix)
        if not os.path.exists(d):
            raise NSSError("open", self.spec, text="directory %s does not exist: check the profile path, or start "
                           "Firefox once so that it creates the profile" % d)
        if not os.path.isdir(d):
            raise NSSError("open", self.spec, text="%s is not a directory" % d)
        present = set(os.listdir(d))
        for name in DB_FILES + LEGACY_FILES:
            if name in present and os.path.islink(os.path.join(d, name)):
                raise NSSError("open", self.spec, name="TT_SYMLINK",
                               text="%s is a symbolic link (to %s): tokentrust never follows links inside a profile; "
                               "replace it with the real file (or remove it: Firefox recreates it); nothing was "
                               "changed" % (os.path.join(d, name), os.readlink(os.path.join(d, name))))
        for name in DB_FILES:
            if name in present:
                p = os.path.join(d, name)
                os.close(open_regular(p, "database file", MAX_PKCS11_TXT_BYTES if name == "pkcs11.txt"
                                      else MAX_DB_BYTES))
        legacy = [n for n in LEGACY_FILES if n in present]
        if legacy and "cert9.db" not in present:
            raise LegacyDatabaseError(
                "open", self.spec, text="%s holds a legacy dbm database (%s) and no cert9.db: open the profile "
                "once with a current Firefox, which migrates it, or run `certutil --upgrade-merge`... ; tokentrust "
                "does not write legacy databases" % (d, ", ".join(legacy)))
        for name in ("cert9.db", "key4.db"):
            if name in present:
                reason = check_sqlite_file(os.path.join(d, name))
                if reason:
                    raise NSSError("open", self.spec, name="TT_BAD_DATABASE_FILE",
                                   text="%s %s; nothing was changed. Move the broken file aside (Firefox then "
                                   "recreates it) or restore it from a backup" % (os.path.join(d, name), reason))
        if self.readonly and "cert9.db" not in present:
            raise NSSError("open", self.spec, text="no cert9.db in %s (profile never started?): nothing to read" % d)
        if not self.readonly:
            if not os.access(d, os.W_OK) or os.statvfs(d).f_flag & os.ST_RDONLY:
                raise NSSError("open", self.spec, text="directory %s is not writable (read-only file system or "
                               "permissions): run as the profile owner or as root" % d)
            for name in DB_FILES:
                p = os.path.join(d, name)
                if name in present and not os.access(p, os.W_OK):
                    raise NSSError("open", self.spec, text="%s is not writable: run as its owner or as root" % p)
        for name in ("cert9.db", "key4.db"):
            if name in present:
                holder = sqlite_locked(os.path.join(d, name), write=not self.readonly)
                if holder:
                    raise DatabaseLockedError(
                        "open", self.spec, name="TT_DATABASE_LOCKED",
                        text="%s is locked by another process (%s): close Firefox (or the other program) on this "
                        "profile and run again; nothing was changed" % (os.path.join(d, name), holder))

    def __enter__(self):
        global _open_db
        if _open_db is not None:
            raise NSSError("open", self.spec, text="another NSS database is open in this process (%s): close it "
                           "first (one database at a time)" % _open_db.spec)
        if lib.nss3.NSS_IsInitialized():
            raise NSSError("open", self.spec, text="NSS is already initialised in this process by someone else")
        self._precheck()
        self._dir_stat = os.stat(self.directory)
        self._before = _file_state(self.directory)
        if not self.readonly:
            self._snapshot = {}
            for name in DB_FILES:
                p = os.path.join(self.directory, name)
                if self._before[name] is not None:
                    self._snapshot[name] = read_regular(p, "database file")
                else:
                    self._snapshot[name] = None
            self.created = self._before["cert9.db"] is None
        # NSS measures the speed of the db directory with temp files unless told not to; we do not need it.
        os.environ.setdefault("NSS_SDB_USE_CACHE", "no")
        flags = NSS_INIT_NOROOTINIT | NSS_INIT_OPTIMIZESPACE
        if self.readonly:
            flags |= NSS_INIT_READONLY
        if not self.load_modules:
            # certificates only: pkcs11.txt is neither read nor written, no PKCS#11 library is loaded
            flags |= NSS_INIT_NOMODDB
        old_umask = os.umask(0o077)
        try:
            rv = lib.nss3.NSS_Initialize(self.spec.encode(), b"", b"", b"secmod.db", flags)
        finally:
            os.umask(old_umask)
        if rv != 0:
            err = _last("open", self.spec)
            self._restore_files(force=True)
            raise err
        _open_db = self
        try:
            self._handle = lib.nss3.CERT_GetDefaultCertDB()
            self._slot = lib.nss3.PK11_GetInternalKeySlot()
            if not self.readonly and lib.nss3.PK11_NeedUserInit(self._slot):
                # A new database: set the empty password as Firefox does on first start.
                check(lib.nss3.PK11_InitPin(self._slot, ffi.NULL, b""), "initialise the key database", self.spec)
                self._dirty = True
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        global _open_db
        if self._slot is not None:
            lib.nss3.PK11_FreeSlot(self._slot)
            self._slot = None
        if lib.nss3.NSS_IsInitialized():
            if lib.nss3.NSS_Shutdown() != 0:
                err = _last("close", self.spec, hint="a handle was still in use")
                _open_db = None
                if exc_type is None:
                    raise err
        _open_db = None
        if not self.readonly:
            if exc_type is not None and self._dirty:
                self._restore_files()
            self._fix_ownership()
        return False

    def _restore_files(self, force=False):
        """Put the database files back as they were before we opened (only what differs)."""
        if not self._snapshot:
            return
        for name, data in self._snapshot.items():
            p = os.path.join(self.directory, name)
            if data is None:
                if os.path.exists(p) and (force or self._dirty):
                    os.unlink(p)
                continue
            try:
                if read_regular(p, "database file") == data:
                    continue
            except (OSError, NSSError):  # gone, or a link planted in its place: replaced below, never followed
                pass
            st = self._before[name]
            # a fixed temporary name: a leftover of an interrupted run is unlinked first (never followed)
            write_nofollow(p, data, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                           tmp_name=name + ".tokentrust-restore")

    def _fix_ownership(self):
        """Every database file keeps its owner and mode; a new one gets the directory's owner and mode 0600.
        Files are opened with O_NOFOLLOW: a link planted in their place is left alone, never followed."""
        d = self._dir_stat
        for name in DB_FILES:
            p = os.path.join(self.directory, name)
            before = self._before.get(name)
            uid, gid = (before.st_uid, before.st_gid) if before else (d.st_uid, d.st_gid)
            mode = stat.S_IMODE(before.st_mode) if before else 0o600
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    _fix_fd(fd, uid, gid, mode)
            finally:
                os.close(fd)

    def file_modes(self):
        """{file name: permission bits} of the database files as they were before this open."""
        return {n: stat.S_IMODE(st.st_mode) for n, st in (self._before or {}).items() if st is not None}

    @property
    def snapshot(self):
        """The database files' bytes as they were before this writable open (None for a file that did not exist)."""
        return dict(self._snapshot or {})

    def _need_open(self):
        if _open_db is not self:
            raise NSSError("use", self.spec, text="database is not open (use it inside `with NSSDatabase(...)`)")

    def _writable(self, op):
        self._need_open()
        if self.readonly:
            raise NSSError(op, self.spec, text="database was opened read-only")

    def _login_if_needed(self, op):
        slot = self._slot
        if lib.nss3.PK11_NeedLogin(slot) and not lib.nss3.PK11_IsLoggedIn(slot, ffi.NULL):
            if self.password is None:
                raise NSSError(op, self.spec, name="SEC_ERROR_TOKEN_NOT_LOGGED_IN",
                               text="the database has a primary password: give it (password option) to change it")
            if lib.nss3.PK11_CheckUserPassword(slot, self.password.encode()) != 0:
                raise _last(op, self.spec, hint="wrong primary password for this database")

    # ------------------------------------------------------------------ certificates
    def _cert_from_node(self, cert, nickname):
        der = bytes(ffi.buffer(cert.derCert.data, cert.derCert.len))
        trust = ffi.new("CERTCertTrust *")
        if lib.nss3.CERT_GetCertTrust(cert, trust) == 0:
            trust_s = _encode_trust(trust)
        else:
            trust_s = ",,"  # no trust object: certutil prints ",,"
        nb = ffi.new("PRTime *")
        na = ffi.new("PRTime *")
        lib.nss3.CERT_GetCertTimes(cert, nb, na)
        return Certificate(
            nickname=nickname,
            der=der,
            subject=_str(cert.subjectName),
            issuer=_str(cert.issuerName),
            not_before=_prtime_iso(nb[0]),
            not_after=_prtime_iso(na[0]),
            trust=trust_s,
        )

    def certificates(self, fresh=False):
        """Certificates stored in the database (the 'NSS Certificate DB' token), as `certutil -L` lists them.

        The list is read once per open and then kept up to date by our own writes (fresh=True re-reads it).
        """
        self._need_open()
        if self._cache is not None and not fresh:
            return list(self._cache)
        certs = lib.nss3.PK11_ListCertsInSlot(self._slot)
        if certs == ffi.NULL:
            raise _last("list certificates", self.spec)
        out = []
        try:
            head = ffi.addressof(certs.list)
            node = ffi.cast("CERTCertListNode *", certs.list.next)
            while ffi.cast("PRCList *", node) != head:
                nick = _str(ffi.cast("char *", node.appData)) if node.appData != ffi.NULL else None
                out.append(self._cert_from_node(node.cert, nick))
                node = ffi.cast("CERTCertListNode *", node.links.next)
        finally:
            lib.nss3.CERT_DestroyCertList(certs)
        self._cache = out
        return list(out)

    def find_certificate(self, der=None, nickname=None):
        for c in self.certificates():
            if der is not None and c.der == der:
                return c
            if nickname is not None and der is None and c.nickname == nickname:
                return c
        return None

    def _decode(self, der, op):
        buf = ffi.from_buffer("char[]", der)
        cert = lib.smime3.CERT_DecodeCertFromPackage(buf, len(der))
        if cert == ffi.NULL:
            raise _last(op, self.spec, hint="the data is not a certificate NSS can decode")
        return cert

    def add_certificate(self, der, nickname, trust="C,,"):
        """Import `der` under `nickname` with `trust`. Returns 'added', 'trust_changed' or 'unchanged'.

        The same certificate already present (under any nickname) is not imported again; only its trust is
        corrected. A nickname used by a different certificate is an error (NSSError name TT_NICKNAME_TAKEN).
        """
        op = "add certificate %r" % nickname
        self._writable(op)
        try:
            trust = normalize_trust(trust)
            der = der_from_bytes(der, "certificate %r" % nickname)
        except ValueError as exc:
            raise NSSError(op, self.spec, name="TT_BAD_INPUT", text=str(exc)) from None
        existing = self.certificates()
        same = [c for c in existing if c.der == der]
        if not same:
            clash = [c for c in existing if c.nickname == nickname]
            if clash:
                raise NSSError(op, self.spec, name="TT_NICKNAME_TAKEN", text="nickname %r is already used by "
                               "another certificate (SHA-256 %s, subject %s): choose another nickname or remove "
                               "that certificate first" % (nickname, clash[0].sha256, clash[0].subject))
        want = ffi.new("CERTCertTrust *")
        check(lib.nss3.CERT_DecodeTrustString(want, trust.encode()), op, self.spec, hint="bad trust string")
        want_s = _encode_trust(want)
        if same and same[0].trust == want_s:
            return "unchanged"
        self._login_if_needed(op)
        cert = self._decode(der, op)
        try:
            if not same:
                self._dirty = True
                check(lib.nss3.PK11_ImportCert(self._slot, cert, 0, nickname.encode(), 0), op, self.spec)
            self._dirty = True
            check(lib.nss3.CERT_ChangeCertTrust(self._handle, cert, want), op, self.spec, hint="setting trust")
            entry = self._cert_from_node(cert, same[0].nickname if same else nickname)
        finally:
            lib.nss3.CERT_DestroyCertificate(cert)
        self._cache = [c for c in self._cache if c.der != der] + [entry]
        return "trust_changed" if same else "added"

    def set_trust(self, der, trust):
        """Change the trust of a stored certificate. Returns True if changed."""
        op = "change trust"
        self._writable(op)
        trust = normalize_trust(trust)
        der = der_from_bytes(der)
        cur = self.find_certificate(der=der)
        if cur is None:
            raise NSSError(op, self.spec, name="SEC_ERROR_UNKNOWN_CERT", text="certificate is not in the database")
        want = ffi.new("CERTCertTrust *")
        check(lib.nss3.CERT_DecodeTrustString(want, trust.encode()), op, self.spec)
        if _encode_trust(want) == cur.trust:
            return False
        self._login_if_needed(op)
        cert = self._decode(der, op)
        try:
            self._dirty = True
            check(lib.nss3.CERT_ChangeCertTrust(self._handle, cert, want), op, self.spec)
            entry = self._cert_from_node(cert, cur.nickname)
        finally:
            lib.nss3.CERT_DestroyCertificate(cert)
        self._cache = [c for c in self._cache if c.der != der] + [entry]
        return True

    def delete_certificate(self, der=None, nickname=None):
        """Delete a certificate by DER or by nickname. Returns True if something was deleted."""
        op = "delete certificate %s" % (repr(nickname) if nickname else "")
        self._writable(op)
        if der is not None:
            der = der_from_bytes(der)
        cur = self.find_certificate(der=der, nickname=nickname)
        if cur is None:
            return False
        self._login_if_needed(op)
        item = ffi.new("SECItem *")
        buf = ffi.from_buffer("unsigned char[]", cur.der)
        item.data = buf
        item.len = len(cur.der)
        cert = lib.nss3.CERT_FindCertByDERCert(self._handle, item)
        if cert == ffi.NULL:
            raise _last(op, self.spec)
        try:
            self._dirty = True
            check(lib.nss3.SEC_DeletePermCertificate(cert), op, self.spec)
        finally:
            lib.nss3.CERT_DestroyCertificate(cert)
        self._cache = [c for c in self._cache if c.der != cur.der]
        return True

    # ------------------------------------------------------------------ PKCS#11 modules
    def modules(self):
        """PKCS#11 modules known to the database (pkcs11.txt), with their slots and tokens."""
        self._need_open()
        if not self.load_modules:
            raise NSSError("list modules", self.spec, text="database opened without its module database "
                           "(modules=False)")
        lock = lib.nss3.SECMOD_GetDefaultModuleListLock()
        out = []
        lib.nss3.SECMOD_GetReadLock(lock)
        try:
            node = lib.nss3.SECMOD_GetDefaultModuleList()
            while node != ffi.NULL:
                out.append(_module_dict(node.module))
                node = node.next
        finally:
            lib.nss3.SECMOD_ReleaseReadLock(lock)
        return out

    def find_module(self, name):
        for m in self.modules():
            if m["name"] == name:
                return m
        return None

    def add_module(self, name, library, require_library=True):
        """Register a PKCS#11 module (as `modutil -add`). Returns True if added, False if already there.

        NSS loads the library to register it; a missing file is refused up front with a clear error.
        """
        op = "add module %r" % name
        self._writable(op)
        cur = self.find_module(name)
        if cur is not None:
            if cur["library"] == library:
                return False
            raise NSSError(op, self.spec, name="TT_MODULE_NAME_TAKEN", text="a module named %r is already "
                           "registered with library %s: delete it first or choose another name"
                           % (name, cur["library"]))
        if not os.path.isfile(library):
            raise NSSError(op, self.spec, name="TT_NO_LIBRARY", text="PKCS#11 library %s does not exist on this "
                           "host: install the middleware first (or fix the path)" % library)
        self._dirty = True
        check(lib.nss3.SECMOD_AddNewModule(name.encode(), library.encode(), 0, 0), op, self.spec,
              hint="NSS could not load %s as a PKCS#11 module" % library)
        return True

    def delete_module(self, name):
        """Remove a module from the database. Returns True if it was there."""
        op = "delete module %r" % name
        self._writable(op)
        cur = self.find_module(name)
        if cur is None:
            return False
        if cur["internal"]:
            raise NSSError(op, self.spec, text="%r is NSS's internal module and cannot be removed" % name)
        self._dirty = True
        typ = ffi.new("int *")
        check(lib.nss3.SECMOD_DeleteModule(name.encode(), typ), op, self.spec)
        return True

    # ------------------------------------------------------------------ tokens
    @property
    def internal_slot(self):
        self._need_open()
        return self._slot


def _module_dict(mod):
    slots = []
    for i in range(mod.slotCount):
        slots.append(slot_info(mod.slots[i]))
    return {
        "name": _str(mod.commonName),
        "library": _str(mod.dllName),
        "internal": bool(mod.internal),
        "loaded": bool(mod.loaded),
        "fips": bool(mod.isFIPS),
        "slots": slots,
    }


def _pkcs11_blocks(text):
    """pkcs11.txt as NSS reads it (nssutil_ReadSecmodDB): entries separated by blank lines, `#` comments, one
    `key=value` per line. -> list of (raw lines, fields); a module's name is the text after `name=` exactly."""
    blocks, cur = [], []
    for line in text.split("\n"):
        if line.strip() == "":
            if cur:
                blocks.append(cur)
                cur = []
            continue
        cur.append(line.rstrip("\r"))
    if cur:
        blocks.append(cur)
    out = []
    for lines in blocks:
        fields = {}
        for line in lines:
            if line.startswith("#") or "=" not in line:
                continue
            k, v = line.split("=", 1)
            fields.setdefault(k.strip(), v)
        out.append((lines, fields))
    return out


def _module_of(fields):
    name = fields["name"].rstrip()
    library = (fields.get("library") or "").strip() or None
    return {"name": name, "library": library, "internal": not library}


def read_pkcs11_txt(directory, text=None):
    """Modules registered in a database's pkcs11.txt, read as text (nothing loaded): [{name, library, internal}].

    The file is opened without blocking or following a link and must be a regular file of at most
    MAX_PKCS11_TXT_BYTES (NSSError otherwise)."""
    if text is None:
        text = _pkcs11_text(directory)
    return [_module_of(f) for _l, f in _pkcs11_blocks(text or "") if "name" in f]


def _pkcs11_text(directory):
    path = os.path.join(directory, "pkcs11.txt")
    if os.path.islink(path):
        raise NSSError("read modules", "sql:%s" % directory, name="TT_SYMLINK",
                       text="%s is a symbolic link (to %s): tokentrust never follows links inside a profile; replace "
                       "it with the real file (or remove it: Firefox recreates it); nothing was changed"
                       % (path, os.readlink(path)))
    try:
        data = read_regular(path, "module database", MAX_PKCS11_TXT_BYTES)
    except FileNotFoundError:
        return None
    return data.decode("utf-8", errors="replace")


def internal_module_block(directory):
    """The internal-module entry NSS writes first in a new pkcs11.txt (NSS 3.x, sql: databases)."""
    return ("library=\nname=NSS Internal PKCS #11 Module\nparameters=configdir='sql:%s' certPrefix='' keyPrefix='' "
            "secmod='secmod.db' flags= updatedir='' updateCertPrefix='' updateKeyPrefix='' updateid='' "
            "updateTokenDescription='' \nNSS=Flags=internal,critical trustOrder=75 cipherOrder=100 slotParams=(1={"
            "slotFlags=[ECC,RSA,DSA,DH,RC2,RC4,DES,RANDOM,SHA1,MD5,MD2,SSL,TLS,AES,Camellia,SEED,SHA256,SHA512] "
            "askpw=any timeout=30})\n" % directory)


def edit_pkcs11_txt(directory, name, library=None, remove=True, add=False):
    """Register or remove one PKCS#11 module by editing pkcs11.txt as text: no library is loaded, neither ours nor
    one the file lists. Only entries named exactly `name` (and never the internal module) are removed; every other
    entry is kept byte for byte. The new file is written beside it and renamed over it (atomic: a kill leaves the
    old or the new file, never a half), keeping the old file's mode (0600 for a new one). Call it as the profile's
    owner under the profile lock. Returns the modules as read back from the file written."""
    path = os.path.join(directory, "pkcs11.txt")
    text = _pkcs11_text(directory)
    old_mode = None
    if text is not None:
        old_mode = stat.S_IMODE(os.lstat(path).st_mode)
        kept = []
        for lines, fields in _pkcs11_blocks(text):
            mod = _module_of(fields) if "name" in fields else None
            if remove and mod and mod["name"] == name and not mod["internal"]:
                continue
            kept.append("\n".join(lines) + "\n")
    else:
        kept = [internal_module_block(directory)]
    if add:
        kept.append("library=%s\nname=%s\n" % (library, name))
    new = "\n".join(kept) + "\n"
    # a fixed temporary name: a leftover of a killed run is unlinked first (unlink acts on a planted link itself)
    write_nofollow(path, new, mode=0o600 if old_mode is None else old_mode, tmp_name=PKCS11_TXT_NEW)
    return read_pkcs11_txt(directory)


def token_flags(flags):
    return sorted(k for k, v in TOKEN_FLAGS.items() if flags & v)


def slot_info(slot):
    """Name, token label, presence and PKCS#11 token flags of a slot."""
    present = bool(lib.nss3.PK11_IsPresent(slot))
    info = {
        "slot": _str(lib.nss3.PK11_GetSlotName(slot)),
        "token": _str(lib.nss3.PK11_GetTokenName(slot)) if present else None,
        "present": present,
        "internal": bool(lib.nss3.PK11_IsInternal(slot)),
        "flags": [],
        "flags_value": 0,
    }
    if present:
        ti = ffi.new("CK_TOKEN_INFO *")
        if lib.nss3.PK11_GetTokenInfo(slot, ti) == 0:
            info["flags_value"] = int(ti.flags)
            info["flags"] = token_flags(ti.flags)
            info["manufacturer"] = _padded(ti.manufacturerID)
            info["model"] = _padded(ti.model)
            info["serial"] = _padded(ti.serialNumber)
            info["min_pin_len"] = int(ti.ulMinPinLen)
            info["max_pin_len"] = int(ti.ulMaxPinLen)
    return info


# certdb.h trust bits
CERTDB_TERMINAL_RECORD = 1 << 0
CERTDB_TRUSTED = 1 << 1
CERTDB_SEND_WARN = 1 << 2
CERTDB_VALID_CA = 1 << 3
CERTDB_TRUSTED_CA = 1 << 4
CERTDB_USER = 1 << 6
CERTDB_TRUSTED_CLIENT_CA = 1 << 7
CERTDB_INVISIBLE_CA = 1 << 8
CERTDB_GOVT_APPROVED_CA = 1 << 9


def trust_flags_to_string(flags):
    """One trust field as `certutil -L` prints it (certutil.c printflags)."""
    s = ""
    if flags & CERTDB_VALID_CA and not flags & (CERTDB_TRUSTED_CA | CERTDB_TRUSTED_CLIENT_CA):
        s += "c"
    if flags & CERTDB_TERMINAL_RECORD and not flags & CERTDB_TRUSTED:
        s += "p"
    if flags & CERTDB_TRUSTED_CA:
        s += "C"
    if flags & CERTDB_TRUSTED_CLIENT_CA:
        s += "T"
    if flags & CERTDB_TRUSTED:
        s += "P"
    if flags & CERTDB_USER:
        s += "u"
    if flags & CERTDB_SEND_WARN:
        s += "w"
    if flags & CERTDB_INVISIBLE_CA:
        s += "I"
    if flags & CERTDB_GOVT_APPROVED_CA:
        s += "G"
    return s


def _encode_trust(t):
    return ",".join(trust_flags_to_string(f) for f in (t.sslFlags, t.emailFlags, t.objectSigningFlags))


def _last(op, db, hint=""):
    from ansible.module_utils.tokentrust_nss.errors import last_error

    return last_error(op, db, hint)
