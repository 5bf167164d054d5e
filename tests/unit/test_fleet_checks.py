"""tests/support/fleet_checks.assert_provisioned, the check tests/controller and tests/ee share (folded from both),
on a stand-in fleet: green on a provisioned state, red on each way a workstation can be wrong (mutation)."""
from __future__ import annotations

import copy

import pytest
from ansible.module_utils.tokentrust_trust import encoded_trust

from tests.support.fleet_checks import assert_provisioned

CAS = [{"name": "Lab Root CA", "subject": "R", "issuer": "R"}, {"name": "Lab Sub CA", "subject": "S", "issuer": "R"}]
GOOD = {"ws-01": {"alice": ["a1", "a2"], "bob": ["b1"]}}


class StubFleet:
    def __init__(self, profiles=GOOD, certs=None, module="/lib/p11.so"):
        self.m = {"pki": {"cas": CAS}, "token_module": "/lib/p11.so"}
        self.hosts = list(profiles)
        self._profiles, self._module = profiles, module
        self._certs = certs or {"Lab Root CA": encoded_trust("C,,"), "Lab Sub CA": encoded_trust(",,")}

    def profiles(self, h):
        return self._profiles[h]

    def certutil(self, h, prof):
        return dict(self._certs)

    def modutil(self, h, prof):
        return {"gem": self._module} if self._module else {}


def test_a_provisioned_fleet_passes():
    assert_provisioned(StubFleet())


@pytest.mark.parametrize("broken", ["ca_missing", "trust_wrong", "module_missing", "module_other", "user_missing",
                                    "too_few_profiles"])
def test_each_fault_is_red(broken):
    kw = {}
    certs = {"Lab Root CA": encoded_trust("C,,"), "Lab Sub CA": encoded_trust(",,")}
    if broken == "ca_missing":
        del certs["Lab Sub CA"]
    elif broken == "trust_wrong":
        certs["Lab Root CA"] = encoded_trust(",,")
    elif broken == "module_missing":
        kw["module"] = None
    elif broken == "module_other":
        kw["module"] = "/tmp/evil.so"
    elif broken == "user_missing":
        kw["profiles"] = {"ws-01": {"alice": ["a1", "a2", "a3"]}}
    elif broken == "too_few_profiles":
        p = copy.deepcopy(GOOD)
        p["ws-01"]["alice"] = ["a1"]
        kw["profiles"] = p
    with pytest.raises(AssertionError):
        assert_provisioned(StubFleet(certs=certs, **kw))
