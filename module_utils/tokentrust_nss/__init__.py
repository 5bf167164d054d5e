# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""tokentrust's own cffi bindings to NSS (libnss3, libnspr4, libsmime3, libssl3), ABI mode.

Public API:
    HAS_CFFI, CFFI_IMPORT_ERROR                         the cffi guard: the traceback of the failed import, or None
    NSSDatabase(path, readonly=True, password=None)   context manager; certificates, modules, trust
    NSSError, LegacyDatabaseError, DatabaseLockedError
    der_from_bytes(data)                                one certificate from DER or PEM bytes
    nss_version()
"""
from ansible.module_utils.tokentrust_nss._ffi import CFFI_IMPORT_ERROR, HAS_CFFI  # noqa: F401
from ansible.module_utils.tokentrust_nss.database import (  # noqa: F401
    DB_FILES,
    TOKEN_FLAGS,
    Certificate,
    NSSDatabase,
    check_sqlite_file,
    der_from_bytes,
    edit_pkcs11_txt,
    normalize_trust,
    read_pkcs11_txt,
    slot_info,
    split_dbspec,
    token_flags,
)
from ansible.module_utils.tokentrust_nss.errors import (  # noqa: F401
    DatabaseLockedError,
    LegacyDatabaseError,
    NSSError,
    NSSMissingError,
)


def nss_version():
    from ansible.module_utils.tokentrust_nss._ffi import ffi, lib

    return ffi.string(lib.nss3.NSS_GetVersion()).decode()
