"""Debian 13 (trixie) workstations (issue 18, Why item 4): site.yml + verify.yml on a trixie container whose key is
its PIV card through pcsc-lite 2.3 built with polkit, over SSH with become.

On trixie, pcscd refuses clients outside an active local session unless a polkit rule allows them; a container has
no logind session at all (docs/token.md: what was measured). Role token_middleware_linux (module pcsc_middleware)
installs pcscd, libccid and OpenSC from the distribution, writes the rule for the key holder (alice), starts
the system bus that pcscd asks polkit over (no systemd here), and checks that pcscd answers them. Asserted from real
state: the card's own state file on the controller (counters, signatures), `certutil -L` / the profile's pkcs11.txt
inside the host, and pcscd's answers to users the rule names and to one it does not (bob).
"""
import json
import re
import time

import pytest

from lab import fleet as fleetlab
from lab import piv_card
from tests.fleet.conftest import Fleet, recap
from tests.fleet.test_fleet_site import expected_trust, remote_calls

pytestmark = [pytest.mark.fleet, pytest.mark.slow]
OPENSC = fleetlab.CARD_MODULE
RULE = "/etc/polkit-1/rules.d/60-tokentrust-pcscd.rules"


@pytest.fixture(scope="module")
def trixie(tmp_path_factory):
    why = fleetlab.docker_ready()
    if why:
        pytest.fail("the fleet tests need Docker: " + why)
    d = tmp_path_factory.mktemp("trixie")
    m = fleetlab.create(d / "run", hosts=1, inventory=d / "inventory", suites=["trixie"], key_kind="card")
    f = Fleet(m)
    try:
        assert [h["release"] for h in m["hosts"]] == ["trixie"]
        f.first = f.playbook("site.yml")
        assert f.first.returncode == 0, f.first.stdout[-5000:] + f.first.stderr[-2000:]
        fleetlab.card_insert(m["hosts"][0], wait=10)
        yield f
    finally:
        fleetlab.destroy(d / "run")


def name(f):
    return f.hosts[0]


def pkcs11_list(f, user):
    return f.sh(name(f), "pkcs11-tool --module %s -L 2>&1" % OPENSC, user=user, check=False).stdout


def test_the_host_is_debian_13_with_pcscd_built_with_polkit(trixie):
    out = trixie.sh(name(trixie), "cat /etc/debian_version; /usr/sbin/pcscd --version | grep 'Enabled features'; "
                                  "dpkg-query -W -f='${Package} ${Version} ${Status}\\n' pcscd opensc-pkcs11 polkitd"
                    ).stdout
    assert re.match(r"^13\.", out), out
    assert "polkit" in out.split("Enabled features:")[1].split("\n")[0].split(), out
    assert re.search(r"^pcscd 2\.3\.\S+ install ok installed$", out, re.M), out
    assert re.search(r"^opensc-pkcs11 0\.26\.\S+ install ok installed$", out, re.M), out
    assert re.search(r"^polkitd \S+ install ok installed$", out, re.M), out


def test_site_provisions_the_profiles_with_the_library_it_installed(trixie):
    """site.yml installed OpenSC and registered it (tokentrust_token_library resolved on the host): certutil -L of
    every profile lists the CA set, the profile's module is OpenSC's library."""
    want = expected_trust(trixie)
    for dirs in trixie.profiles(name(trixie)).values():
        for p in dirs:
            listed = trixie.certutil(name(trixie), p)
            assert {n: listed.get(n) for n in want} == want, (p, listed)
            assert trixie.modutil(name(trixie), p).get("gem") == OPENSC, p
    pol = trixie.read_json(name(trixie), "/etc/firefox/policies/policies.json")["policies"]
    assert pol["SecurityDevices"]["Add"] == {"gem": OPENSC}


def test_polkit_rule_scoped_to_the_holder_and_root(trixie):
    """The rule names alice only; pcscd answers her (no session: the container has no logind) and root (polkitd
    authorizes uid 0 by itself), and refuses bob, whom no rule names: the distribution's policy (allow_any no) is in
    force for everyone else."""
    rule = trixie.sh(name(trixie), "cat " + RULE).stdout
    assert 'var users = ["alice"];' in rule and "bob" not in rule and '"root"' not in rule, rule
    for user in ("root", "alice"):
        out = pkcs11_list(trixie, user)
        assert "token manufacturer : piv_II" in out, (user, out)
    out = pkcs11_list(trixie, "bob")
    assert "piv_II" not in out, out


