"""Hardening of the Windows roles (issue 28, items 1 and 3), on the MOCK Windows host (tests/support/winsim): no
Windows runs here. A host in Constrained Language mode stops at the first role; an existing private folder gets the
exact protected ACL and one that appears after the probe stops the run; a reboot is refused under a logged-on user
unless allowed; another Classic Client version stops the run before the UAC window; per-user IE mode does not
fail its own zone check; CertPropSvc is verified without the token too.
"""
import copy

import pytest

from tests.support.winsim import Host, ca_set, firefox_and_classic_client, new_state, probes, recap

PRODUCT = "{6B0B7AC4-1B7E-4E3A-9C5D-2F1B3C4D5E6F}"
LEGACY = "{11111111-2222-3333-4444-555555555555}"
USERS, ADMINS, SYSTEM = "S-1-5-32-545", "S-1-5-32-544", "S-1-5-18"
INHERIT = "ContainerInherit, ObjectInherit"
UAC_KEY = "hklm:\\software\\microsoft\\windows\\currentversion\\policies\\system"


@pytest.fixture(scope="module")
def cas():
    return ca_set()


def _state(**kw):
    state = new_state(**kw)
    state["powershell"]["firefox_probe.ps1"] = probes.firefox_answer(gpo=False)
    firefox_and_classic_client(state)  # 64-bit Firefox and gclib.dll in C:\Program Files
    state["powershell"]["token_probe.ps1"] = probes.token_answer()
    return state


def _msi_vars(tmp_path, cas, **kw):
    msi = tmp_path / "ClassicClient-x64.msi"
    msi.write_bytes(b"msi")
    return dict({"tokentrust_ca_set": cas, "token_middleware_msi_src": str(msi),
                 "token_middleware_msi_checksum": "00" * 32, "token_middleware_product_id": PRODUCT}, **kw)


def _unchanged(before, after):
    for k in ("dirs", "files", "registry", "stores", "installed", "uninstall_entries", "reboots", "services"):
        assert after.get(k) == before.get(k), k


def test_a_host_in_constrained_language_mode_stops_at_the_first_role(tmp_path, cas):
    host = Host(tmp_path, _state(language_mode="ConstrainedLanguage"))
    before = copy.deepcopy(host.load())
    p = host.playbook("playbooks/windows.yml", _msi_vars(tmp_path, cas, windows_uac_mode="disable_for_install"))
    assert p.returncode != 0
    out = " ".join(p.stdout.split())
    assert "runs in Constrained Language mode (App Control for Business/WDAC or AppLocker)" in out
    assert "New-AnsiblePowerShellSignature.ps1" in out and "Nothing was changed on this host" in out
    assert 'section "Hosts with App Control (WDAC) or AppLocker"' in out
    assert "-Collection ansible.builtin, ansible.windows, tokentrust.workstation" in out
    # the first role's first calls (the language mode, then one read-only module of ours that cannot start
    # unsigned), and nothing else reached the host
    assert [(c["module"], "language_mode" in c["args"].get("script", "")) for c in host.calls()] == [
        ("win_powershell", True), ("win_tokentrust_logged_on_users", False)]
    _unchanged(before, host.load())
    # the same host with our modules signed (in the manifest Ansible checks) goes past it, still in CLM
    s = host.load()
    s["signed_modules"] = True
    host.save(s)
    assert host.role("windows_trust_store", extra_vars={"tokentrust_ca_set": cas}).returncode == 0
    # and so does a host in Full Language mode, without even trying a module
    s = host.load()
    s.update(language_mode="FullLanguage", signed_modules=False, calls=[])
    host.save(s)
    assert host.role("windows_trust_store", extra_vars={"tokentrust_ca_set": cas}).returncode == 0
    assert not host.calls("win_tokentrust_logged_on_users")


def test_an_existing_private_folder_gets_the_exact_protected_acl(tmp_path, cas):
    """Owned by Administrators (so the owner check passes) but with ProgramData's inherited ACL and an extra
    explicit Users:Modify: after the run, exactly the admin-only ACL; the next run changes nothing."""
    state = _state()
    state["dirs"]["c:\\programdata\\tokentrust"] = {
        "owner": ADMINS, "inherit": True,
        "acl": [{"sid": USERS, "rights": "Modify", "type": "allow", "inherit": INHERIT, "propagation": "None",
                 "inherited": False}] + [dict(e, inherited=True) for e in state["dirs"]["c:\\programdata"]["acl"]]}
    host = Host(tmp_path, state)
    p = host.role("windows_trust_store", extra_vars={"tokentrust_ca_set": cas})
    assert p.returncode == 0, p.stdout[-3000:]
    for path in ("c:\\programdata\\tokentrust", "c:\\programdata\\tokentrust\\staging"):
        d = host.load()["dirs"][path]
        assert d["owner"] == ADMINS and d["inherit"] is False, path
        assert sorted((e["sid"], e["rights"], e.get("inherited")) for e in d["acl"]) == [
            (SYSTEM, "FullControl", False), (ADMINS, "FullControl", False)], path
    p2 = host.role("windows_trust_store", extra_vars={"tokentrust_ca_set": cas})
    assert p2.returncode == 0 and recap(p2)["changed"] == 0, p2.stdout[-3000:]


