"""One variable names the token library for every role (issue 18, item 1): tokentrust_token_library, read by
firefox_nss, firefox_policies and token_verify, each keeping its own variable as a per-role override; unset, every
module takes the first token library found on the host from the table of module_utils/tokentrust_facts.py.

Run: .venv/bin/pytest tests/integration/test_token_library.py
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from ansible.module_utils import tokentrust_facts as tl

from tests.integration.test_token_playbooks import inventory, lab, playbook, task_results  # noqa: F401 - fixture
from tests.support.token_lab import BIN, PIN, PYTHON, ROOT, ansible_env, flags_of

VARS = ("firefox_nss_module_library", "firefox_policies_module_path", "token_verify_module")


def role_values(tmp_path, hostvars: dict) -> dict:
    """The three roles' library variables as a play of the three roles sees them (role defaults, inventory vars):
    the roles' tasks are skipped by tag, a post task tagged always prints the variables."""
    inv = {"all": {"hosts": {h: dict(v, ansible_connection="local", ansible_python_interpreter=PYTHON)
                             for h, v in hostvars.items()}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "play.yml").write_text(yaml.safe_dump([{
        "name": "The library variables", "hosts": "all", "gather_facts": False,
        "roles": ["firefox_nss", "firefox_policies", "token_verify"],
        "post_tasks": [{"name": "Show", "ansible.builtin.debug": {"msg": "{{ [%s] }}" % ", ".join(VARS)},
                        "tags": ["always"]}]}]))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml"),
                           "--tags", "tokentrust_none"], capture_output=True, text=True, cwd=str(ROOT), timeout=300,
                          env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "json"}))
    data = json.loads(proc.stdout[proc.stdout.index("{"):])
    show = [t for t in data["plays"][0]["tasks"] if t["task"]["name"] == "Show"][0]
    return {h: dict(zip(VARS, r["msg"])) for h, r in show["hosts"].items()}


def test_one_variable_for_every_role_with_per_role_overrides(tmp_path):
    got = role_values(tmp_path, {
        "unset": {},
        "one": {"tokentrust_token_library": "/opt/vendor/libtoken.so"},
        "override": {"tokentrust_token_library": "/opt/vendor/libtoken.so", "token_verify_module": "/opt/x/other.so",
                     "firefox_policies_module_path": "/opt/y/third.so"},
    })
    assert got["unset"] == dict.fromkeys(VARS, "")  # each module then takes the host's own library
    assert got["one"] == dict.fromkeys(VARS, "/opt/vendor/libtoken.so")
    assert got["override"] == {"firefox_nss_module_library": "/opt/vendor/libtoken.so",
                               "firefox_policies_module_path": "/opt/y/third.so",
                               "token_verify_module": "/opt/x/other.so"}


@pytest.mark.skipif(tl.find_token_library() is None, reason="no token library of the table on this host")
def test_unset_every_module_takes_the_library_found_on_the_host(tmp_path):
    """firefox_policies (the module, on this host) registers the library the table finds here (OpenSC on the CI
    machine, where no Classic Client is installed), the same one pkcs11_token_login and nss_provision default to."""
    found = tl.find_token_library()[1]
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{"name": "Policies", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Register the device", "firefox_policies": {
            "path": str(tmp_path / "policies.json"), "certificate_set": [], "install_certificate_set": False,
            "device_name": "gem", "check_files": False}}]}]))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play),
                           "-e", "ansible_python_interpreter=%s" % PYTHON], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=300, env=ansible_env())
    assert proc.returncode == 0, proc.stdout[-2000:]
    doc = json.loads((tmp_path / "policies.json").read_text())
    assert doc["policies"]["SecurityDevices"]["Add"] == {"gem": found}
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest\n"
            "from ansible.module_utils.tokentrust_nss.token import default_module\n"
            "from ansible.module_utils.tokentrust_provision import default_library\n"
            "print(default_module(), default_library())")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=str(ROOT), check=True).stdout
    assert out.split() == [found, found]


@pytest.mark.skipif(shutil.which("softhsm2-util") is None, reason="softhsm2 not installed")
def test_verify_playbook_with_only_the_one_variable(lab):  # noqa: F811 - the fixture
    """verify.yml on the lab with tokentrust_token_library alone (no token_verify_module): the login passes with it."""
    inv, pw = inventory(lab, PIN)
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    gvars = hosts["all"]["vars"]
    gvars["tokentrust_token_library"] = gvars.pop("token_verify_module")
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    proc = playbook(["-i", str(inv), "playbooks/verify.yml", "--vault-password-file", str(pw)])
    res, stats = task_results(proc)
    assert stats["lab-ws"]["failures"] == 0, proc.stdout[-3000:]
    login = res["Token verify | Log in with the key and open the test page"]
    assert login["ok"] is True and login["pkcs11_module"] == str(lab["tok"].module)
    assert login["invocation"]["module_args"]["module"] == str(lab["tok"].module)
    assert lab["tok"].counters() == (0, 0) and flags_of(lab["tok"]) == []
