"""What the tests that run our playbooks from another controller share (tests/controller: the Debian 13 controller,
tests/ee: the execution environment): a small container fleet for one test module, and the check that its
workstations hold the lab's CA set and the token module, read inside them with Firefox's own NSS."""
from __future__ import annotations

import contextlib

from ansible.module_utils.tokentrust_trust import encoded_trust

from lab import fleet as fleetlab
from tests.fleet.conftest import Fleet


@contextlib.contextmanager
def small_fleet(base_tmp, hosts=2):
    """A fleet of `hosts` workstations under base_tmp (its inventory next to it), removed afterwards."""
    run = base_tmp / "fleet"
    m = fleetlab.create(run, hosts=hosts, inventory=base_tmp / "inventory")
    try:
        yield Fleet(m)
    finally:
        fleetlab.destroy(run)


def assert_provisioned(fleet):
    """Every profile of alice and bob (3 at least) has the lab's CAs with their trust and the token module."""
    want = {ca["name"]: encoded_trust("C,," if ca["subject"] == ca["issuer"] else ",,") for ca in fleet.m["pki"]["cas"]}
    for h in fleet.hosts:
        profiles = fleet.profiles(h)
        assert sorted(profiles) == ["alice", "bob"] and sum(map(len, profiles.values())) >= 3, profiles
        for prof in sum(profiles.values(), []):
            listed = fleet.certutil(h, prof)
            assert {n: listed.get(n) for n in want} == want, (h, prof, listed)
            assert fleet.modutil(h, prof).get("gem") == fleet.m["token_module"], (h, prof)
