"""The Windows roles, run by the real ansible-playbook against a MOCK Windows host.

No Windows here: tests/support/winsim stands in for the host and the ansible.windows modules (named
MOCK there). What is not mocked: Ansible's templating of our tasks (the args are what the modules
would receive), our filters and module_utils, the modules' documented options (ansible-doc of the
installed ansible.windows) and the store names their .ps1 sources accept.
"""
import re

import pytest

from tests.support.winsim import Host, ca_set, module_source, new_state, recap, system_store_names


@pytest.fixture(scope="module")
def cas():
    return ca_set()


def _intermediate(cas):
    return next(c for c in cas if c["role"] == "intermediate")


def test_store_names_each_module_receives_are_ones_its_source_accepts(tmp_path, cas):
    host = Host(tmp_path)
    p = host.role("windows_trust_store", extra_vars={"tokentrust_ca_set": cas})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    names, aliases = system_store_names()  # from win_certificate_store.ps1
    assert aliases == {"CertificateAuthority": "CA"}
    info_src = module_source("win_certificate_info")
    # win_certificate_info gives store_name to X509Store unchanged: no alias mapping in its source
    assert re.search(r"X509Store -ArgumentList \$store_name, \$store_location", info_src)
    assert "CertificateAuthority'" not in info_src
    info = sorted({c["args"]["store_name"] for c in host.calls("win_certificate_info")})
    assert info == ["CA", "Root"]
    assert set(info) <= set(names)
    store = sorted({c["args"]["store_name"] for c in host.calls("win_certificate_store")})
    assert store == ["CA", "Root"]
    assert {aliases.get(n, n) for n in store} <= set(names)


def test_preexisting_intermediate_is_seen_kept_and_verified(tmp_path, cas):
    inter = _intermediate(cas)
    state = new_state()
    state["stores"]["LocalMachine\\CA"][inter["sha1"]] = {"subject": "put there by an administrator"}
    host = Host(tmp_path, state)
    p, facts = host.run(["windows_trust_store"], {"tokentrust_ca_set": cas}, facts=["windows_trust_store_checks"])
    assert p.returncode == 0, p.stdout[-3000:]
    record = host.load()["registry"]["hklm:\\software\\tokentrust\\truststore"]
    assert inter["sha1"] not in record, "a certificate that was there before must not be recorded as ours"
    assert len(record) == len(cas) - 1
    checks = facts["windows_trust_store_checks"]
    assert len(checks) == len(cas) and all(c["ok"] for c in checks), checks
    # second run: nothing to do
    p2, _ = host.run(["windows_trust_store"], {"tokentrust_ca_set": cas})
    assert recap(p2)["changed"] == 0, p2.stdout[-3000:]
    # absent removes only what we added
    p3, _ = host.run(["windows_trust_store"], {"tokentrust_ca_set": cas, "windows_trust_store_state": "absent"})
    assert p3.returncode == 0, p3.stdout[-3000:]
    stores = host.load()["stores"]
    assert list(stores["LocalMachine\\CA"]) == [inter["sha1"]]
    assert stores["LocalMachine\\Root"] == {}