def test_test_login_through_pcscd_with_polkit_over_ssh(trixie):
    """verify.yml's real TLS test login as root over SSH with become: the card signs, no PIN try is spent."""
    h = trixie.m["hosts"][0]
    before, n0, t0 = piv_card.counters(h["card_dir"]), piv_card.apdu_count(h["card_dir"]), time.monotonic()
    run = trixie.playbook("verify.yml")
    print("trixie: verify.yml with the card through pcscd (polkit) %.1f s, %d APDUs"
          % (time.monotonic() - t0, piv_card.apdu_count(h["card_dir"]) - n0))
    assert run.returncode == 0, run.stdout[-5000:]
    assert "Test login OK: JEAN DUPONT" in run.stdout, run.stdout[-4000:]
    after = piv_card.counters(h["card_dir"])
    assert after["sign"] > before["sign"] and after["pin_tries_left"] == 3, (before, after)


def test_without_the_rule_or_the_bus_pcscd_refuses_and_the_role_restores_them(trixie):
    """Without the rule, alice is refused (root is not: polkitd authorizes uid 0); without the system bus, pcscd cannot
    ask polkit and refuses root too (the test login could not pass). The module finds both, starts the bus, writes
    the rule back (changed) and its check passes for root and alice, with the card reached; a site.yml after that
    changes nothing and the middleware costs it one remote call."""
    h = name(trixie)
    trixie.sh(h, "rm -f " + RULE)
    assert "piv_II" not in pkcs11_list(trixie, "alice")
    assert "piv_II" in pkcs11_list(trixie, "root")
    trixie.sh(h, "service dbus stop >/dev/null 2>&1; pkill -x polkitd; true")
    assert "piv_II" not in pkcs11_list(trixie, "root")
    rc, res = trixie.module(h, "pcsc_middleware", {"polkit_users": ["alice"]})
    assert rc == 0 and res["changed"] is True, json.dumps(res, indent=1)
    assert any(a.startswith("write " + RULE) for a in res["actions"]), res["actions"]
    assert any(a.startswith("service dbus start") for a in res["actions"]), res["actions"]
    assert res["access"]["root"]["ok"] and res["access"]["alice"]["ok"], res["access"]
    deadline = time.monotonic() + 20  # pcscd was restarted: the card (vpcd's client) comes back within seconds
    while "piv_II" not in pkcs11_list(trixie, "root") and time.monotonic() < deadline:
        time.sleep(0.5)
    rc, res = trixie.module(h, "pcsc_middleware", {"polkit_users": ["alice"]})
    assert rc == 0 and res["changed"] is False and res["actions"] == [], json.dumps(res, indent=1)
    for who in ("root", "alice"):  # SCardConnect to the card as each: polkit's access_card
        assert any(r["card"] for r in res["access"][who]["readers"]), res["access"]
    again = trixie.playbook("site.yml", "-vvv")
    assert again.returncode == 0, again.stdout[-4000:]
    assert recap(again.stdout)[h]["changed"] == 0, again.stdout[-4000:]
    with_mw = remote_calls(trixie, again.stdout)[h]
    off = trixie.playbook("site.yml", "-vvv", "-e", "tokentrust_token_middleware_linux=false")
    assert off.returncode == 0, off.stdout[-4000:]
    print("trixie: a second site.yml costs %d remote calls, %d without the middleware"
          % (with_mw, remote_calls(trixie, off.stdout)[h]))
    assert with_mw - remote_calls(trixie, off.stdout)[h] == 1  # the middleware: one call when in place
    assert "piv_II" in pkcs11_list(trixie, "alice")


def test_middleware_check_mode_and_diff_change_nothing(trixie):
    h = name(trixie)
    trixie.sh(h, "rm -f " + RULE)
    try:
        run = trixie.playbook("firefox.yml", "--tags", "token_middleware_linux", "--check", "--diff")
        assert run.returncode == 0, run.stdout[-4000:]
        assert recap(run.stdout)[h]["changed"] == 1, run.stdout[-4000:]
        assert '+    var users = ["alice"];' in run.stdout, run.stdout[-4000:]
        assert "missing" in trixie.sh(h, "test -f %s || echo missing" % RULE).stdout
    finally:
        fix = trixie.playbook("firefox.yml", "--tags", "token_middleware_linux")
        assert fix.returncode == 0, fix.stdout[-4000:]
    assert "piv_II" in pkcs11_list(trixie, "root")
