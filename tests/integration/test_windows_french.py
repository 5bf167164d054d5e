"""The Windows playbook against a MOCK Windows host that speaks French (tests/support/winsim).

What is real here: ansible-playbook, our roles, filters and module_utils, the installed ansible.windows
modules' documentation, ansible-core's SID resolution rule (copied by the MOCK: a SID passes, a name is
translated with the host's language, an English name fails on a French host), win_powershell's depth rule
(Convert-OutputObject) and the probes' text (parsed with tree-sitter-powershell, their result shape
checked). What is a MOCK: the Windows host and the modules' effects on it.
"""
import os
import shutil

import pytest

from tests.support.winsim import Host, ca_set, firefox_and_classic_client, new_state, probes, recap

PRODUCT = "{6B0B7AC4-1B7E-4E3A-9C5D-2F1B3C4D5E6F}"
LEGACY = "{11111111-2222-3333-4444-555555555555}"
USERS, ADMINS, SYSTEM = "S-1-5-32-545", "S-1-5-32-544", "S-1-5-18"


@pytest.fixture(scope="module")
def cas():
    return ca_set()


def _french_host(tmp_path, roles=None, **kw):
    state = new_state(uninstall_entries=[{"key": LEGACY, "display_name": "GemSafe Standard Edition",
                                          "windows_installer": 1, "view": 64}], **kw)
    state["powershell"]["firefox_probe.ps1"] = probes.firefox_answer(gpo=False)
    firefox_and_classic_client(state)  # 64-bit Firefox and gclib.dll in C:\Program Files
    state["powershell"]["token_probe.ps1"] = probes.token_answer()
    return Host(tmp_path, state, roles=roles)


def _site_vars(tmp_path, cas):
    msi = tmp_path / "ClassicClient-x64.msi"
    msi.write_bytes(b"msi")
    return {"tokentrust_ca_set": cas, "token_middleware_msi_src": str(msi), "token_middleware_msi_checksum": "00" * 32,
            "token_middleware_product_id": PRODUCT, "windows_uac_mode": "disable_for_install"}


def _aces(meta, sid):
    return [e for e in meta.get("acl", []) if e["sid"] == sid]


def test_french_windows_runs_clean_then_changes_nothing(tmp_path, cas):
    """Why 1, 3 and the "Done when": the whole Windows playbook on a French host, a second run idempotent."""
    host = _french_host(tmp_path, package_rc={LEGACY.casefold(): 3010},
                        services={"CertPropSvc": {"start_mode": "manual", "state": "stopped"}})
    ev = _site_vars(tmp_path, cas)
    check = host.playbook("playbooks/windows.yml", ev, check=True)
    assert check.returncode == 0, check.stdout[-4000:]
    assert "c:\\programdata\\tokentrust" not in host.load()["dirs"]  # check mode created nothing
    host.clear_calls()
    p = host.playbook("playbooks/windows.yml", ev)
    assert p.returncode == 0, p.stdout[-4000:]
    s = host.load()
    # every account the modules were given is a SID (a French host has no BUILTIN\Administrators)
    users = {c["args"]["user"] for c in host.calls() if c["module"] in ("win_acl", "win_owner")}
    assert users == {ADMINS}
    readers = {s for c in host.calls("win_tokentrust_private_dir_create") for s in c["args"].get("read_sids") or []}
    assert readers == {USERS}  # the ACL itself is built by win_tokentrust_private_dir_create from SIDs
    tt = {k: v for k, v in s["dirs"].items() if k.startswith("c:\\programdata\\tokentrust")}
    assert sorted(tt) == ["c:\\programdata\\tokentrust", "c:\\programdata\\tokentrust\\cache",
                          "c:\\programdata\\tokentrust\\certs", "c:\\programdata\\tokentrust\\staging"]
    for d, meta in tt.items():
        assert meta["owner"] == ADMINS and meta["inherit"] is False, d
        assert not [e for e in meta["acl"] if e.get("inherited")], d
        assert {e["sid"] for e in meta["acl"] if e["rights"] not in ("ReadAndExecute", "Read")} == {ADMINS, SYSTEM}, d
    # Why 3: the files Firefox imports as the desktop user are readable by Users, and only those
    certs = [f for f in s["files"] if f.startswith("c:\\programdata\\tokentrust\\certs\\")]
    assert len(certs) == len(cas)
    for f, meta in s["files"].items():
        if f.startswith("c:\\programdata\\tokentrust\\"):
            readable = bool(_aces(meta, USERS))
            assert readable == (f in certs), f
            assert all(e["rights"] == "ReadAndExecute" for e in _aces(meta, USERS)), f
    # the legacy removal asked for a reboot (3010): it happened before the install
    order = [(c["module"], c["args"].get("state")) for c in host.calls()
             if c["module"] in ("win_package", "win_reboot")]
    assert order == [("win_reboot", None), ("win_package", "absent"), ("win_reboot", None), ("win_package", "present"),
                     ("win_reboot", None)], order  # UAC off, removal (3010), reboot, install, UAC back on
    assert s["reboots"] == 3  # UAC off, the removal's 3010, UAC back on
    assert s["services"]["CertPropSvc"] == {"start_mode": "auto", "state": "started"}
    ps = host.calls("win_powershell")  # the preflight's body only: every probe is a module of ours
    assert ps and all("depth" in c["args"] for c in ps)
    assert {c["module"] for c in host.calls() if c["module"].startswith("win_tokentrust_")} >= {
        "win_tokentrust_private_dir_probe", "win_tokentrust_private_dir_create", "win_tokentrust_token_probe"}
    assert "windows_verify : Fail when a check failed" not in p.stdout
    assert "checks passed" in p.stdout and "; failed:" not in p.stdout
    host.clear_calls()
    p2 = host.playbook("playbooks/windows.yml", ev)
    assert p2.returncode == 0, p2.stdout[-4000:]
    assert recap(p2)["changed"] == 0, p2.stdout[-4000:]
    assert host.load()["reboots"] == 3


