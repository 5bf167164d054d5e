"""The one exception base and the one fail_json adapter (module_utils/tokentrust_errors.py), on a real
AnsibleModule (its arguments set the way Ansible hands them over, its JSON result read from stdout)."""
import ast
import importlib
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes
from ansible.module_utils.tokentrust_errors import TokentrustError, fail

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _project_exception_classes():
    """Every class named *Error defined in module_utils/ (found in the source, so a new one cannot be missed)."""
    found = []
    mu = os.path.join(ROOT, "module_utils")
    for dirpath, _dirs, files in os.walk(mu):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, mu)[:-3].replace(os.sep, ".").replace(".__init__", "")
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                    found.append(("ansible.module_utils." + rel, node.name))
    return found


def test_every_project_exception_derives_from_the_one_base():
    classes = _project_exception_classes()
    assert len(classes) >= 15, classes  # NSSError, TokenError, TLSError, CAError, PolicyError, ...
    for mod, name in classes:
        cls = getattr(importlib.import_module(mod), name)
        assert issubclass(cls, TokentrustError), "%s.%s" % (mod, name)
    kinds = [c for _m, c in classes if c == "KindError"]
    assert not kinds, "KindError is merged into TokentrustError"


def _module(name="nss_certificate", **spec):
    basic._ANSIBLE_ARGS = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": {"_ansible_module_name": name}}))
    basic._ANSIBLE_PROFILE = "legacy"  # what `python module.py args.json` uses (ansible-core's debug entry)
    return basic.AnsibleModule(argument_spec=spec)


def _result(call):
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        call()
    return json.loads(out.getvalue())


def test_our_error_fails_with_kind_details_hint_and_no_traceback():
    from ansible.module_utils.tokentrust_nss.token import TokenError
    from ansible.module_utils.tokentrust_provision import InputError

    m = _module()
    r = _result(lambda: fail(m, InputError("certificates[0]: 'name' is required"), databases=[], changed=False))
    assert r["failed"] is True and r["kind"] == "input" and r["databases"] == [] and "exception" not in r
    assert r["msg"] == "nss_certificate: certificates[0]: 'name' is required"
    e = TokenError("wrong_pin", "wrong PIN for token 'X'", "SEC_ERROR_BAD_PASSWORD", token={"label": "X"})
    r = _result(lambda: fail(m, e))
    assert (r["kind"], r["nss_error"], r["token"]) == ("wrong_pin", "SEC_ERROR_BAD_PASSWORD", {"label": "X"})
    assert e.to_dict() == {"kind": "wrong_pin", "message": "wrong PIN for token 'X'",
                           "nss_error": "SEC_ERROR_BAD_PASSWORD", "token": {"label": "X"}}
    r = _result(lambda: fail(m, TokentrustError("policy", "/etc/p.json: bad JSON", hint="fix it", path="/etc/p.json")))
    assert r["msg"] == "nss_certificate: /etc/p.json: bad JSON. fix it" and r["hint"] == "fix it"
    assert r["path"] == "/etc/p.json"
    # a message that already names the module is not prefixed twice
    r = _result(lambda: fail(m, TokentrustError("x", "nss_certificate: already named")))
    assert r["msg"] == "nss_certificate: already named"


def test_unexpected_error_keeps_its_traceback():
    m = _module("firefox_policies")

    def bug():
        try:
            {}["missing"]
        except KeyError as exc:
            fail(m, exc)

    r = _result(bug)
    assert r["msg"].startswith("firefox_policies: unexpected error") and "KeyError" in r["msg"]
    assert "kind" not in r
    # ansible-core 2.19 returns the traceback only when traceback capture is on (ANSIBLE_DISPLAY_TRACEBACK)
    assert "exception" not in r or "KeyError" in json.dumps(r["exception"])


def test_nss_error_is_a_kind_nss_error():
    from ansible.module_utils.tokentrust_nss import NSSError

    e = NSSError("open", "sql:/tmp/x", -8174, "SEC_ERROR_BAD_DATABASE", "bad database")
    assert str(e) == "open failed on sql:/tmp/x: SEC_ERROR_BAD_DATABASE: bad database"
    assert (e.kind, e.name, e.to_dict()["nss_error"]) == ("nss", "SEC_ERROR_BAD_DATABASE", "SEC_ERROR_BAD_DATABASE")


EXIT_REPORT = """
import json, sys
import ansible.module_utils
ansible.module_utils.__path__.append(sys.argv[1])
from ansible.module_utils import basic
from ansible.module_utils.tokentrust_errors import exit_report
basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": {"_ansible_module_name": "pkcs11_pin"}}).encode()
basic._ANSIBLE_PROFILE = "legacy"
exit_report(basic.AnsibleModule(argument_spec={}), json.loads(sys.argv[2]), **json.loads(sys.argv[3]))
"""


def _exit_report(rep, **kwargs):
    """In a process of its own: module warnings go to the controller's display once controller code (a filter
    plugin, in another unit test) was loaded in this one."""
    p = subprocess.run([sys.executable, "-c", EXIT_REPORT, os.path.join(ROOT, "module_utils"), json.dumps(rep),
                        json.dumps(kwargs)], capture_output=True, text=True, timeout=60)
    return json.loads(p.stdout)


def test_exit_report_fails_on_the_reports_error():
    rep = {"error": {"kind": "wrong_pin", "message": "wrong PIN"}, "warnings": ["careful"], "changed": False}
    r = _exit_report(rep)
    assert r["failed"] is True and r["msg"] == "wrong PIN" and r["error"]["kind"] == "wrong_pin"
    assert "careful" in json.dumps(r["warnings"])
    r = _exit_report({"error": None, "problems": ["expired"], "warnings": []}, fail_on_error=False, changed=False)
    assert not r.get("failed") and r["problems"] == ["expired"] and r["changed"] is False
    r = _exit_report({"error": None, "problems": ["expired", "no CA"]}, problems_label="test login found problems")
    assert r["failed"] is True and r["msg"] == "test login found problems: expired | no CA"


def teardown_module():
    basic._ANSIBLE_ARGS = basic._ANSIBLE_PROFILE = None