def test_a_folder_that_appears_after_the_probe_stops_the_run(tmp_path, cas):
    """The probe found C:\\ProgramData\\tokentrust missing; a user made it right after (they own it, with
    ProgramData's ACL): the run stops instead of adopting it, nothing staged in it."""
    state = _state(appear_after_probe=["C:\\ProgramData\\tokentrust"])
    state["dirs"]["c:\\programdata\\tokentrust"] = {"owner": "S-1-5-21-1-2-3-1001", "inherit": True, "acl": []}
    host = Host(tmp_path, state)
    before = copy.deepcopy(host.load())
    p = host.role("windows_trust_store", extra_vars={"tokentrust_ca_set": cas})
    assert p.returncode != 0
    assert "C:\\ProgramData\\tokentrust appeared after this run's probe found it missing" in " ".join(p.stdout.split())
    assert host.calls("win_copy") == [] and host.calls("win_owner") == []
    _unchanged(before, host.load())


def _legacy_3010_host(tmp_path, **kw):
    return Host(tmp_path, _state(uninstall_entries=[{"key": LEGACY, "display_name": "GemSafe Standard Edition",
                                                     "windows_installer": 1, "view": 64}],
                                 package_rc={LEGACY.casefold(): 3010}, **kw))


def test_a_reboot_is_refused_while_a_user_is_logged_on(tmp_path, cas):
    host = _legacy_3010_host(tmp_path, logged_on=[{"user": "PC-01\\anna", "session": 1}])
    p = host.role("token_middleware", extra_vars=_msi_vars(tmp_path, cas))
    assert p.returncode != 0
    out = " ".join(p.stdout.split())
    assert "reboot refused: PC-01\\anna logged on (legacy middleware removed" in out
    assert "windows_reboot_when_logged_on: true" in out
    assert host.load()["reboots"] == 0 and host.calls("win_reboot") == []


def test_a_reboot_under_a_logged_on_user_when_allowed_warns_and_waits(tmp_path, cas):
    host = _legacy_3010_host(tmp_path, logged_on=[{"user": "PC-01\\anna", "session": 1}])
    p = host.role("token_middleware", extra_vars=_msi_vars(tmp_path, cas, windows_reboot_when_logged_on=True))
    assert p.returncode == 0, p.stdout[-3000:]
    reboots = [c["args"] for c in host.calls("win_reboot")]
    assert len(reboots) == 1 and int(reboots[0]["pre_reboot_delay"]) == 300
    assert "Enregistrez votre travail" in reboots[0]["msg"] and "Save your work" in reboots[0]["msg"]
    # nobody logged on: the default short delay
    host2 = _legacy_3010_host(tmp_path / "2")
    assert host2.role("token_middleware", extra_vars=_msi_vars(tmp_path, cas)).returncode == 0
    assert [int(c["args"]["pre_reboot_delay"]) for c in host2.calls("win_reboot")] == [2]


def test_another_classic_client_version_stops_before_the_uac_window(tmp_path, cas):
    other = "{AAAAAAAA-1111-2222-3333-444444444444}"
    host = Host(tmp_path, _state(uninstall_entries=[{"key": other, "display_name": "Classic Client",
                                                     "display_version": "7.2.0", "windows_installer": 1,
                                                     "view": 64}]))
    ev = _msi_vars(tmp_path, cas, windows_uac_mode="disable_for_install")
    p = host.playbook("playbooks/windows.yml", ev)
    assert p.returncode != 0
    out = " ".join(p.stdout.split())
    assert f"another version of the middleware is installed: Classic Client 7.2.0 {other} (64-bit view)" in out
    s = host.load()
    assert s["reboots"] == 0 and s["registry"][UAC_KEY]["EnableLUA"]["data"] == 1
    assert "hklm:\\software\\tokentrust\\uac" not in s["registry"] and host.calls("win_package") == []
    # asked to remove it: it goes first, then the install
    host.clear_calls()
    p2 = host.playbook("playbooks/windows.yml", dict(ev, token_middleware_other_version="remove"))
    assert p2.returncode == 0, p2.stdout[-4000:]
    assert [e["key"] for e in host.load()["uninstall_entries"]] == [PRODUCT]
    assert [(c["args"].get("product_id"), c["args"]["state"]) for c in host.calls("win_package")] == [
        (other, "absent"), (PRODUCT, "present")]


def test_per_user_ie_mode_does_not_fail_its_own_zone_check(tmp_path):
    entra = "S-1-12-1-1111111111-2222222222-3333333333-4444444444"
    state = new_state()
    state["powershell"]["user_profiles.ps1"] = {
        "profiles": [{"sid": entra, "profile_path": "C:\\Users\\anna", "loaded": True, "ntuser_exists": True}],
        "connection_sid": "S-1-5-21-9-9-9-500",
        "default_profile": {"path": "C:\\Users\\Default", "ntuser_exists": True}}
    host = Host(tmp_path, state)
    ev = {"windows_ie_zones_machine_policy": False, "windows_ie_zones_per_user": True,
          "windows_ie_zones_default_user": False}
    p, facts = host.run(["windows_ie_zones"], ev, facts=["windows_ie_zones_checks"])
    assert p.returncode == 0, p.stdout[-3000:]
    checks = facts["windows_ie_zones_checks"]
    assert checks and all(c["ok"] for c in checks), checks
    assert not [c for c in checks if c["name"].startswith("IE zone of")]


def test_certificate_propagation_is_verified_without_the_token(tmp_path, cas):
    state = _state(services={"CertPropSvc": {"start_mode": "manual", "state": "stopped"}})
    host = Host(tmp_path, state)
    p, facts = host.run(["windows_verify"], {"windows_verify_token": False}, facts=["tokentrust_windows_report"])
    assert p.returncode == 0, p.stdout[-3000:]
    rep = facts["tokentrust_windows_report"]
    assert rep["failed"] == ["certificate propagation service"]
    names = [c["name"] for c in rep["checks"]]
    assert "certificate propagation policy" in names and "smart card device enumeration service" in names
    assert "token inserted" not in names
