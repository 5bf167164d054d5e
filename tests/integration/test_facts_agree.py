"""The facts of module_utils/tokentrust_facts.py against their upstream and against every user of them.

- NSS trust letters: the alphabet is the one `certutil -H` documents (read from the certutil of the NSS build our
  bindings load), each letter is taken by certutil -M and by our bindings with the same effect (certutil -L of both
  databases), and the CA-set validation and the bindings accept exactly the same strings (they had two alphabets:
  tokentrust_ca lacked 'w', both lacked 'g').
- CA file names: the firefox_policies module (what is written on disk and listed in policies.json) and the
  fleet_report role (what the report looks for) name the same files, also for the entries that exposed the old Jinja
  copy: a null nickname (the role looked for 'none.pem') and a null nss_trust (the module lists it, the role did not).
"""
import json
import os
import re
import string
import subprocess
import sys

import pytest
import yaml
from ansible.module_utils.tokentrust_ca import validate_nss_trust
from ansible.module_utils.tokentrust_facts import NSS_TRUST_LETTERS, ca_file_name, is_nss_trust
from ansible.module_utils.tokentrust_nss import NSSDatabase, normalize_trust

from lab.pki import make_ca
from tests.support.ansible_run import run_playbook
from tests.support.nsstools import certutil_list, tool_env


def certutil(*args, check=True):
    return subprocess.run(["certutil", *args], capture_output=True, text=True, env=tool_env(), check=check)


def documented_trust_letters():
    """The letters listed under `-t trustargs` in certutil's own help (`certutil -H`)."""
    p = certutil("-H", check=False)
    text = p.stdout + p.stderr
    block = text[text.index("trustargs is of the form"):]
    block = block[: block.index("-f pwfile")]
    return re.findall(r"^\s+([A-Za-z])\s+\S", block, re.M)


def test_the_alphabet_is_certutils_documented_letters():
    letters = documented_trust_letters()
    assert len(letters) >= 8, letters  # the help was read, not an empty section
    assert sorted(letters) == sorted(NSS_TRUST_LETTERS)


def test_each_letter_has_the_same_effect_through_certutil_and_our_bindings(tmp_path):
    ca = make_ca("Trust Letter CA")
    pem = tmp_path / "ca.pem"
    pem.write_bytes(ca.pem)
    for letter in NSS_TRUST_LETTERS:
        trust = f"{letter},{letter},{letter}"
        ours, theirs = tmp_path / f"ours-{letter}", tmp_path / f"certutil-{letter}"
        ours.mkdir()
        theirs.mkdir()
        with NSSDatabase(str(ours), readonly=False) as db:
            db.add_certificate(ca.pem, "ca", trust)
        certutil("-N", "-d", f"sql:{theirs}", "--empty-password")
        certutil("-A", "-d", f"sql:{theirs}", "-n", "ca", "-t", trust, "-i", str(pem))
        assert certutil_list(str(ours))["ca"] == certutil_list(str(theirs))["ca"], letter


def test_letters_outside_the_alphabet_are_refused_by_certutil_and_by_us(tmp_path):
    ca = make_ca("Trust Letter CA")
    pem = tmp_path / "ca.pem"
    pem.write_bytes(ca.pem)
    certutil("-N", "-d", f"sql:{tmp_path}", "--empty-password")
    certutil("-A", "-d", f"sql:{tmp_path}", "-n", "ca", "-t", ",,", "-i", str(pem))
    # 'i' (invisible CA) is taken by NSS's decoder but documented nowhere: refused by us on purpose
    refused_by_certutil = [c for c in string.ascii_letters if c not in NSS_TRUST_LETTERS + "i"
                           and certutil("-M", "-d", f"sql:{tmp_path}", "-n", "ca", "-t", f"{c},,",
                                        check=False).returncode != 0]
    assert sorted(refused_by_certutil) == sorted(set(string.ascii_letters) - set(NSS_TRUST_LETTERS + "i"))
    for c in refused_by_certutil + ["i"]:
        assert not is_nss_trust(f"{c},,")