def test_an_english_account_name_fails_on_the_french_host(tmp_path):
    """What the roles did before (Why 1): win_acl with BUILTIN\\Administrators on a French Windows."""
    host = Host(tmp_path)
    p = host.play([{"name": "folder", "ansible.windows.win_file": {"path": "C:\\ProgramData\\x", "state": "directory"}},
                   {"name": "acl", "ansible.windows.win_acl": {"path": "C:\\ProgramData\\x",
                                                               "user": "BUILTIN\\Administrators",
                                                               "rights": "FullControl", "type": "allow"}}])
    assert p.returncode != 0
    assert "account_name BUILTIN\\Administrators is not a valid account, cannot get SID" in p.stdout
    # and the folder win_file made first has ProgramData's ACL: Users may write into it
    d = host.load()["dirs"]["c:\\programdata\\x"]
    assert any(e["sid"] == USERS and e["rights"] == "Write" for e in d["acl"])
    p2 = host.play([{"name": "acl", "ansible.windows.win_acl": {"path": "C:\\ProgramData\\x",
                                                                "user": "BUILTIN\\Administrateurs",
                                                                "rights": "FullControl", "type": "allow"}}])
    assert p2.returncode == 0, p2.stdout[-3000:]


def test_the_admin_folder_is_never_made_with_the_inherited_acl(tmp_path, cas):
    host = _french_host(tmp_path)
    p = host.role("windows_trust_store", extra_vars={"tokentrust_ca_set": cas})
    assert p.returncode == 0, p.stdout[-3000:]
    assert [c for c in host.calls("win_file") if c["args"].get("state") == "directory"] == []
    made = [c["args"]["path"] for c in host.calls("win_tokentrust_private_dir_create")]
    assert made == ["C:\\ProgramData\\tokentrust", "C:\\ProgramData\\tokentrust\\staging"]


def _roles_copy(tmp_path):
    """roles/ and library/ (our modules) copied side by side: the MOCK host reads the modules next to the roles."""
    roles = str(tmp_path / "roles")
    shutil.copytree(probes.ROLES, roles)
    shutil.copytree(probes.library_of(probes.ROLES), probes.library_of(roles))
    return roles


def _edit(path, old, new):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert old in text
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new))


@pytest.mark.parametrize("mutation,message", [
    ("body", "winsim MOCK: win_tokentrust_token_probe: not valid PowerShell (tree-sitter-powershell): syntax error"),
    ("deeper", "winsim MOCK: win_tokentrust_token_probe: its answer does not match what the module emits: "
               "result.deeper"),
    ("option", "win_tokentrust_token_probe: Unsupported parameters for module: depth"),
])
def test_mutation_a_broken_probe_or_option_fails_the_role_on_the_mock(tmp_path, cas, mutation, message):
    """Why 4: the MOCK runs what it can of the probe module (grammar, shape, argument spec)."""
    roles = _roles_copy(tmp_path)
    probe = os.path.join(probes.library_of(roles), "win_tokentrust_token_probe.ps1")
    if mutation == "body":
        with open(probe, encoding="utf-8") as f:
            first = f.readline()
        with open(probe, "w", encoding="utf-8") as f:
            f.write(first + 'readers = [r for r in scard if r.present}\n')
    elif mutation == "deeper":
        _edit(probe, "$module.ExitJson()", "$module.Result.deeper = @{ a = @{ b = 1 } }\n$module.ExitJson()")
    else:  # what a task written for win_powershell would still pass
        _edit(os.path.join(roles, "windows_verify", "tasks", "main.yml"), "  win_tokentrust_token_probe: {}",
              "  win_tokentrust_token_probe: {depth: 3}")
    host = _french_host(tmp_path, roles=roles)
    p, _ = host.run(["windows_verify"], {}, facts=["tokentrust_windows_report"])
    assert p.returncode != 0
    assert message in " ".join((p.stdout + p.stderr).split()), p.stdout[-3000:]


