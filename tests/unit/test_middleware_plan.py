"""pcsc_middleware's decisions (module_utils/tokentrust_middleware.py), pure: what a state read from a host leads to.
The module itself runs on the fleet (tests/fleet/test_fleet_trixie.py, test_fleet_card.py, test_fleet_prereqs.py)."""
from __future__ import annotations

import pytest
from ansible.module_utils import tokentrust_middleware as mw

PKGS = list(mw.PACKAGES)
RULE = mw.rule_text(["alice"], [], True)


def want(**kw):
    base = {"state": "present", "packages": PKGS, "legacy": list(mw.LEGACY), "remove_legacy": True,
            "users": ["alice"], "groups": [], "root": True}
    return dict(base, **kw)


def state(installed=None, polkit=True, rule=RULE, service=None):
    installed = {p: "1" for p in PKGS} if installed is None else installed
    return {"installed": installed, "pcscd_version": "2.3.3" if "pcscd" in installed else None,
            "pcscd_polkit": polkit and "pcscd" in installed, "rule": rule, "library_exists": True,
            "service": service if service is not None else (
                {"manager": "sysv", "running": True, "system_bus": True} if "pcscd" in installed else None)}


def test_converged_host_nothing_to_do():
    assert mw.nothing_to_do(mw.plan(state(), want()))


@pytest.mark.parametrize("case, st, key, value", [
    ("fresh host: install all, rule after the install", state(installed={}, rule=None), "install", PKGS),
    ("a package missing", state(installed={p: "1" for p in PKGS if p != "libccid"}), "install", ["libccid"]),
    ("legacy installed", state(installed=dict({p: "1" for p in PKGS}, coolkey="1")), "remove", ["coolkey"]),
    ("rule missing on a polkit pcscd", state(rule=None), "rule", RULE),
    ("rule edited by hand", state(rule=RULE.replace("alice", "mallory")), "rule", RULE),
    ("pcscd stopped", state(service={"manager": "sysv", "running": False, "system_bus": True}), "start_pcscd", True),
    ("no system bus for polkit", state(service={"manager": "sysv", "running": True, "system_bus": False}),
     "start_bus", True),
    ("socket disabled", state(service={"manager": "systemd", "socket_enabled": False, "socket_active": True,
                                       "running": True}), "enable_socket", True),
])
def test_only_what_is_missing(case, st, key, value):
    p = mw.plan(st, want())
    assert p[key] == value, case
    assert not mw.nothing_to_do(p)


def test_fresh_host_rule_pending_until_pcscd_says_polkit():
    p = mw.plan(state(installed={}, rule=None), want())
    assert p["rule"] is None and p["rule_pending"] == RULE


def test_pcscd_without_polkit_gets_no_rule():
    """Debian 12's pcscd (1.9.9) is not built with polkit: no rule written there."""
    p = mw.plan(state(polkit=False, rule=None), want())
    assert p["rule"] is None and p["rule_pending"] is None and mw.nothing_to_do(p)


def test_absent_removes_what_present_installs():
    p = mw.plan(state(), want(state="absent"))
    assert p["remove"] == PKGS and p["remove_rule"] and not p["install"]


def test_rule_is_scoped_to_users_groups_and_root():
    text = mw.rule_text(["alice", "bob"], ["smartcard"], False)
    assert 'var users = ["alice", "bob"];' in text and 'var groups = ["smartcard"];' in text
    assert '"root"' not in text
    assert "org.debian.pcsc-lite.access_pcsc" in text and "org.debian.pcsc-lite.access_card" in text
    assert "polkit.Result.NOT_HANDLED" in text  # everyone else: the distribution's policy


@pytest.mark.parametrize("bad", ['a"b', "x y", "", "'); polkit.Result.YES; ('"])
def test_names_that_are_not_names_are_refused(bad):
    with pytest.raises(mw.MiddlewareError, match="is not a user or group name"):
        mw.rule_text([bad], [], True)


def test_apt_candidates_parses_apt_cache_policy():
    out = ("pcscd:\n  Installed: (none)\n  Candidate: 2.3.3-1\n  Version table:\n"
           "opensc:\n  Installed: (none)\n  Candidate: (none)\n")

    def run(args, env=None):
        return 0, out, "N: Unable to locate package libccid\n"

    assert mw.apt_candidates(run, ["pcscd", "opensc", "libccid", "opensc-pkcs11"]) == [
        "opensc", "libccid", "opensc-pkcs11"]