@pytest.mark.parametrize("value", [f"{a},{b},{c}" for a, b, c in
                                   [("C", "", ""), ("Cw", "", ""), ("g", "", ""), ("CT", "C", "C"), ("p", "p", "p"),
                                    ("Pu", "", "w"), ("", "", "")]]
                         + ["C,", "C,,,", "X,,", "C ,,", "", "i,,", "c,c,cx"])
def test_ca_validation_and_bindings_accept_the_same_strings(value):
    ok = is_nss_trust(value)
    assert validate_nss_trust(value) is ok
    if ok:
        assert normalize_trust(value) == value
    else:
        with pytest.raises(ValueError, match="not a certutil trust string: three comma-separated fields"):
            normalize_trust(value.replace(" ", "x"))


def test_the_module_writes_and_the_report_looks_for_the_same_files(tmp_path):
    """firefox_policies (module, real run) then the fleet_report role's gathering, on the same CA set, in one play."""
    ca_set = [
        {"name": "Lab Root CA", "nickname": "Lab Root CA", "nss_trust": "C,,",
         "pem": make_ca("Lab Root CA").pem.decode()},
        {"name": "Null Nickname Root", "nickname": None, "nss_trust": "C,,",
         "pem": make_ca("Null Nickname Root").pem.decode()},
        {"name": "Empty Nickname Root", "nickname": "", "pem": make_ca("Empty Nickname Root").pem.decode()},
        {"name": "No Trust Given", "nickname": "No Trust Given", "nss_trust": None,
         "pem": make_ca("No Trust Given").pem.decode()},
        {"name": "Lab Intermediate", "nickname": "Lab Intermediate", "nss_trust": ",,",
         "pem": make_ca("Lab Intermediate").pem.decode()},
    ]
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "out.json"
    play = [{
        "name": "Facts agree", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ca_set": ca_set},
        "tasks": [
            {"name": "Facts (as fleet_report's main.yml)", "ansible.builtin.setup": {"gather_subset": ["min"]}},
            {"name": "Deploy the CA files and policies.json", "firefox_policies": {
                "path": str(tmp_path / "policies.json"), "certificate_set": "{{ ca_set }}",
                "certificate_dir": str(tmp_path / "ca"), "check_files": False}, "register": "written"},
            {"name": "What the report gathers", "ansible.builtin.include_role": {
                "name": "fleet_report", "tasks_from": "nss"},
             "vars": {"fleet_report_ca_set": "{{ ca_set }}", "fleet_report_homes": [str(home)],
                      "fleet_report_check_module": False, "fleet_report_policies_path": str(tmp_path / "policies.json"),
                      "fleet_report_policies_ca_dir": str(tmp_path / "ca"), "fleet_report_policies_device": False}},
            {"name": "Save", "ansible.builtin.copy": {"dest": str(out), "content": "{{ {'written': written,"
                                                      " 'report': fleet_report_host} | to_json }}"}},
        ],
    }]
    pb = tmp_path / "facts.yml"
    pb.write_text(yaml.safe_dump(play))
    p = run_playbook(str(pb), "localhost,", extra_vars={"ansible_python_interpreter": sys.executable})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    res = json.loads(out.read_text())
    files = res["written"]["certificate_files"]
    listed = res["written"]["policies"]["Certificates"]["Install"]
    on_disk = sorted(os.listdir(tmp_path / "ca"))
    # what the module wrote: named after the nickname, else the name; listed when trusted for TLS servers
    assert on_disk == sorted(ca_file_name(n) for n in ("Lab Root CA", "Null Nickname Root", "Empty Nickname Root",
                                                       "No Trust Given", "Lab Intermediate"))
    assert sorted(f["path"] for f in files) == sorted(str(tmp_path / "ca" / n) for n in on_disk)
    expected = res["report"]["policies"]["expected_install"]
    # the report looks for exactly the files the module listed in Certificates.Install, and finds each one
    assert sorted(e["path"] for e in expected) == sorted(listed)
    assert all(e["exists"] for e in expected), expected
    assert {e["name"] for e in expected} == {"Lab Root CA", "Null Nickname Root", "Empty Nickname Root",
                                             "No Trust Given"}
    assert res["report"]["policies"]["path"] == str(tmp_path / "policies.json")
