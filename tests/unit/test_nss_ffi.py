"""The cffi declarations of tokentrust_nss: the generated out-of-line module (_ffi_abi.py) is current and holds
exactly what _ffi.py declares, _ffi uses it, and falls back to parsing when it does not match."""
import os
import subprocess
import sys

import cffi
from ansible.module_utils.tokentrust_nss import _ffi, _ffi_abi

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_generated_module_is_current():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_nss_ffi.py"), "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert _ffi_abi.CDEF_SHA256 == _ffi.cdef_digest()


def test_the_modules_use_the_generated_declarations():
    assert _ffi.ffi is _ffi_abi.ffi
    assert not isinstance(_ffi.ffi, cffi.FFI)  # _cffi_backend's compiled FFI: no pycparser at run time


def test_generated_and_parsed_declare_the_same(monkeypatch):
    monkeypatch.setattr(_ffi_abi, "CDEF_SHA256", "made from other declarations")
    parsed = _ffi._make_ffi()
    assert isinstance(parsed, cffi.FFI)  # a stale file is not used: the declarations are parsed
    assert parsed.list_types() == _ffi_abi.ffi.list_types()
    for name in ("CERTCertificate *", "SSLChannelInfo", "CK_FUNCTION_LIST", "PK11SlotInfo *"):
        assert parsed.sizeof(name) == _ffi_abi.ffi.sizeof(name), name
