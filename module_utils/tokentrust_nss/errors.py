# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""NSSError for every NSS failure; TokenError and TLSError (tokentrust_nss.token / .tls) for the test login and
PIN operations. All derive from the project's one base, tokentrust_errors.TokentrustError (kind, message)."""
from __future__ import annotations

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_nss._ffi import ffi, lib


class NSSError(TokentrustError):
    """An NSS call failed, or a database cannot be used as asked.

    Attributes: ``operation`` (what we were doing), ``database`` (the NSS database, e.g. ``sql:/home/u/...``),
    ``code`` (NSPR/NSS error number or None for our own pre-checks), ``name`` (e.g. ``SEC_ERROR_BAD_DATABASE``,
    from PR_ErrorToName), ``text`` (NSS's own description, or ours).
    """

    def __init__(self, operation, database=None, code=None, name=None, text=""):
        self.operation = operation
        self.database = database
        self.code = code
        self.name = name
        self.text = text
        where = " on %s" % database if database else ""
        what = "%s: %s" % (name, text) if name else text
        super().__init__("nss", "%s failed%s: %s" % (operation, where, what), nss_error=name, database=database)


def kind_error_init(self, kind, message, nss_error=None, **details):
    """__init__ of TokenError and TLSError: (kind, message, NSS error name or None, details); the NSS error name
    is a detail only when there is one."""
    if nss_error:
        details["nss_error"] = nss_error
    TokentrustError.__init__(self, kind, message, **details)


class NSSMissingError(NSSError):
    """NSS (libnss3 and friends) cannot be loaded on this host: the message says what to install."""


class LegacyDatabaseError(NSSError):
    """The directory holds only a legacy dbm database (cert8.db / secmod.db)."""


class DatabaseLockedError(NSSError):
    """The database is held by another process (Firefox running, or another writer)."""


def _cstr(p):
    return ffi.string(p).decode("utf-8", "replace") if p != ffi.NULL else None


def last_error(operation, database=None, hint=""):
    """Build an NSSError from the current thread's NSPR error: call right after the failing NSS call."""
    code = lib.nspr4.PR_GetError()
    name = _cstr(lib.nspr4.PR_ErrorToName(code)) or "error %d" % code
    text = _cstr(lib.nspr4.PR_ErrorToString(code, 0)) or ""
    if text.startswith("Unknown code"):
        text = ""
    if hint:
        text = (text + ". " if text else "") + hint
    cls = NSSError
    if name in ("SEC_ERROR_LOCKED_DATABASE",) or "locked" in text.lower() and "database" in text.lower():
        cls = DatabaseLockedError
    return cls(operation, database, code, name, text)


def check(status, operation, database=None, hint=""):
    """Raise NSSError if `status` is a failing SECStatus / NULL pointer; return it otherwise."""
    if status is None or status == ffi.NULL or (isinstance(status, int) and status != 0):
        raise last_error(operation, database, hint)
    return status
