"""The cffi guard of tokentrust_nss (as community.crypto guards cryptography): without cffi the bindings still import
(ansible-test's import sanity test, a module that must say what to install), using them raises an NSSError that says
what to install, and every module that needs cffi fails with missing_required_lib, run by the real `ansible` CLI on a
Python that has no cffi."""
import json
import os
import subprocess
import sys

import pytest

from tests.support.ansible_run import ROOT, ansible_env

BIN = os.path.dirname(sys.executable)

BLOCKED = """
import sys
sys.modules["cffi"] = None           # `import cffi` raises ImportError, as on a host without python3-cffi
sys.modules["_cffi_backend"] = None
import ansible.module_utils
ansible.module_utils.__path__.append({mu!r})
import json
from ansible.module_utils import tokentrust_nss
from ansible.module_utils.tokentrust_nss import token, tls, database  # noqa
from ansible.module_utils import tokentrust_provision  # noqa
out = {{"has_cffi": tokentrust_nss.HAS_CFFI, "error": tokentrust_nss.CFFI_IMPORT_ERROR}}
try:
    with tokentrust_nss.NSSDatabase({db!r}, readonly=True):
        pass
except tokentrust_nss.NSSError as exc:
    out.update(raised=type(exc).__name__, message=str(exc))
print(json.dumps(out))
"""


def test_bindings_import_without_cffi_and_say_what_to_install(tmp_path):
    p = subprocess.run([sys.executable, "-c", BLOCKED.format(mu=os.path.join(ROOT, "module_utils"), db=str(tmp_path))],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["has_cffi"] is False and "from cffi import FFI" in out["error"]
    assert out["raised"] == "NSSMissingError", out
    assert "the Python cffi package is not installed for %s" % sys.executable in out["message"]
    assert "apt-get install python3-cffi" in out["message"]


def test_bindings_with_cffi_report_it():
    from ansible.module_utils import tokentrust_nss

    assert tokentrust_nss.HAS_CFFI is True and tokentrust_nss.CFFI_IMPORT_ERROR is None


@pytest.fixture(scope="module")
def python_without_cffi(tmp_path_factory):
    """A virtual environment of the system Python without its site packages: python3-cffi is not importable."""
    venv = tmp_path_factory.mktemp("nocffi") / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import cffi"], capture_output=True).returncode == 1
    return python


@pytest.mark.parametrize("module, args", [
    ("nss_info", {"databases": ["{db}"]}),
    ("nss_certificate", {"databases": ["{db}"], "certificates": []}),
    ("nss_pkcs11_module", {"databases": ["{db}"], "library": "/nonexistent/libx.so"}),
    ("pkcs11_pin", {"action": "change", "pin": "1234", "new_pin": "5678", "module": "/nonexistent/libx.so"}),
    ("pkcs11_token_login", {"pin": "1234", "module": "/nonexistent/libx.so"}),
])
def test_modules_fail_with_missing_required_lib_on_a_python_without_cffi(python_without_cffi, tmp_path, module, args):
    args = json.loads(json.dumps(args).replace("{db}", str(tmp_path)))
    env = ansible_env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    p = subprocess.run([os.path.join(BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                        "-e", "ansible_python_interpreter=%s" % python_without_cffi, "-m", module,
                        "-a", json.dumps(args)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    res = json.loads(p.stdout[p.stdout.index("{"):])["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert res.get("failed") is True, res
    assert "Failed to import the required Python library (cffi" in res["msg"], res["msg"]
    assert "1234" not in p.stdout + p.stderr  # the PIN stays out of the result even on this early failure
    assert list(tmp_path.iterdir()) == []  # nothing was written
