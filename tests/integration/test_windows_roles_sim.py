"""The Windows roles, run by the real ansible-playbook against a MOCK Windows host.

No Windows here: tests/support/winsim stands in for the host and the ansible.windows modules (named
MOCK there). What is not mocked: Ansible's templating of our tasks (the args are what the modules
would receive), our filters and module_utils, the modules' documented options (ansible-doc of the
installed ansible.windows) and the store names their .ps1 sources accept.
"""
import re

import pytest

from tests.support.winsim import (
    Host,
    ca_set,
    firefox_and_classic_client,
    module_source,
    new_state,
    recap,
    system_store_names,
)


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


FIREFOX = "C:\\Program Files\\Mozilla Firefox"


def firefox_probe(version="128.5.0", gpo=None, state=None):
    """A MOCK host (`state`, default a new one) with 64-bit Firefox and Classic Client in C:\\Program Files, and the
    Firefox Group Policy `gpo`; library/win_tokentrust_firefox_probe.ps1 is answered from them."""
    state = state or new_state()
    firefox_and_classic_client(state, version=version)
    state["powershell"]["firefox_probe.ps1"] = {"gpo": gpo or {}, "gpo_users": {}}
    return state


def _firefox_host(tmp_path, **probe):
    return Host(tmp_path, firefox_probe(**probe))


def _written_policies(host, firefox=FIREFOX):
    import json  # noqa: PLC0415

    key = (firefox + "\\distribution\\policies.json").casefold()
    return json.loads(host.load()["files"][key]["content"])


def test_certificates_install_paths_are_the_files_copied(tmp_path, cas):
    host = _firefox_host(tmp_path)
    p = host.role("windows_firefox_policies", extra_vars={"tokentrust_ca_set": cas})
    assert p.returncode == 0, p.stdout[-3000:]
    paths = _written_policies(host)["policies"]["Certificates"]["Install"]
    assert len(paths) == len(cas)
    copied = {c["args"]["dest"] for c in host.calls("win_copy") if c["args"]["dest"].endswith((".pem", ".cer"))}
    assert set(paths) == copied
    for path in paths:
        assert "\\\\" not in path, path
        assert path.startswith("C:\\ProgramData\\tokentrust\\certs\\") and path.count("\\") == 4, path


def _middleware_host(tmp_path, entries=()):
    return Host(tmp_path, new_state(uninstall_entries=list(entries)))


def test_controller_msi_is_installed_from_the_path_it_was_copied_to(tmp_path):
    msi = tmp_path / "ClassicClient-x64.msi"
    msi.write_bytes(b"not really an msi")
    host = _middleware_host(tmp_path)
    p = host.role("token_middleware", extra_vars={"token_middleware_msi_src": str(msi),
                                                  "token_middleware_msi_checksum": "00" * 32,
                                                  "token_middleware_verify": False})
    assert p.returncode == 0, p.stdout[-3000:]
    dest = [c["args"]["dest"] for c in host.calls("win_copy")]
    installed = [c["args"]["path"] for c in host.calls("win_package") if c["args"].get("state") == "present"]
    assert dest == ["C:\\ProgramData\\tokentrust\\cache\\ClassicClient-x64.msi"]
    assert installed == dest


PRODUCT = "{6B0B7AC4-1B7E-4E3A-9C5D-2F1B3C4D5E6F}"
UAC_KEY = "hklm:\\software\\microsoft\\windows\\currentversion\\policies\\system"


TOKEN_ATR = "3BFF9600008131FE4380318065B0846566FB120177829000F7"


