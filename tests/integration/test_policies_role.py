"""Integration: role firefox_policies through `ansible-playbook` (local connection), every path in tmp.

Check run, real run, idempotent run (changed counts from the json callback's stats), tags per part,
state absent, the handler message, and the files on disk.
"""
import json
import os
import subprocess
import sys

import pytest

from .test_policies_module import ROOT, SOFTHSM

PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


@pytest.fixture
def lab(tmp_path):
    from lab.pki import certeurope_standin

    chain = certeurope_standin()
    ca_set = [{"name": n, "nickname": n, "pem": c.pem.decode(), "sha256": c.sha256,
               "role": "intermediate" if "V" in n.split()[-1] else "root", "nss_trust": "C,,"}
              for n, c in chain.items()]
    (tmp_path / "vars.json").write_text(json.dumps({
        "tokentrust_ca_set": ca_set,
        "firefox_policies_ca_dir": str(tmp_path / "share" / "ca"),
        "firefox_policies_path": str(tmp_path / "etc" / "firefox" / "policies" / "policies.json"),
        "firefox_policies_module_path": SOFTHSM,
        "firefox_policies_backup": False,
    }))
    (tmp_path / "play.yml").write_text(
        "- name: Firefox policies\n  hosts: localhost\n  gather_facts: true\n"
        "  roles:\n    - role: firefox_policies\n")
    return tmp_path, chain


def play(tmp_path, *extra, check=False):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"),
               ANSIBLE_LIBRARY=os.path.join(ROOT, "library"),
               ANSIBLE_MODULE_UTILS=os.path.join(ROOT, "module_utils"))
    cmd = [PLAYBOOK, "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
           "-e", f"@{tmp_path / 'vars.json'}", str(tmp_path / "play.yml"), *extra]
    if check:
        cmd.append("--check")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = json.loads(p.stdout)
    stats = out["stats"]["localhost"]
    assert stats["failures"] == 0 and stats["unreachable"] == 0, p.stdout[-4000:]
    tasks = {t["task"]["name"].split(" : ", 1)[-1]: t["hosts"]["localhost"] for pl in out["plays"] for t in pl["tasks"]}
    return stats, tasks


def slug(n):
    import re

    return re.sub(r"[^a-z0-9]+", "_", n.lower()).strip("_")


def test_role_check_real_idempotent_absent(lab):
    tmp, chain = lab
    policies = tmp / "etc/firefox/policies/policies.json"
    ca_dir = tmp / "share/ca"

    stats, tasks = play(tmp, check=True)
    assert stats["changed"] >= 1
    assert not policies.exists() and not ca_dir.exists(), "check mode wrote something"

    stats, tasks = play(tmp)
    assert stats["changed"] >= 1, stats
    files = sorted(os.listdir(ca_dir))
    assert files == sorted(slug(n) + ".pem" for n in chain)
    for n, c in chain.items():
        assert (ca_dir / (slug(n) + ".pem")).read_bytes() == c.pem
        assert oct(os.stat(ca_dir / (slug(n) + ".pem")).st_mode & 0o777) == "0o644"
    doc = json.loads(policies.read_text())
    assert doc["policies"]["Certificates"]["Install"] == [str(ca_dir / (slug(n) + ".pem")) for n in chain]
    assert doc["policies"]["SecurityDevices"] == {"Add": {"gem": SOFTHSM}}
    assert "ImportEnterpriseRoots" not in doc["policies"]["Certificates"]
    handler = tasks["Firefox policies | Tell that running Firefox instances must restart"]
    assert "running Firefox instances only apply them when restarted" in handler["msg"]

    stats, tasks = play(tmp)
    assert stats["changed"] == 0, stats
    assert "Firefox policies | Tell that running Firefox instances must restart" not in tasks
    stats, _ = play(tmp, check=True)
    assert stats["changed"] == 0, stats

    # another policy added by someone else survives state=absent, which removes exactly ours
    doc["policies"]["DisableTelemetry"] = True
    policies.write_text(json.dumps(doc))
    stats, _ = play(tmp, "-e", "firefox_policies_state=absent")
    assert stats["changed"] >= 1
    assert json.loads(policies.read_text()) == {"policies": {"DisableTelemetry": True}}
    assert os.listdir(ca_dir) == []
    stats, _ = play(tmp, "-e", "firefox_policies_state=absent")
    assert stats["changed"] == 0


def test_role_tags_per_part(lab):
    tmp, chain = lab
    policies = tmp / "etc/firefox/policies/policies.json"
    # one module call does both parts (files and policies.json): either sub-tag runs it
    stats, _ = play(tmp, "--tags", "firefox_policies:certificates")
    assert stats["changed"] == 1
    assert len(os.listdir(tmp / "share/ca")) == len(chain)
    assert json.loads(policies.read_text())["policies"]["SecurityDevices"]["Add"]["gem"] == SOFTHSM
    stats, _ = play(tmp, "--tags", "firefox_policies:policies")
    assert stats["changed"] == 0
    stats, _ = play(tmp, "--tags", "firefox_nss")  # another role's tag: nothing of ours runs
    assert stats["changed"] == 0


def test_role_module_path_first_found_and_bad_ca_set(lab):
    tmp, _ = lab
    v = json.loads((tmp / "vars.json").read_text())
    v["firefox_policies_module_path"] = ""
    v["firefox_policies_module_paths"] = ["/nonexistent/libgclib.so", SOFTHSM]
    v["firefox_policies_install_certificates"] = False
    (tmp / "vars.json").write_text(json.dumps(v))
    play(tmp)
    doc = json.loads((tmp / "etc/firefox/policies/policies.json").read_text())
    assert doc["policies"] == {"SecurityDevices": {"Add": {"gem": SOFTHSM}}}

    v["tokentrust_ca_set"] = [{"name": "broken"}]
    (tmp / "vars.json").write_text(json.dumps(v))
    with pytest.raises(AssertionError) as ei:
        play(tmp)
    assert "every entry of firefox_policies_ca_set needs 'nickname' and 'pem'" in str(ei.value)
    assert "broken" in str(ei.value)