def test_the_mock_refuses_a_script_we_do_not_ship(tmp_path):
    host = Host(tmp_path)
    script = "# tokentrust: read-only probe\nGet-Date"
    p = host.play([{"name": "x", "ansible.windows.win_powershell": {"script": script}}])
    assert p.returncode != 0
    assert "winsim MOCK refuses a script that is not one of the probes we ship" in p.stdout


def test_a_legacy_uninstaller_without_silent_switches_is_refused(tmp_path):
    host = Host(tmp_path, new_state(uninstall_entries=[{
        "key": "GemSafe", "display_name": "GemSafe Libraries", "windows_installer": 0, "view": 32,
        "uninstall_string": "C:\\Program Files (x86)\\Gemplus\\uninst.exe"}]))
    ev = {"token_middleware_msi_src": "C:\\cc.msi", "token_middleware_msi_checksum": "00" * 32,
          "token_middleware_verify": False}
    p = host.role("token_middleware", extra_vars=ev)
    assert p.returncode != 0
    out = " ".join(p.stdout.split())
    assert "'GemSafe Libraries' (GemSafe, 32-bit view) is not an MSI and has no QuietUninstallString" in out
    assert "token_middleware_legacy_uninstall_arguments" in out
    assert host.calls("win_package") == []
    ev["token_middleware_legacy_uninstall_arguments"] = {"GemSafe": "/S"}
    p2 = host.role("token_middleware", extra_vars=ev)
    assert p2.returncode == 0, p2.stdout[-3000:]
    removed = [c["args"] for c in host.calls("win_package") if c["args"].get("state") == "absent"]
    assert removed == [{"product_id": "GemSafe", "provider": "registry", "arguments": "/S", "state": "absent"}]


def test_an_install_returning_3010_reboots_once(tmp_path):
    host = Host(tmp_path, new_state(uninstall_entries=[], package_rc={"c:\\cc.msi": 3010}))
    ev = {"token_middleware_msi_src": "C:\\cc.msi", "token_middleware_msi_checksum": "00" * 32,
          "token_middleware_verify": False}
    p = host.role("token_middleware", extra_vars=ev)
    assert p.returncode == 0, p.stdout[-3000:]
    assert host.load()["reboots"] == 1


def test_ie_zone_list_owned_by_group_policy_is_left_to_it_and_the_effective_zone_is_checked(tmp_path):
    """Why 5: a Site to Zone GPO rewrites its list at each refresh: we say what to add to it, write nothing
    there, and the check reads the zone Windows applies (MapUrlToZone), which is still Internet."""
    pol = ("C:\\ProgramData\\Microsoft\\Group Policy\\History\\{31B2F340-016D-11D2-945F-00C04FB984F9}"
           "\\Machine\\Registry.pol")
    host = Host(tmp_path, new_state(ie_gpo_sources=[pol]))
    p, facts = host.run(["windows_ie_zones"], facts=["windows_ie_zones_checks"])
    assert p.returncode == 0, p.stdout[-3000:]
    out = " ".join(p.stdout.split())
    assert "each refresh rewrites the whole list, so tokentrust writes nothing there" in out
    assert ("Site to Zone Assignment List): https://services.certeurope.fr = 2, https://services2.certeurope.fr = 2"
            in out)
    assert not [c for c in host.calls("win_regedit") if "zonemapkey" in c["args"]["path"].casefold()
                or c["args"].get("name") == "ListBox_Support_ZoneMapKey"]
    bad = [c for c in facts["windows_ie_zones_checks"] if not c["ok"]]
    assert [c["name"] for c in bad] == ["IE zone of https://services.certeurope.fr",
                                        "IE zone of https://services2.certeurope.fr"]
    assert "zone 3 (Internet), not 2 (Trusted sites); a Group Policy owns" in bad[0]["detail"]