def token_probe(present=True):
    """MOCK of library/win_tokentrust_token_probe.ps1 output (made-up IDPrime-like ATR)."""
    return {"service": {"exists": True, "status": "Running", "start_type": "Manual"},
            "certprop": {"exists": True, "status": "Running", "start_type": "Automatic"}, "rds_session_host": False,
            "certprop_policy": {"enabled": None},
            "scdeviceenum": {"exists": True, "status": "Stopped", "start_type": "Manual"},
            "pnp_readers": [{"name": "Gemalto USB Smart Card Reader", "status": "OK", "instance_id": "USB\\VID_08E6"}],
            "scard": {"context_error": None, "list_error": None,
                      "readers": [{"name": "Gemalto USB Smart Card Reader 0", "present": present,
                                   "event_state": 0x22 if present else 0x12, "atr_length": len(TOKEN_ATR) // 2,
                                   "atr": TOKEN_ATR if present else ""}]},
            "registered_cards": [{"name": "Gemalto IDPrime", "view": 64, "atr": TOKEN_ATR,
                                  "atr_mask": "FF" * (len(TOKEN_ATR) // 2), "minidriver": "axaltocm.dll",
                                  "ksp": "Microsoft Smart Card Key Storage Provider", "csp": None}],
            "session": {"interactive": False, "id": 0}}


def _site_host(tmp_path, legacy=()):
    state = new_state(services={"CertPropSvc": {"start_mode": "auto", "state": "started"}})
    firefox_probe(state=state)
    state["powershell"]["token_probe.ps1"] = token_probe()
    state["uninstall_entries"] = list(legacy)
    return Host(tmp_path, state)


def _uac_writes(host):
    return [c for c in host.calls("win_regedit") if "policies\\system" in c["args"]["path"].casefold()
            or "tokentrust\\uac" in c["args"]["path"].casefold()]


def test_uac_window_is_not_opened_when_there_is_nothing_to_install(tmp_path, cas):
    host = _site_host(tmp_path)
    p = host.playbook("playbooks/windows.yml", {"tokentrust_ca_set": cas, "windows_uac_mode": "disable_for_install"})
    assert p.returncode == 0, p.stdout[-4000:]
    assert _uac_writes(host) == [] and host.load()["reboots"] == 0
    assert "nothing to install or remove on this host" in p.stdout


def test_uac_window_opens_once_then_the_next_run_changes_nothing(tmp_path, cas):
    msi = tmp_path / "ClassicClient-x64.msi"
    msi.write_bytes(b"msi")
    host = _site_host(tmp_path, legacy=[{"key": "{11111111-2222-3333-4444-555555555555}",
                                         "display_name": "GemSafe Standard Edition", "windows_installer": 1,
                                         "view": 64}])
    ev = {"tokentrust_ca_set": cas, "windows_uac_mode": "disable_for_install", "token_middleware_msi_src": str(msi),
          "token_middleware_msi_checksum": "00" * 32, "token_middleware_product_id": PRODUCT}
    p = host.playbook("playbooks/windows.yml", ev)
    assert p.returncode == 0, p.stdout[-4000:]
    s = host.load()
    assert s["reboots"] == 2  # EnableLUA off, then back on
    assert {k: v["data"] for k, v in s["registry"][UAC_KEY].items()} == {
        "EnableLUA": 1, "ConsentPromptBehaviorAdmin": 5, "PromptOnSecureDesktop": 1}
    assert "Original" not in s["registry"].get("hklm:\\software\\tokentrust\\uac", {})
    assert [e["key"] for e in s["uninstall_entries"]] == [PRODUCT]
    host.clear_calls()
    p2 = host.playbook("playbooks/windows.yml", ev)
    assert p2.returncode == 0, p2.stdout[-4000:]
    assert recap(p2)["changed"] == 0, p2.stdout[-4000:]
    assert _uac_writes(host) == [] and host.load()["reboots"] == 2


def test_ie_zones_on_a_fresh_host(tmp_path):
    # win_reg_stat returns no raw_value for a value that does not exist (win_reg_stat.ps1): the
    # role must plan from that, not fail on it
    host = Host(tmp_path)
    p, facts = host.run(["windows_ie_zones"], facts=["windows_ie_zones_checks"])
    assert p.returncode == 0, p.stdout[-3000:]
    assert facts["windows_ie_zones_checks"] and all(c["ok"] for c in facts["windows_ie_zones_checks"])
    zonemap = host.load()["registry"][
        "hklm:\\software\\policies\\microsoft\\windows\\currentversion\\internet settings\\zonemapkey"]
    assert zonemap == {"https://services.certeurope.fr": {"type": "REG_SZ", "data": "2"},
                       "https://services2.certeurope.fr": {"type": "REG_SZ", "data": "2"}}


def test_share_msi_over_ntlm_is_refused_before_anything_runs(tmp_path):
    host = _middleware_host(tmp_path)
    p = host.role("token_middleware", extra_vars={"token_middleware_msi_src": "\\\\fs.example.lan\\deploy\\cc.msi",
                                                  "token_middleware_msi_checksum": "00" * 32,
                                                  "ansible_winrm_transport": "ntlm"})
    assert p.returncode != 0
    assert "is a network share, but this host connects with WinRM ntlm" in p.stdout
    assert host.calls() == []


ADMINS_ONLY = [{"sid": "S-1-5-32-544", "rights": "FullControl", "type": "allow"},
               {"sid": "S-1-5-18", "rights": "FullControl", "type": "allow"}]


@pytest.mark.parametrize("role,var,folder", [
    ("windows_trust_store", None, "c:\\programdata\\tokentrust\\staging"),
    ("windows_firefox_policies", None, "c:\\programdata\\tokentrust\\certs"),
    ("token_middleware", None, "c:\\programdata\\tokentrust\\cache"),
])
def test_staging_folders_are_admin_only(tmp_path, cas, role, var, folder):
    msi = tmp_path / "cc.msi"
    msi.write_bytes(b"msi")
    state = new_state(uninstall_entries=[])
    firefox_probe(state=state)
    host = Host(tmp_path, state)
    p = host.role(role, extra_vars={"tokentrust_ca_set": cas, "token_middleware_msi_src": str(msi),
                                    "token_middleware_msi_checksum": "00" * 32, "token_middleware_verify": False})
    assert p.returncode == 0, p.stdout[-3000:]
    dirs = host.load()["dirs"]
    for d in ("c:\\programdata\\tokentrust", folder):
        assert dirs[d]["inherit"] is False, d  # cut from ProgramData's ACL (Users may create, CREATOR OWNER)
        assert dirs[d]["owner"] == "S-1-5-32-544"
        want = ADMINS_ONLY + ([{"sid": "S-1-5-32-545", "rights": "ReadAndExecute", "type": "allow"}]
                              if d.endswith("certs") else [])
        assert [{k: a[k] for k in ("sid", "rights", "type")} for a in dirs[d]["acl"]] == want
    assert len(dirs["c:\\programdata"]["acl"]) == 5  # ProgramData itself is left alone


@pytest.mark.parametrize("planted", [
    {"c:\\programdata\\tokentrust": {"owner": "S-1-5-21-1-2-3-1001", "inherit": True, "acl": []}},
    {"c:\\programdata\\tokentrust": {"owner": "S-1-5-32-544", "inherit": False, "acl": []},
     "c:\\programdata\\tokentrust\\staging": {"owner": "S-1-5-21-1-2-3-1001", "inherit": True, "acl": []}},
])
def test_a_folder_planted_by_a_user_stops_the_run(tmp_path, cas, planted):
    state = new_state()
    state["dirs"].update(planted)
    host = Host(tmp_path, state)
    p = host.role("windows_trust_store", extra_vars={"tokentrust_ca_set": cas})
    assert p.returncode != 0
    assert ("is owned by PC-01\\mallory (S-1-5-21-1-2-3-1001), not by S-1-5-18 (the local system account) or "
            "S-1-5-32-544 (the Administrators group)") in p.stdout + p.stderr
    assert host.calls("win_copy") == [] and host.calls("win_certificate_store") == []
    assert host.calls("win_acl") == [] and host.load()["stores"]["LocalMachine\\Root"] == {}


def test_firefox_policies_absent_removes_the_ca_files_too(tmp_path, cas):
    host = _firefox_host(tmp_path)
    p = host.role("windows_firefox_policies", extra_vars={"tokentrust_ca_set": cas})
    assert p.returncode == 0, p.stdout[-3000:]
    listed = _written_policies(host)["policies"]["Certificates"]["Install"]
    files = host.load()["files"]
    assert all(x.casefold() in files for x in listed)
    p2 = host.role("windows_firefox_policies", extra_vars={"tokentrust_ca_set": cas,
                                                          "windows_firefox_policies_state": "absent"})
    assert p2.returncode == 0, p2.stdout[-3000:]
    files = host.load()["files"]
    assert [x for x in listed if x.casefold() in files] == []
    assert "Certificates" not in _written_policies(host).get("policies", {}) or \
        not _written_policies(host)["policies"]["Certificates"].get("Install")


def test_ie_zones_warns_that_the_machine_list_replaces_the_users_lists(tmp_path):
    host = Host(tmp_path)
    p = host.role("windows_ie_zones")
    assert p.returncode == 0, p.stdout[-3000:]
    assert "users can no longer edit their" in " ".join(p.stdout.split())
    # once the policy is on (our first run), the warning is not repeated
    p2 = host.role("windows_ie_zones")
    assert "users can no longer edit their" not in " ".join(p2.stdout.split()) and recap(p2)["changed"] == 0


def test_ie_zones_per_user_only_for_an_entra_id_user(tmp_path):
    entra = "S-1-12-1-1111111111-2222222222-3333333333-4444444444"
    state = new_state()
    state["powershell"]["user_profiles.ps1"] = {
        "profiles": [{"sid": entra, "profile_path": "C:\\Users\\anna", "loaded": True, "ntuser_exists": True}],
        "connection_sid": "S-1-5-21-9-9-9-500",
        "default_profile": {"path": "C:\\Users\\Default", "ntuser_exists": True}}
    host = Host(tmp_path, state)
    site = "services.example.co.uk"
    p = host.role("windows_ie_zones", extra_vars={
        "windows_ie_zones_machine_policy": False, "windows_ie_zones_per_user": True,
        "windows_ie_zones_default_user": False, "windows_ie_zones_trusted_sites": [site],
        "windows_ie_zones_site_domains": {site: "example.co.uk"}})
    assert p.returncode == 0, p.stdout[-3000:]
    reg = host.load()["registry"]
    key = (f"hku:\\{entra}\\software\\microsoft\\windows\\currentversion\\internet settings"
           "\\zonemap\\domains\\example.co.uk\\services")
    assert reg[key.casefold()] == {"https": {"type": "REG_DWORD", "data": 2}}
    assert not [k for k in reg if k.startswith("hklm:\\software\\policies\\microsoft")]


def test_firefox_with_group_policy_certificates_reports_the_override(tmp_path, cas):
    gpo = {"": {"DisableAppUpdate": 1}, "Certificates\\Install": {"1": "C:\\corp\\root.cer"}}
    host = _firefox_host(tmp_path, gpo=gpo)
    p, facts = host.run(["windows_firefox_policies"], {"tokentrust_ca_set": cas},
                        facts=["windows_firefox_policies_checks"])
    assert p.returncode == 0, p.stdout[-3000:]
    # nothing written into the key Group Policy owns (it would be wiped at the next refresh)
    assert not [c for c in host.calls("win_regedit") if "policies\\mozilla" in c["args"]["path"].casefold()]
    assert _written_policies(host)["policies"]["Certificates"]["Install"]
    failed = [c for c in facts["windows_firefox_policies_checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["Firefox policy Certificates not overridden by Group Policy"]
    assert "Software\\Policies\\Mozilla\\Firefox\\Certificates\\Install\\1 = C:\\ProgramData\\tokentrust\\certs\\" \
        in failed[0]["detail"]


# Program Files relocated to D:\Programmes (ProgramFilesDir moved): what the host's environment says, as a 64-bit
# PowerShell sees it, and as a 32-bit one does (its ProgramFiles is the 32-bit folder, ProgramW6432 the 64-bit one).
RELOCATED = {"ProgramFiles": "D:\\Programmes", "ProgramFiles(x86)": "D:\\Programmes 32",
             "ProgramW6432": "D:\\Programmes", "SystemRoot": "C:\\Windows"}


@pytest.mark.parametrize("powershell", ["64-bit", "32-bit"])
def test_firefox_policies_follow_the_hosts_own_program_files(tmp_path, cas, powershell):
    env = dict(RELOCATED, ProgramFiles=RELOCATED["ProgramFiles(x86)"] if powershell == "32-bit" else
               RELOCATED["ProgramFiles"])
    state = firefox_and_classic_client(new_state(env=env))  # both in D:\Programmes, none in C:\Program Files
    state["powershell"]["firefox_probe.ps1"] = {"gpo": {}, "gpo_users": {}}
    host = Host(tmp_path, state)
    p, facts = host.run(["windows_firefox_policies"], {"tokentrust_ca_set": cas},
                        facts=["__windows_firefox_policies_plan", "windows_firefox_policies_checks"])
    assert p.returncode == 0, p.stdout[-3000:]
    plan = facts["__windows_firefox_policies_plan"]
    assert [(i["path"], i["gclib"]) for i in plan["installs"]] == [
        ("D:\\Programmes\\Mozilla Firefox\\firefox.exe", "D:\\Programmes\\Gemalto\\Classic Client\\BIN\\gclib.dll")]
    assert _written_policies(host, "D:\\Programmes\\Mozilla Firefox")["policies"]["SecurityDevices"]["Add"] == {
        "gem": "D:\\Programmes\\Gemalto\\Classic Client\\BIN\\gclib.dll"}
    assert all(c["ok"] for c in facts["windows_firefox_policies_checks"]), facts["windows_firefox_policies_checks"]
    # the role wrote under D:\Programmes, never into a C:\Program Files it assumed (only the CA files go to
    # C:\ProgramData\tokentrust\certs, the role's cert_dir)
    written = [c["args"].get("dest") or c["args"].get("path") for c in host.calls() if c["module"] in
               ("win_copy", "win_file")]
    assert [w for w in written if not w.casefold().startswith("c:\\programdata\\tokentrust\\certs")] == [
        "D:\\Programmes\\Mozilla Firefox\\distribution", "D:\\Programmes\\Mozilla Firefox\\distribution\\policies.json"]
    after = host.load()
    assert not [k for k in list(after["files"]) + list(after["dirs"]) if k.startswith("c:\\program files")]
    p2 = host.role("windows_firefox_policies", extra_vars={"tokentrust_ca_set": cas})
    assert p2.returncode == 0 and recap(p2)["changed"] == 0, p2.stdout[-3000:]


def test_firefox_too_old_for_security_devices_add_stops(tmp_path, cas):
    host = _firefox_host(tmp_path, version="102.11.0")
    p = host.role("windows_firefox_policies", extra_vars={"tokentrust_ca_set": cas})
    assert p.returncode != 0
    assert "is version 102.11.0: SecurityDevices.Add needs Firefox 114" in p.stdout + p.stderr
    assert host.calls("win_copy") == []


def test_windows_playbook_report_has_the_token_checks_and_says_what_was_not_verified(tmp_path, cas):
    host = _site_host(tmp_path)
    p, facts = host.run(["windows_trust_store", "windows_verify"], {"tokentrust_ca_set": cas},
                        facts=["tokentrust_windows_report"])
    assert p.returncode == 0, p.stdout[-3000:]
    rep = facts["tokentrust_windows_report"]
    token = [c for c in rep["checks"] if c["role"] == "windows_verify"]
    assert [c["name"] for c in token] == ["smart card service", "certificate propagation service",
                                          "certificate propagation policy", "smart card device enumeration service",
                                          "smart card reader", "token inserted",
                                          "minidriver for the token in Gemalto USB Smart Card Reader 0"]
    assert rep["ok"] and any("PIN entry" in x for x in rep["not_verified"])
    # token unplugged: the report says so and fails
    s = host.load()
    s["powershell"]["token_probe.ps1"] = token_probe(present=False)
    host.save(s)
    p2, facts2 = host.run(["windows_verify"], {}, facts=["tokentrust_windows_report"])
    assert p2.returncode == 0
    assert facts2["tokentrust_windows_report"]["failed"] == ["token inserted"]
