"""Unit tests of the Windows planning logic (plugin_utils/tokentrust_windows/): no Windows needed."""
import json

import pytest
from ansible.module_utils.tokentrust_facts import library_candidates

from lab.pki import certeurope_standin
from plugin_utils import tokentrust_windows as tw
from tests.support.winsim import DEFAULT_ENV, expand_env

UAC = tw.UAC_KEY
DEFAULT_UAC = {"EnableLUA": 1, "ConsentPromptBehaviorAdmin": 5, "PromptOnSecureDesktop": 1}


@pytest.fixture(scope="module")
def ca_set():
    """A CA set shaped like the ca_certificates fact, from the generated CertEurope stand-in."""
    out = []
    for name, c in certeurope_standin().items():
        root = c.cert.issuer == c.cert.subject
        out.append({"name": name, "sha1": c.sha1, "sha256": c.sha256, "role": "root" if root else "intermediate",
                    "windows_store": "Root" if root else "CA", "pem": c.pem.decode(), "der_path": f"/tmp/{name}.der",
                    "pem_path": f"/tmp/{name}.pem", "expired": False})
    return out


# ------------------------------------------------------------------ trust stores
@pytest.mark.parametrize("ca,store", [
    ({"role": "root"}, "Root"),
    ({"role": "intermediate"}, "CA"),
    ({"role": "root", "windows_store": "Root"}, "Root"),
    ({"role": "intermediate", "windows_store": "CA"}, "CA"),
])
def test_store_for(ca, store):
    assert tw.store_for(ca) == store


@pytest.mark.parametrize("ca,msg", [
    ({"name": "X", "role": "leaf"}, "CA 'X': cannot choose a store: role is 'leaf'"),
    ({"name": "X", "windows_store": "My"}, "windows_store must be Root or CA, got 'My'"),
])
def test_store_for_errors(ca, msg):
    with pytest.raises(tw.WindowsPlanError, match=msg):
        tw.store_for(ca)


def test_thumbprint_normalized():
    assert tw.normalize_thumbprint("ab:" * 19 + "cd") == ("AB" * 19 + "CD")
    with pytest.raises(tw.WindowsPlanError, match="not a SHA-1 thumbprint"):
        tw.normalize_thumbprint("1234")


def test_store_plan_fresh_host(ca_set):
    plan = tw.store_plan(ca_set)
    stores = {i["name"]: i["store"] for i in plan["install"]}
    assert stores == {"Lab Root CA 2": "Root", "Lab Advanced CA V3": "CA", "Lab Root CA": "Root",
                      "Lab Classe 3 Plus V2": "CA"}
    assert plan["remove"] == [] and plan["record_remove"] == []
    assert set(plan["record"]) == {c["sha1"] for c in ca_set}
    assert all(i["file_type"] == "der" and i["file"].endswith(".cer") for i in plan["install"])


def test_store_plan_preexisting_cert_not_recorded(ca_set):
    root = ca_set[0]
    plan = tw.store_plan(ca_set, present={"Root": [root["sha1"]]})
    assert root["sha1"] not in plan["record"]
    first = next(i for i in plan["install"] if i["thumbprint"] == root["sha1"])
    assert first["already_present"] and not first["ours"]


def test_store_plan_idempotent_record(ca_set):
    recorded = {c["sha1"]: c["windows_store"] for c in ca_set}
    present = {"Root": [c["sha1"] for c in ca_set if c["windows_store"] == "Root"],
               "CA": [c["sha1"] for c in ca_set if c["windows_store"] == "CA"]}
    plan = tw.store_plan(ca_set, present=present, recorded=recorded)
    assert plan["record"] == {} and plan["remove"] == []


def test_store_plan_stale(ca_set):
    stale = "AA" * 20
    recorded = {stale: "CA", ca_set[0]["sha1"]: "Root"}
    keep = tw.store_plan(ca_set, recorded=recorded)
    assert keep["remove"] == [] and keep["record_remove"] == []
    rm = tw.store_plan(ca_set, recorded=recorded, remove_stale=True)
    assert rm["remove"] == [{"thumbprint": stale, "store": "CA", "store_name": "CA", "name": stale}]
    assert rm["record_remove"] == [stale]


def test_store_plan_absent_removes_only_ours(ca_set):
    recorded = {ca_set[0]["sha1"]: "Root"}
    plan = tw.store_plan(ca_set, present={"Root": [c["sha1"] for c in ca_set]}, recorded=recorded, state="absent")
    assert [r["thumbprint"] for r in plan["remove"]] == [ca_set[0]["sha1"]]
    assert plan["install"] == [] and plan["record_remove"] == [ca_set[0]["sha1"]]


def test_store_thumbprints_from_module_results():
    results = [{"item": "Root", "certificates": [{"thumbprint": "AA" * 20}]},
               {"item": "CA", "certificates": []}]
    assert tw.store_thumbprints(results) == {"Root": ["AA" * 20], "CA": []}


def test_store_plan_bad_record():
    with pytest.raises(tw.WindowsPlanError, match="names store 'My', not Root or CA"):
        tw.store_plan([], recorded={"AA" * 20: "My"}, remove_stale=True)


def test_store_plan_needs_material():
    with pytest.raises(tw.WindowsPlanError, match="neither pem nor der_path"):
        tw.store_plan([{"name": "X", "sha1": "AA" * 20, "role": "root"}])


# ------------------------------------------------------------------ UAC
def _set(plan):
    return {e["name"]: (e["data"], e["state"]) for e in plan["set"]}


def test_uac_keep_without_record_does_nothing():
    plan = tw.uac_plan("keep", "before", DEFAULT_UAC)
    assert not plan["changed"] and plan["set"] == [] and not plan["reboot"]


def test_uac_disable_for_install_before_records_then_disables():
    plan = tw.uac_plan("disable_for_install", "before", DEFAULT_UAC)
    rec = json.loads(plan["record_write"])
    assert rec["values"] == DEFAULT_UAC and rec["mode"] == "disable_for_install"
    assert _set(plan) == {"EnableLUA": (0, "present"), "ConsentPromptBehaviorAdmin": (0, "present"),
                          "PromptOnSecureDesktop": (0, "present")}
    assert plan["reboot"] and not plan["record_delete"]
    assert all(e["path"] == UAC and e["type"] == "dword" for e in plan["set"])


def test_uac_disable_without_lua():
    plan = tw.uac_plan("disable_for_install", "before", DEFAULT_UAC, disable_lua=False)
    assert "EnableLUA" not in _set(plan) and not plan["reboot"]


def test_uac_after_restores_exactly_including_absent_values():
    original = {"EnableLUA": 1, "ConsentPromptBehaviorAdmin": 2, "PromptOnSecureDesktop": None}
    rec = tw.uac_record_encode(original, "disable_for_install")
    disabled = {"EnableLUA": 0, "ConsentPromptBehaviorAdmin": 0, "PromptOnSecureDesktop": 0}
    plan = tw.uac_plan("disable_for_install", "after", disabled, rec)
    assert _set(plan) == {"EnableLUA": (1, "present"), "ConsentPromptBehaviorAdmin": (2, "present"),
                          "PromptOnSecureDesktop": (None, "absent")}
    assert plan["record_delete"] and plan["reboot"] and plan["restore"]


def test_uac_rerun_after_crash_keeps_the_original_record():
    """A run died after disabling: the next `before` must not record the disabled values."""
    rec = tw.uac_record_encode(DEFAULT_UAC, "disable_for_install")
    disabled = {"EnableLUA": 0, "ConsentPromptBehaviorAdmin": 0, "PromptOnSecureDesktop": 0}
    before = tw.uac_plan("disable_for_install", "before", disabled, rec)
    assert before["record_write"] is None and before["set"] == [] and not before["changed"]
    after = tw.uac_plan("disable_for_install", "after", disabled, rec)
    assert _set(after) == {k: (v, "present") for k, v in DEFAULT_UAC.items()}


@pytest.mark.parametrize("phase", ["before", "after"])
def test_uac_keep_restores_a_leftover_record(phase):
    rec = tw.uac_record_encode(DEFAULT_UAC, "disable_for_install")
    plan = tw.uac_plan("keep", phase, {"EnableLUA": 0, "ConsentPromptBehaviorAdmin": 0, "PromptOnSecureDesktop": 0},
                       rec)
    assert plan["restore"] and plan["record_delete"] and _set(plan)["EnableLUA"] == (1, "present")


def test_uac_after_without_record_is_noop():
    plan = tw.uac_plan("disable_for_install", "after", DEFAULT_UAC)
    assert not plan["changed"] and "nothing to restore" in plan["messages"][0]


@pytest.mark.parametrize("mode,values", [
    ("enabled", {"EnableLUA": 1, "ConsentPromptBehaviorAdmin": 5, "PromptOnSecureDesktop": 1}),
    ("disabled", {"EnableLUA": 0, "ConsentPromptBehaviorAdmin": 0, "PromptOnSecureDesktop": 0}),
])
def test_uac_explicit_modes(mode, values):
    other = {k: (1 - v if k != "ConsentPromptBehaviorAdmin" else 3) for k, v in values.items()}
    plan = tw.uac_plan(mode, "before", other)
    assert _set(plan) == {k: (v, "present") for k, v in values.items()}
    assert tw.uac_plan(mode, "before", values)["changed"] is False
    after = tw.uac_plan(mode, "after", other)
    assert after["changed"] is False
    assert {e["name"]: e["data"] for e in after["expected"]} == values and after["record_expected"] == "absent"


def test_uac_expected_for_verification():
    before = tw.uac_plan("disable_for_install", "before", DEFAULT_UAC)
    assert {e["name"]: e["data"] for e in before["expected"]}["EnableLUA"] == 0
    assert before["record_expected"] == "present"
    assert tw.uac_plan("keep", "after", DEFAULT_UAC)["expected"] == []


def test_uac_explicit_mode_drops_leftover_record():
    rec = tw.uac_record_encode(DEFAULT_UAC, "disable_for_install")
    plan = tw.uac_plan("enabled", "before", DEFAULT_UAC, rec)
    assert plan["record_delete"] and plan["set"] == []


@pytest.mark.parametrize("text,msg", [
    ("{not json", "not readable JSON"),
    ('{"version": 2}', "unknown format"),
    ('{"version": 1, "values": {"EnableLUA": 1}}', "does not hold EnableLUA"),
    ('{"version": 1, "values": {"EnableLUA": "x", "ConsentPromptBehaviorAdmin": 1, "PromptOnSecureDesktop": 1}}',
     "EnableLUA is 'x'"),
])
def test_uac_corrupt_record_stops(text, msg):
    with pytest.raises(tw.WindowsPlanError, match=msg):
        tw.uac_plan("keep", "before", DEFAULT_UAC, text)


def test_uac_bad_mode_and_current():
    with pytest.raises(tw.WindowsPlanError, match="windows_uac_mode must be one of"):
        tw.uac_plan("off", "before", DEFAULT_UAC)
    assert tw.uac_current({"EnableLUA": {"raw_value": 1, "type": "REG_DWORD"}}) == {
        "EnableLUA": 1, "ConsentPromptBehaviorAdmin": None, "PromptOnSecureDesktop": None}
    with pytest.raises(tw.WindowsPlanError, match="not a number"):
        tw.uac_current({"EnableLUA": {"raw_value": "abc"}})


# ------------------------------------------------------------------ IE zones
POL = tw.IE_POLICY_KEY


def _keyed(entries):
    return {(e["path"], e["name"]): (e["data"], e["type"], e["state"]) for e in entries}


def test_ie_trusted_sites_default():
    got = _keyed(tw.ie_plan("trusted_sites"))
    assert got == {
        (POL, "ListBox_Support_ZoneMapKey"): (1, "dword", "present"),
        (POL + "\\ZoneMapKey", "https://services.certeurope.fr"): ("2", "string", "present"),
        (POL + "\\ZoneMapKey", "https://services2.certeurope.fr"): ("2", "string", "present"),
    }


def test_ie_disable_protected_mode():
    got = _keyed(tw.ie_plan("disable_protected_mode", zones=[3]))
    assert got[(POL + "\\Zones\\3", "2500")] == (3, "dword", "present")
    assert (POL + "\\Zones\\2", "2500") not in got
    assert (POL + "\\ZoneMapKey", "https://services.certeurope.fr") in got


def test_ie_trusted_sites_undoes_protected_mode_off():
    got = _keyed(tw.ie_plan("trusted_sites", zones=[2, 3], current_policy={"3": 3, "2": 0}))
    assert got[(POL + "\\Zones\\3", "2500")] == (None, "dword", "absent")
    assert (POL + "\\Zones\\2", "2500") not in got


def test_ie_keep_is_empty():
    assert tw.ie_plan("keep", users=[{"sid": "S-1-5-21-1-2-3-1001"}], per_user=True) == []


def test_ie_per_user_hives():
    users = tw.ie_users([
        {"sid": "S-1-5-21-11-22-33-1001", "profile_path": "C:\\Users\\alice", "loaded": True},
        {"sid": "S-1-5-21-11-22-33-1002", "profile_path": "C:\\Users\\bob", "loaded": False, "ntuser_exists": True},
        {"sid": "S-1-5-18", "profile_path": "C:\\Windows\\system32\\config\\systemprofile", "loaded": True},
        {"sid": "S-1-5-21-11-22-33-500", "profile_path": "C:\\Users\\ansible", "loaded": True},
        # a stale ProfileList entry / an FSLogix profile: no NTUSER.DAT to load
        {"sid": "S-1-5-21-11-22-33-1003", "profile_path": "C:\\Users\\carol", "loaded": False, "ntuser_exists": False},
    ], exclude_sids=["S-1-5-21-11-22-33-500"], default_profile={"path": "D:\\Profiles\\Default", "ntuser_exists": True})
    assert [u["sid"] for u in users] == ["S-1-5-21-11-22-33-1001", "S-1-5-21-11-22-33-1002", "Default"]
    assert users[-1]["profile_path"] == "D:\\Profiles\\Default"
    entries = tw.ie_plan("disable_protected_mode", zones=[3], users=users, per_user=True)
    alice = [e for e in entries if e["scope"] == "user:S-1-5-21-11-22-33-1001"]
    bob = [e for e in entries if e["scope"] == "user:S-1-5-21-11-22-33-1002"]
    default = [e for e in entries if e["scope"] == "user:Default"]
    base = "HKU:\\S-1-5-21-11-22-33-1001\\" + tw.IE_USER_SUBKEY
    assert _keyed(alice) == {
        (base + "\\ZoneMap\\Domains\\certeurope.fr\\services", "https"): (2, "dword", "present"),
        (base + "\\ZoneMap\\Domains\\certeurope.fr\\services2", "https"): (2, "dword", "present"),
        (base + "\\Zones\\3", "2500"): (3, "dword", "present"),
    }
    assert all("hive" not in e for e in alice)
    assert all(e["hive"] == "C:\\Users\\bob\\NTUSER.DAT" and e["path"].startswith("HKLM:\\ANSIBLE\\") for e in bob)
    assert default and all(e["hive"] == "D:\\Profiles\\Default\\NTUSER.DAT" for e in default)
    assert not any(e["path"].startswith("HKCU:") for e in entries)


@pytest.mark.parametrize("kw,msg", [
    ({"mode": "off"}, "windows_ie_zones_mode must be one of"),
    ({"mode": "trusted_sites", "sites": ["https://services.certeurope.fr/x"]}, "is not a host name"),
    ({"mode": "disable_protected_mode", "zones": [7]}, "IE zone 7 does not exist"),
    ({"mode": "trusted_sites", "scheme": "ftp"}, "scheme must be"),
    ({"mode": "trusted_sites", "per_user": True, "users": [{"sid": "S-1-5-18"}]},
     "not a local, domain or Entra ID user SID"),
    ({"mode": "trusted_sites", "machine_policy": False}, "nothing would be written"),
])
def test_ie_errors(kw, msg):
    with pytest.raises(tw.WindowsPlanError, match=msg):
        tw.ie_plan(**kw)


# a few lines of the real Public Suffix List format (rules, wildcard, exception)
PSL = tw.parse_psl("// comment\nfr\ngouv.fr\nuk\nco.uk\norg\nus\nk12.ma.us\n*.ck\n!www.ck\n")


@pytest.mark.parametrize("host,out", [
    ("services.certeurope.fr", ("certeurope.fr", "services")),
    ("a.b.example.org", ("example.org", "a.b")),
    ("certeurope.fr", ("certeurope.fr", None)),
    ("services.example.co.uk", ("example.co.uk", "services")),   # not (co.uk, services.example)
    ("teleservices.impots.gouv.fr", ("impots.gouv.fr", "teleservices")),
    ("a.b.c.ck", ("b.c.ck", "a")),                                # wildcard rule *.ck
    ("a.www.ck", ("www.ck", "a")),                                # exception rule !www.ck
])
def test_zonemap_domain(host, out):
    assert tw.zonemap_domain(host, psl=PSL) == out


def test_zonemap_domain_override_and_errors():
    assert tw.zonemap_domain("svc.example.co.uk", {"svc.example.co.uk": "example.co.uk"}) == ("example.co.uk", "svc")
    with pytest.raises(tw.WindowsPlanError, match="not a parent domain"):
        tw.zonemap_domain("svc.example.co.uk", {"svc.example.co.uk": "other.uk"})
    with pytest.raises(tw.WindowsPlanError, match="without the Public Suffix List"):
        tw.zonemap_domain("svc.example.co.uk", psl=None)
    with pytest.raises(tw.WindowsPlanError, match="is a public suffix, not a site"):
        tw.zonemap_domain("k12.ma.us", psl=PSL)


def test_entra_id_users_get_per_user_settings():
    entra = "S-1-12-1-1234567890-1234567890-1234567890-1234567890"
    users = tw.ie_users([{"sid": entra, "profile_path": "C:\\Users\\anna", "loaded": True},
                         {"sid": "S-1-5-18", "profile_path": "C:\\Windows\\system32", "loaded": True}],
                        include_default=False)
    assert [u["sid"] for u in users] == [entra]
    plan = tw.ie_plan("trusted_sites", users=users, per_user=True, psl=PSL)
    assert [e["path"] for e in plan if e["scope"] == f"user:{entra}"] == [
        f"HKU:\\{entra}\\{tw.IE_USER_SUBKEY}\\ZoneMap\\Domains\\certeurope.fr\\services",
        f"HKU:\\{entra}\\{tw.IE_USER_SUBKEY}\\ZoneMap\\Domains\\certeurope.fr\\services2"]


def test_ie_per_user_only_leaves_the_machine_policy_alone():
    users = [{"sid": "S-1-5-21-1-2-3-1001", "profile_path": "C:\\Users\\bob", "loaded": True}]
    plan = tw.ie_plan("disable_protected_mode", users=users, per_user=True, machine_policy=False, psl=PSL)
    assert plan and all(e["scope"].startswith("user:") for e in plan)
    assert not any(e["path"].startswith(tw.IE_POLICY_KEY) for e in plan)


# ------------------------------------------------------------------ Firefox bitness
FX64 = {"path": "C:\\Program Files\\Mozilla Firefox\\firefox.exe", "machine": 0x8664, "version": "128.5.0"}
FX32 = {"path": "C:\\Program Files (x86)\\Mozilla Firefox\\firefox.exe", "machine": "0x014C", "version": "115.4.0esr"}
GIVEN = library_candidates("Windows")  # %ProgramFiles%\..., %ProgramFiles(x86)%\...: the probe expands them
GCLIB = [expand_env(p, DEFAULT_ENV, program_files_64=True) for p in GIVEN]  # ... on a host with the usual folders
PROGRAM_FILES = {"x64": "C:\\Program Files", "x86": "C:\\Program Files (x86)"}
G64 = {"path": GCLIB[0], "given": GIVEN[0], "exists": True, "machine": 34404}
T64 = {"path": GCLIB[1], "given": GIVEN[1], "exists": True, "machine": 34404}
G32 = {"path": GCLIB[2], "given": GIVEN[2], "exists": True, "machine": 332}


@pytest.mark.parametrize("machine,arch", [(0x14C, "x86"), (0x8664, "x64"), ("0xAA64", "arm64"), ("34404", "x64")])
def test_pe_arch(machine, arch):
    assert tw.pe_arch(machine) == arch


def test_pe_arch_unknown():
    with pytest.raises(tw.WindowsPlanError, match="unknown PE machine type 0x0200"):
        tw.pe_arch(0x200)


@pytest.mark.parametrize("fx,cands,path", [
    (FX64, [G64, G32], G64["path"]),
    (FX64, [G32, T64], T64["path"]),
    (FX32, [G64, G32], G32["path"]),
    (FX64, [dict(G64, exists=False), T64], T64["path"]),
])
def test_choose_gclib(fx, cands, path):
    assert tw.choose_gclib(fx, cands)["path"] == path


def test_choose_gclib_mismatch_says_so():
    with pytest.raises(tw.WindowsPlanError) as e:
        tw.choose_gclib(FX64, [dict(G64, exists=False), G32])
    msg = str(e.value)
    assert "bitness mismatch" in msg and "is 64-bit (x64)" in msg and "is 32-bit (x86)" in msg
    assert G32["path"] in msg and "install the 64-bit Classic Client" in msg


def test_choose_gclib_none_found():
    with pytest.raises(tw.WindowsPlanError, match="no gclib.dll found for Firefox .* looked at: C:"):
        tw.choose_gclib(FX32, [dict(G32, exists=False)])


def test_the_candidates_are_the_hosts_expanded_paths():
    assert GCLIB[0] == "C:\\Program Files\\Gemalto\\Classic Client\\BIN\\gclib.dll"
    assert GCLIB[2] == "C:\\Program Files (x86)\\Gemalto\\Classic Client\\BIN\\gclib.dll"


# A host whose Program Files folders were moved (ProgramFilesDir / ProgramFilesDir (x86)): the 32-bit one's name has
# no "(x86)" in it, so only the host's own folder (or the variable the path was given with) tells the bitness.
MOVED = {"x64": "D:\\Apps64", "x86": "D:\\Apps32"}


def _moved(given, folder):
    return {"path": given.replace(given.split("\\")[0], folder), "given": given, "exists": False, "machine": None,
            "reason": None}


@pytest.mark.parametrize("fx,with_given,want", [
    (FX64, True, "D:\\Apps64\\Gemalto\\Classic Client\\BIN\\gclib.dll"),
    (FX32, True, "D:\\Apps32\\Gemalto\\Classic Client\\BIN\\gclib.dll"),
    (FX64, False, "D:\\Apps64\\Gemalto\\Classic Client\\BIN\\gclib.dll"),   # program_files alone decides
    (FX32, False, "D:\\Apps32\\Gemalto\\Classic Client\\BIN\\gclib.dll"),
])
def test_expected_gclib_on_a_host_with_a_relocated_x86_folder(fx, with_given, want):
    cands = [_moved(GIVEN[0], MOVED["x64"]), _moved(GIVEN[2], MOVED["x86"])]
    if not with_given:
        cands = [dict(c, given=None) for c in cands]
    got = tw.expected_gclib(fx, cands, MOVED)
    assert got == {"path": want, "arch": tw.pe_arch(fx["machine"]), "assumed": True}


def test_expected_gclib_falls_back_to_x86_in_the_path_only_when_nothing_else_is_known():
    cands = [dict(_moved(GIVEN[0], MOVED["x64"]), given=None), dict(_moved(GIVEN[2], MOVED["x86"]), given=None)]
    # the old rule alone ("(x86)" in the path) sees no 32-bit folder on this host: the host's folder is needed
    with pytest.raises(tw.WindowsPlanError, match="no gclib.dll candidate path for a 32-bit"):
        tw.expected_gclib(FX32, cands)
    assert tw.expected_gclib(FX32, [dict(G32, given=None)])["path"] == GCLIB[2]


def test_expected_gclib_from_the_given_variable_when_the_host_folder_is_unknown():
    cands = [_moved(GIVEN[2], "E:\\Legacy"), _moved(GIVEN[0], "E:\\Main")]
    assert tw.expected_gclib(FX32, cands)["path"] == "E:\\Legacy\\Gemalto\\Classic Client\\BIN\\gclib.dll"
    assert tw.expected_gclib(FX64, cands)["path"] == "E:\\Main\\Gemalto\\Classic Client\\BIN\\gclib.dll"


def test_expected_gclib_skips_a_path_whose_variable_the_host_does_not_define():
    # 32-bit Windows: no %ProgramFiles(x86)%, the probe leaves it in the path and says why
    undefined = {"path": GIVEN[2], "given": GIVEN[2], "exists": False, "machine": None, "version": None,
                 "reason": "environment variable %ProgramFiles(x86)% is not defined on this host"}
    main = {"path": GCLIB[0], "given": GIVEN[0], "exists": False, "machine": None, "version": None, "reason": None}
    pf = {"x64": None, "x86": None}  # what the probe answers on a 32-bit Windows: everything there is 32-bit
    assert tw.expected_gclib(FX32, [undefined, main], pf)["path"] == GCLIB[0]
    with pytest.raises(tw.WindowsPlanError) as e:
        tw.expected_gclib(FX64, [undefined, main], pf)
    assert "no gclib.dll candidate path for a 64-bit (x64) Firefox" in str(e.value)
    assert "%ProgramFiles(x86)%\\Gemalto\\Classic Client\\BIN\\gclib.dll (environment variable " \
           "%ProgramFiles(x86)% is not defined on this host)" in str(e.value)
    # a 64-bit host whose 32-bit folder is unknown keeps the 64-bit folder for a 64-bit Firefox
    assert tw.expected_gclib(FX64, [undefined, main], {"x64": "C:\\Program Files", "x86": None})["path"] == GCLIB[0]
    with pytest.raises(tw.WindowsPlanError, match=r"looked at: C:\\Program Files\\Gemalto.*, %ProgramFiles\(x86\)%"
                                                  r".*\(environment variable %ProgramFiles\(x86\)% is not defined"):
        tw.choose_gclib(FX64, [main, undefined])


def test_firefox_installs():
    got = tw.firefox_installs([dict(FX64, dir="C:\\Program Files\\Mozilla Firefox"),
                               {"path": "C:\\x\\firefox.exe", "exists": False}])
    assert got == [{"path": FX64["path"], "dir": "C:\\Program Files\\Mozilla Firefox", "arch": "x64",
                    "distribution": "C:\\Program Files\\Mozilla Firefox\\distribution",
                    "policies_json": "C:\\Program Files\\Mozilla Firefox\\distribution\\policies.json",
                    "version": "128.5.0", "kind": "machine"}]


# ------------------------------------------------------------------ Firefox GPO registry / policies.json
GPO = tw.FIREFOX_GPO_KEY
CERTS = ["C:\\ProgramData\\tokentrust\\certs\\A.cer", "C:\\ProgramData\\tokentrust\\certs\\B.cer"]
DLL = GCLIB[0]


@pytest.fixture
def desired():
    return tw.desired_fragment(CERTS, {"gem": DLL}, True)


@pytest.mark.parametrize("dump,prefer,target", [
    ({}, "auto", "json"),
    ({"": {"DisableTelemetry": 1}}, "auto", "json"),  # never into the key Group Policy owns
    ({"Certificates": {}}, "auto", "json"),
    ({}, "registry", "registry"),
    ({"": {"X": 1}}, "json", "json"),
])
def test_firefox_target(dump, prefer, target):
    assert tw.firefox_target(tw.gpo_present(dump), prefer) == target


def test_gpo_plan_fresh(desired):
    got = _keyed(tw.gpo_plan({}, desired))
    assert got == {
        (GPO + "\\Certificates\\Install", "1"): (CERTS[0], "string", "present"),
        (GPO + "\\Certificates\\Install", "2"): (CERTS[1], "string", "present"),
        (GPO + "\\Certificates", "ImportEnterpriseRoots"): (1, "dword", "present"),
        (GPO + "\\SecurityDevices\\Add", "gem"): (DLL, "string", "present"),
    }


def test_gpo_plan_merges_after_admin_entries_and_is_idempotent(desired):
    dump = {"": {"DisableAppUpdate": 1}, "Certificates\\Install": {"1": "C:\\corp\\root.cer", "2": CERTS[1]}}
    got = _keyed(tw.gpo_plan(dump, desired))
    assert got[(GPO + "\\Certificates\\Install", "3")] == (CERTS[0], "string", "present")
    assert (GPO + "\\Certificates\\Install", "1") not in got and (GPO + "\\Certificates\\Install", "2") not in got
    after = {"": dump[""], "Certificates\\Install": {"1": "C:\\corp\\root.cer", "2": CERTS[1], "3": CERTS[0]},
             "Certificates": {"ImportEnterpriseRoots": 1}, "SecurityDevices\\Add": {"gem": DLL}}
    assert tw.gpo_plan(after, desired) == []
    assert tw.gpo_conflicts(after, desired) == ["Certificates", "SecurityDevices"]


def test_gpo_plan_absent_removes_ours_and_renumbers(desired):
    dump = {"Certificates\\Install": {"1": CERTS[0], "2": "C:\\corp\\root.cer", "3": CERTS[1]},
            "Certificates": {"ImportEnterpriseRoots": 1}, "SecurityDevices\\Add": {"gem": "D:\\other.dll"}}
    got = _keyed(tw.gpo_plan(dump, desired, "absent"))
    assert got == {
        (GPO + "\\Certificates\\Install", "1"): ("C:\\corp\\root.cer", "string", "present"),
        (GPO + "\\Certificates\\Install", "2"): (None, "string", "absent"),
        (GPO + "\\Certificates\\Install", "3"): (None, "string", "absent"),
        (GPO + "\\Certificates", "ImportEnterpriseRoots"): (None, "dword", "absent"),
    }  # the gem device points elsewhere: not ours, kept


def test_gpo_plan_replaces_wrong_dll(desired):
    dump = {"SecurityDevices\\Add": {"gem": GCLIB[2]}}
    got = _keyed(tw.gpo_plan(dump, desired))
    assert got[(GPO + "\\SecurityDevices\\Add", "gem")] == (DLL, "string", "present")


def test_policies_json_new_file(desired):
    out = tw.policies_json("", desired)
    doc = json.loads(out["text"])
    assert out["changed"] and out["text"].endswith("\n")
    assert doc == {"policies": {"Certificates": {"Install": CERTS, "ImportEnterpriseRoots": True},
                                "SecurityDevices": {"Add": {"gem": DLL}}}}
    again = tw.policies_json(out["text"], desired)
    assert not again["changed"] and again["text"] == out["text"]


def test_policies_json_keeps_other_policies_and_absent(desired):
    existing = json.dumps({"policies": {"DisableAppUpdate": True, "Certificates": {"Install": ["C:\\corp.cer"]}}})
    out = tw.policies_json(existing, desired)
    doc = json.loads(out["text"])["policies"]
    assert doc["DisableAppUpdate"] is True and doc["Certificates"]["Install"] == ["C:\\corp.cer"] + CERTS
    gone = json.loads(tw.policies_json(out["text"], desired, "absent")["text"])["policies"]
    assert gone == {"DisableAppUpdate": True, "Certificates": {"Install": ["C:\\corp.cer"]}}


def test_policies_json_bad_file(desired):
    with pytest.raises(tw.WindowsPlanError, match="policies.json: is not valid JSON at line 1.*fix or remove"):
        tw.policies_json("{oops", desired, path="C:\\FF\\distribution\\policies.json")


def _probe(**kw):
    p = {"installs": [dict(FX64, dir="C:\\Program Files\\Mozilla Firefox")], "gclib": [G64, G32], "gpo": {},
         "policies_json": {}, "program_files": dict(PROGRAM_FILES)}
    p.update(kw)
    return p


def test_firefox_plan_json_then_idempotent():
    plan = tw.firefox_plan(_probe(), CERTS)
    assert plan["target"] == "json" and plan["registry"] == [] and plan["installs"][0]["gclib"] == G64["path"]
    j = plan["json"][0]
    assert j["path"] == "C:\\Program Files\\Mozilla Firefox\\distribution\\policies.json" and j["changed"]
    assert json.loads(j["text"])["policies"]["SecurityDevices"] == {"Add": {"gem": G64["path"]}}
    after = _probe(policies_json={j["path"]: j["text"]})
    assert not tw.firefox_plan(after, CERTS)["json"][0]["changed"]
    assert all(c["ok"] for c in tw.firefox_checks(plan, after))
    bad = tw.firefox_checks(plan, _probe(gclib=[dict(G64, exists=False), G32]))
    assert [c["ok"] for c in bad] == [False, False]


def test_firefox_plan_auto_stays_json_when_gpo_exists():
    plan = tw.firefox_plan(_probe(gpo={"": {"DisableAppUpdate": 1}}), CERTS)
    assert plan["target"] == "json" and plan["registry"] == [] and plan["conflicts"] == []


def test_firefox_plan_registry_when_asked():
    plan = tw.firefox_plan(_probe(gpo={"": {"DisableAppUpdate": 1}}), CERTS, prefer="registry")
    assert plan["target"] == "registry" and plan["json"] == []
    assert "each Group Policy refresh replaces those lists" in plan["warnings"][0]
    assert (GPO + "\\SecurityDevices\\Add", "gem") in _keyed(plan["registry"])
    done = {"": {"DisableAppUpdate": 1}, "Certificates\\Install": {"1": CERTS[0], "2": CERTS[1]},
            "Certificates": {"ImportEnterpriseRoots": 1}, "SecurityDevices\\Add": {"gem": G64["path"]}}
    checks = tw.firefox_checks(plan, _probe(gpo=done))
    assert all(c["ok"] for c in checks), checks
    assert not tw.firefox_checks(plan, _probe(gpo={"": {"DisableAppUpdate": 1}}))[0]["ok"]


def test_firefox_plan_json_warns_about_gpo_conflict():
    plan = tw.firefox_plan(_probe(gpo={"Certificates": {"ImportEnterpriseRoots": 0}}), CERTS, prefer="json")
    assert plan["conflicts"] == ["Certificates"]
    assert "Group Policy (HKLM) already sets the Firefox policy Certificates" in plan["warnings"][0]
    assert "Software\\Policies\\Mozilla\\Firefox\\Certificates\\Install\\1 = " + CERTS[0] in plan["warnings"][0]
    assert [v["policy"] for v in plan["gpo_values"]] == ["Certificates"] * 3  # Install 1, 2, ImportEnterpriseRoots
    checks = tw.firefox_checks(plan, _probe(policies_json={plan["json"][0]["path"]: plan["json"][0]["text"]}))
    assert [c["name"] for c in checks if not c["ok"]] == ["Firefox policy Certificates not overridden by Group Policy"]


def test_firefox_plan_reads_user_group_policy_too():
    plan = tw.firefox_plan(_probe(gpo_users={"S-1-5-21-1-2-3-1001": {"SecurityDevices\\Add": {"other": "x.dll"}}}),
                           CERTS)
    assert plan["conflicts"] == ["SecurityDevices"]
    assert "Group Policy (HKU\\S-1-5-21-1-2-3-1001)" in plan["warnings"][0]


@pytest.mark.parametrize("version,ok", [("128.5.0", True), ("115.0esr", True), ("114.0", True), ("102.12.0", True),
                                        ("113.0.2", False), ("102.11.0", False), ("91.13.0", False)])
def test_firefox_plan_security_devices_add_needs_114_or_esr_102_12(version, ok):
    probe = _probe(installs=[dict(FX64, dir="C:\\Program Files\\Mozilla Firefox", version=version)])
    if ok:
        assert tw.firefox_plan(probe, CERTS)["installs"][0]["gclib"] == G64["path"]
    else:
        with pytest.raises(tw.WindowsPlanError, match=f"is version {version}: SecurityDevices.Add needs Firefox 114"):
            tw.firefox_plan(probe, CERTS)
        assert tw.firefox_plan(probe, CERTS, security_device=False)["installs"][0]["gclib"] is None


def test_firefox_plan_two_bitnesses_in_registry_fails():
    probe = _probe(installs=[FX64, FX32], gpo={"": {"X": 1}})
    with pytest.raises(tw.WindowsPlanError, match="different bitness need different gclib.dll"):
        tw.firefox_plan(probe, CERTS, prefer="registry")
    plan = tw.firefox_plan(probe, CERTS, prefer="json")
    assert [i["gclib"] for i in plan["installs"]] == [G64["path"], G32["path"]]


def test_firefox_plan_missing_dll_check_mode_assumes_path():
    probe = _probe(gclib=[dict(c, exists=False) for c in (G64, G32)])
    with pytest.raises(tw.WindowsPlanError, match="no gclib.dll found"):
        tw.firefox_plan(probe, CERTS)
    plan = tw.firefox_plan(probe, CERTS, assume_missing_dll=True)
    assert plan["installs"][0]["gclib"] == G64["path"] and "assuming" in plan["warnings"][0]
    # a 32-bit Firefox on a host whose 32-bit Program Files is D:\Apps32: the host's folder, not "(x86)", decides
    moved = _probe(installs=[dict(FX32, path="D:\\Apps32\\Mozilla Firefox\\firefox.exe")],
                   gclib=[_moved(GIVEN[0], "D:\\Apps64"), _moved(GIVEN[2], "D:\\Apps32")], program_files=MOVED)
    plan = tw.firefox_plan(moved, CERTS, assume_missing_dll=True)
    assert plan["installs"][0]["gclib"] == "D:\\Apps32\\Gemalto\\Classic Client\\BIN\\gclib.dll"
    assert plan["json"][0]["path"] == "D:\\Apps32\\Mozilla Firefox\\distribution\\policies.json"


def test_firefox_plan_no_firefox():
    with pytest.raises(tw.WindowsPlanError, match="no Firefox install found"):
        tw.firefox_plan(_probe(installs=[]), CERTS)
    # the folders the host looked in are named as it expanded them
    gone = {"path": "D:\\Programmes\\Mozilla Firefox\\firefox.exe", "dir": "D:\\Programmes\\Mozilla Firefox",
            "given": "%ProgramFiles%\\Mozilla Firefox", "exists": False, "machine": None, "reason": None}
    with pytest.raises(tw.WindowsPlanError, match=r"looked in D:\\Programmes\\Mozilla Firefox, the Mozilla registry"):
        tw.firefox_plan(_probe(installs=[gone]), CERTS)


# ------------------------------------------------------------------ middleware
ENTRIES = [
    {"key": "{11111111-2222-3333-4444-555555555555}", "display_name": "GemSafe Standard Edition",
     "windows_installer": 1, "uninstall_string": "MsiExec.exe /X{1111...}", "view": 64},
    {"key": "GemSafeLib", "display_name": "  gemsafe   libraries ", "windows_installer": 0,
     "uninstall_string": "C:\\GemSafe\\uninst.exe", "view": 32},
    {"key": "{AAAAAAAA-2222-3333-4444-555555555555}", "display_name": "Classic Client 7.3.0", "windows_installer": 1,
     "view": 64},
    {"key": "{BBBBBBBB-2222-3333-4444-555555555555}", "display_name": "Classic Client 5.1.5", "windows_installer": 1,
     "view": 32},
    {"key": "Firefox", "display_name": "Mozilla Firefox", "uninstall_string": "x", "view": 64},
]


def test_legacy_match_defaults():
    got = tw.legacy_match(ENTRIES)
    assert [(g["product_id"], g["provider"], g["view"]) for g in got] == [
        ("{11111111-2222-3333-4444-555555555555}", "msi", 64),
        ("GemSafeLib", "registry", 32),
        ("{BBBBBBBB-2222-3333-4444-555555555555}", "msi", 32),
    ]


def test_legacy_match_glob_excludes_the_product_we_install():
    got = tw.legacy_match(ENTRIES, ["Classic Client *"], exclude_ids=["{aaaaaaaa-2222-3333-4444-555555555555}"])
    assert [g["display_name"] for g in got] == ["Classic Client 5.1.5"]


def test_legacy_match_without_uninstall_string():
    with pytest.raises(tw.WindowsPlanError, match="has no UninstallString: remove it by hand"):
        tw.legacy_match([{"key": "Old", "display_name": "GemSafe Libraries", "view": 32}])


def test_middleware_checks():
    pid = "{AAAAAAAA-2222-3333-4444-555555555555}"
    checks = tw.middleware_checks(ENTRIES, pid)
    assert [c["ok"] for c in checks] == [False, True]
    assert "GemSafe Standard Edition" in checks[0]["detail"] and "Classic Client 7.3.0 is in" in checks[1]["detail"]
    clean = [e for e in ENTRIES if e["key"] in (pid, "Firefox")]
    assert all(c["ok"] for c in tw.middleware_checks(clean, pid))
    assert not tw.middleware_checks(clean, pid, state="absent")[1]["ok"]


@pytest.mark.parametrize("src,kind", [
    ("https://repo.example/cc.msi", "url"), ("\\\\srv\\share\\cc.msi", "unc"),
    ("C:\\temp\\cc.msi", "remote"), ("files/cc.msi", "controller"),
])
def test_msi_source(src, kind):
    assert tw.msi_source(src) == kind


# ------------------------------------------------------------------ verification
def test_check_registry_and_report():
    entries = tw.ie_plan("disable_protected_mode", zones=[3], sites=["services.certeurope.fr"])
    assert [e["type"] for e in entries] == ["dword", "string", "dword"]
    observed = [{"exists": True, "raw_value": 1, "type": "REG_DWORD"},
                {"exists": True, "raw_value": "2", "type": "REG_SZ"},
                {"exists": True, "raw_value": 0, "type": "REG_DWORD"}]
    checks = tw.check_registry(entries, observed, "windows_ie_zones")
    assert [c["ok"] for c in checks] == [True, True, False]
    assert "expected 3" in checks[2]["detail"]
    # the right value with the wrong type is a failed check (Windows reads these as DWORDs only)
    as_sz = [dict(observed[0], raw_value="1", type="REG_SZ"), observed[1], dict(observed[2], raw_value=3)]
    checks = tw.check_registry(entries, as_sz, "windows_ie_zones")
    assert [c["ok"] for c in checks] == [False, True, True]
    assert "expected 1 (REG_DWORD)" in checks[0]["detail"]
    rep = tw.report("pc1", checks)
    assert rep["ok"] is False and rep["summary"] == "2/3 checks passed" and len(rep["failed"]) == 1
    with pytest.raises(tw.WindowsPlanError, match="3 planned registry entries but 1 observed"):
        tw.check_registry(entries, observed[:1])


def test_check_stores(ca_set):
    plan = tw.store_plan(ca_set)
    present = {"Root": [c["sha1"] for c in ca_set if c["windows_store"] == "Root"], "CA": []}
    checks = tw.check_stores(plan, present)
    assert sum(c["ok"] for c in checks) == 2 and len(checks) == 4


@pytest.mark.parametrize("base,names,want", [
    ("C:\\ProgramData\\tokentrust\\certs", "A.pem", "C:\\ProgramData\\tokentrust\\certs\\A.pem"),
    ("C:\\ProgramData\\tokentrust\\certs\\", ["A.pem", "B.cer"],
     ["C:\\ProgramData\\tokentrust\\certs\\A.pem", "C:\\ProgramData\\tokentrust\\certs\\B.cer"]),
    ("C:/certs", "A.pem", "C:\\certs\\A.pem"),
])
def test_win_path_joins_with_one_backslash(base, names, want):
    assert tw.win_path(base, names) == want


@pytest.mark.parametrize("base,name,msg", [("", "a", "empty folder"), ("C:\\x", "..\\evil", "is not a file name")])
def test_win_path_refuses(base, name, msg):
    with pytest.raises(tw.WindowsPlanError, match=msg):
        tw.win_path(base, name)


def test_uac_disable_for_install_with_nothing_pending_leaves_uac_alone():
    plan = tw.uac_plan("disable_for_install", "before", DEFAULT_UAC, install_pending=False)
    assert not plan["changed"] and plan["record_write"] is None and not plan["reboot"]
    assert plan["record_expected"] == "absent"
    assert "UAC left as it is" in plan["messages"][0]


def test_uac_nothing_pending_still_restores_a_leftover_record():
    rec = tw.uac_record_encode(DEFAULT_UAC, "disable_for_install")
    off = {"EnableLUA": 0, "ConsentPromptBehaviorAdmin": 0, "PromptOnSecureDesktop": 0}
    plan = tw.uac_plan("disable_for_install", "before", off, rec, install_pending=False)
    assert plan["restore"] and plan["record_delete"] and plan["reboot"]
    assert _set(plan)["EnableLUA"] == (1, "present")


PID = "{6B0B7AC4-1B7E-4E3A-9C5D-2F1B3C4D5E6F}"


@pytest.mark.parametrize("entries,kw,pending", [
    ([], {"msi_src": "", "product_id": ""}, False),                               # nothing configured
    ([], {"msi_src": "x.msi", "product_id": PID}, True),                          # not installed yet
    ([{"key": PID, "display_name": "Classic Client"}], {"msi_src": "x.msi", "product_id": PID}, False),
    ([{"key": PID, "display_name": "Classic Client"}], {"msi_src": "x.msi", "product_id": ""}, True),  # unknowable
    ([{"key": PID, "display_name": "Classic Client"},
      {"key": "G", "display_name": "GemSafe Libraries", "uninstall_string": "u.exe"}],
     {"msi_src": "x.msi", "product_id": PID}, True),                              # legacy left
    ([{"key": PID, "display_name": "Classic Client"}], {"product_id": PID, "state": "absent"}, True),
    ([], {"product_id": PID, "state": "absent"}, False),
])
def test_middleware_pending(entries, kw, pending):
    assert tw.middleware_pending(entries, **kw)["pending"] is pending


@pytest.mark.parametrize("src,transport,deleg,ok", [
    ("\\\\fs\\deploy\\cc.msi", "ntlm", False, False),
    ("\\\\fs\\deploy\\cc.msi", "kerberos", False, False),
    ("\\\\fs\\deploy\\cc.msi", "kerberos", True, True),
    ("\\\\fs\\deploy\\cc.msi", "credssp", False, True),
    ("https://deploy.example.lan/cc.msi", "ntlm", False, True),
    ("files/cc.msi", "ntlm", False, True),
])
def test_msi_second_hop(src, transport, deleg, ok):
    msg = tw.msi_second_hop(src, transport, deleg)
    assert (msg is None) is ok
    if not ok:
        assert "second hop" in msg and src in msg and "credssp" in msg


def test_private_chain():
    assert tw.private_chain("C:\\ProgramData\\tokentrust\\certs") == [
        "C:\\ProgramData\\tokentrust", "C:\\ProgramData\\tokentrust\\certs"]
    assert tw.private_chain("D:\\tt\\") == ["D:\\tt"]
    for bad in ("", "certs", "\\\\srv\\share\\x", "C:\\ProgramData\\..\\Windows"):
        with pytest.raises(tw.WindowsPlanError, match="absolute local Windows folder"):
            tw.private_chain(bad)


@pytest.mark.parametrize("folder,msg", [
    ({"exists": False}, None),
    ({"exists": True, "isdir": True, "owner_sid": "S-1-5-32-544", "owner_name": "BUILTIN\\Administrateurs"}, None),
    ({"exists": True, "isdir": True, "owner_sid": "S-1-5-18"}, None),
    ({"exists": True, "isdir": True, "owner_sid": "S-1-5-21-1-2-3-1001", "owner_name": "PC\\bob"},
     "owned by PC\\bob (S-1-5-21-1-2-3-1001), not by S-1-5-18 (the local system account) or S-1-5-32-544"),
    ({"exists": True, "isdir": True, "reparse": True, "owner_sid": "S-1-5-32-544"}, "link or junction"),
    ({"exists": True, "isdir": False, "owner_sid": "S-1-5-32-544"}, "not a folder"),
])
def test_private_dir_problems(folder, msg):
    got = tw.private_dir_problems([dict(folder, path="C:\\ProgramData\\tokentrust")])
    assert (got == []) if msg is None else (len(got) == 1 and msg in got[0] and "C:\\ProgramData\\tokentrust" in got[0])


def test_private_dir_owners_and_readers_must_be_sids():
    with pytest.raises(tw.WindowsPlanError, match="is not a SID: give accounts as SIDs"):
        tw.private_dir_problems([], owners=["BUILTIN\\Administrators"])
    with pytest.raises(tw.WindowsPlanError, match="windows_private_dir_readers: 'Users' is not a SID"):
        tw.private_aces(["Users"])
    assert tw.private_aces(["S-1-5-32-545"]) == [
        {"sid": "S-1-5-32-544", "rights": "FullControl"}, {"sid": "S-1-5-18", "rights": "FullControl"},
        {"sid": "S-1-5-32-545", "rights": "ReadAndExecute"}]


@pytest.mark.skipif(tw.load_psl() is None, reason="no Public Suffix List file on this machine (package publicsuffix)")
def test_zonemap_domain_with_the_system_public_suffix_list():
    assert tw.zonemap_domain("services.example.co.uk", psl=tw.load_psl()) == ("example.co.uk", "services")


# ------------------------------------------------------------------ token (MOCK probe outputs: no Windows here)
IDPRIME_ATR = "3BFF9600008131FE4380318065B0846566FB120177829000F7"   # an IDPrime-like ATR (made up)


def _token_probe(**kw):
    p = {"service": {"exists": True, "status": "Running", "start_type": "Manual"},
         "certprop": {"exists": True, "status": "Running", "start_type": "Automatic"}, "rds_session_host": False,
         "certprop_policy": {"enabled": None},
         "scdeviceenum": {"exists": True, "status": "Stopped", "start_type": "Manual"},
         "pnp_readers": [{"name": "Gemalto USB Smart Card Reader", "status": "OK"}],
         "scard": {"context_error": None, "list_error": None,
                   "readers": [{"name": "Gemalto USB Smart Card Reader 0", "present": True, "atr": IDPRIME_ATR}]},
         "registered_cards": [{"name": "IDPrime", "view": 64, "atr": IDPRIME_ATR[:30] + "00" * 10,
                               "atr_mask": "FF" * 15 + "00" * 10, "minidriver": "axaltocm.dll",
                               "ksp": "Microsoft Smart Card Key Storage Provider", "csp": None}]}
    p.update(kw)
    return p


def test_atr_matches_with_mask_like_windows():
    assert tw.atr_matches("3B0102", "3B01FF", "FFFF00")
    assert not tw.atr_matches("3B0102", "3B02FF", "FFFF00")
    assert not tw.atr_matches("3B0102", "3B01", "FFFF")          # length differs
    assert tw.atr_matches("3B0102", "3B0102") and not tw.atr_matches("3B0102", "3B0103")
    assert not tw.atr_matches("zz", "3B")


def test_token_checks_all_good():
    checks = tw.token_checks(_token_probe())
    assert [c["name"] for c in checks] == ["smart card service", "certificate propagation service",
                                           "certificate propagation policy", "smart card device enumeration service",
                                           "smart card reader", "token inserted",
                                           "minidriver for the token in Gemalto USB Smart Card Reader 0"]
    assert all(c["ok"] for c in checks) and "axaltocm.dll" in checks[-1]["detail"]


def test_token_checks_no_service_from_session():
    checks = tw.token_checks(_token_probe(scard={"context_error": "0x8010001D", "readers": []}))
    reader = next(c for c in checks if c["name"] == "smart card reader")
    assert not reader["ok"] and "0x8010001D (SCARD_E_NO_SERVICE)" in reader["detail"]
    assert "Plug and Play sees: Gemalto USB Smart Card Reader (OK)" in reader["detail"]
    assert not next(c for c in checks if c["name"] == "token inserted")["ok"]


def test_token_checks_unknown_card_has_no_minidriver():
    other = "3B8F8001804F0CA0000003060300030000000068"
    checks = tw.token_checks(_token_probe(scard={"readers": [{"name": "R0", "present": True, "atr": other}]}))
    assert checks[-1]["name"] == "minidriver for the token in R0" and not checks[-1]["ok"]
    assert f"no Calais\\SmartCards entry matches ATR {other}" in checks[-1]["detail"]


def test_token_checks_disabled_service_and_no_reader():
    checks = tw.token_checks(_token_probe(service={"exists": True, "status": "Stopped", "start_type": "Disabled"},
                                          pnp_readers=[], scard={"readers": []}))
    assert [c["ok"] for c in checks] == [False, True, True, True, False, False]
    assert "is the token plugged in?" in checks[4]["detail"]


def test_token_checks_certificate_propagation_stopped():
    checks = tw.token_checks(_token_probe(certprop={"exists": True, "status": "Stopped", "start_type": "Manual"}))
    bad = [c for c in checks if not c["ok"]]
    assert [c["name"] for c in bad] == ["certificate propagation service"]
    assert "Tout enregistrer" in bad[0]["detail"] and "set it to Automatic and start it" in bad[0]["detail"]


def test_the_services_are_checked_without_the_token_too():
    """windows_verify_token: false (key not plugged in): no reader/token checks, but CertPropSvc, its Group Policy
    switch and ScDeviceEnum are still checked (issue 28: CertPropSvc went unchecked)."""
    probe = _token_probe(certprop={"exists": True, "status": "Stopped", "start_type": "Manual"},
                         certprop_policy={"enabled": 0},
                         scdeviceenum={"exists": True, "status": "Stopped", "start_type": "Disabled"},
                         scard={"readers": []}, pnp_readers=[])
    checks = tw.token_checks(probe, "windows_verify", False)
    assert [(c["name"], c["ok"]) for c in checks] == [
        ("smart card service", True), ("certificate propagation service", False),
        ("certificate propagation policy", False), ("smart card device enumeration service", False)]
    assert "Turn on certificate propagation from smart card' is disabled" in checks[2]["detail"]
    assert "set it back to Manual" in checks[3]["detail"]
    assert tw.token_checks(_token_probe(certprop_policy={"enabled": 1}))[2]["ok"]


def test_token_checks_on_an_rds_session_host_say_not_visible_instead_of_failing():
    checks = tw.token_checks(_token_probe(rds_session_host=True, scard={"readers": []}, pnp_readers=[]))
    assert all(c["ok"] for c in checks)
    assert [c["name"] for c in checks] == ["smart card service", "certificate propagation service",
                                           "certificate propagation policy", "smart card device enumeration service",
                                           "smart card reader"]
    assert checks[-1]["detail"].startswith("not visible over WinRM on an RDS host")


@pytest.mark.parametrize("version", [None, "", "nightly"])
def test_an_unreadable_firefox_version_is_warned_about(version):
    probe = {"installs": [dict(FX64, dir="C:\\Program Files\\Mozilla Firefox", exists=True, version=version)],
             "gclib": [{"path": "C:\\Program Files\\Gemalto\\Classic Client\\BIN\\gclib.dll", "exists": True,
                        "machine": 0x8664}], "gpo": {}, "gpo_users": {}, "policies_json": {}}
    plan = tw.firefox_plan(probe, ["C:\\ProgramData\\tokentrust\\certs\\a.pem"])
    assert any(f"version {version!r} unreadable; SecurityDevices.Add needs Firefox 114" in w for w in plan["warnings"])


def test_ie_a_group_policy_zone_list_is_not_written_and_the_gpo_values_are_given():
    plan = tw.ie_plan("trusted_sites", sites=["services.certeurope.fr"], zonemap_gpo=True)
    assert not [e for e in plan if "ZoneMapKey" in e["path"] or e["name"] == "ListBox_Support_ZoneMapKey"]
    advice = tw.ie_gpo_advice(["services.certeurope.fr"], "https", ["C:\\ProgramData\\Microsoft\\Group Policy\\History"
                                                                      "\\{31B2F340}\\Machine\\Registry.pol"])
    assert "each refresh rewrites the whole list, so tokentrust writes nothing there" in advice
    assert advice.endswith("Site to Zone Assignment List): https://services.certeurope.fr = 2")
    assert tw.ie_gpo_advice(["services.certeurope.fr"], "https", []) == ""


def test_ie_checks_read_the_zone_windows_applies_and_esc():
    urls = tw.ie_urls(["services.certeurope.fr", "*.example.fr"], "*")
    assert urls == ["https://services.certeurope.fr", "https://example.fr"]
    probe = {"zones": {urls[0]: 2, urls[1]: 3}, "gpo_sources": ["X.pol"], "esc": {"admins": True, "users": False}}
    checks = tw.ie_checks(urls, probe, per_user=True, machine_policy=True)
    assert [(c["name"], c["ok"]) for c in checks] == [
        ("IE zone of https://services.certeurope.fr", True), ("IE zone of https://example.fr", False)]
    assert "zone 3 (Internet), not 2 (Trusted sites); a Group Policy owns" in checks[1]["detail"]
    # per-user only: MapUrlToZone over WinRM answers for the WinRM account, which that mode skips on purpose:
    # no zone check from it (it always failed), ESC still checked
    checks = tw.ie_checks(urls, probe, per_user=True, machine_policy=False)
    assert [(c["name"], c["ok"]) for c in checks] == [("IE Enhanced Security Configuration off", False)]
    assert "on for admins: it ignores per-user zone assignments" in checks[0]["detail"]


@pytest.mark.parametrize("kind", ["store", "user"])
def test_a_store_or_per_user_firefox_gets_the_gpo_registry(kind):
    store = ("C:\\Program Files\\WindowsApps\\Mozilla.Firefox_128.0.0.0_x64__n80bbvh6b1yt2"
             "\\VFS\\ProgramFiles\\Firefox Package Root")
    probe = {"installs": [dict(FX64, path=store + "\\firefox.exe", dir=store, exists=True, kind=kind)],
             "gclib": [{"path": "C:\\Program Files\\Gemalto\\Classic Client\\BIN\\gclib.dll", "exists": True,
                        "machine": 0x8664}], "gpo": {}, "gpo_users": {}, "policies_json": {}}
    plan = tw.firefox_plan(probe, ["C:\\ProgramData\\tokentrust\\certs\\a.pem"])
    assert plan["target"] == "registry" and plan["json"] == [] and plan["registry"]
    assert any(f"({kind}): a Microsoft Store or per-user install" in w for w in plan["warnings"])
    assert tw.firefox_plan(probe, ["C:\\x\\a.pem"], prefer="json")["target"] == "json"


# ------------------------------------------------------------------ another version of the middleware
_CC = [{"key": "{AAAAAAAA-1111-2222-3333-444444444444}", "display_name": "Classic Client", "display_version": "7.2.0",
        "windows_installer": 1, "view": 64},
       {"key": "{11111111-2222-3333-4444-555555555555}", "display_name": "Classic Client 5.1.5",
        "windows_installer": 1, "view": 32}]
_PID = "{6B0B7AC4-1B7E-4E3A-9C5D-2F1B3C4D5E6F}"


def test_another_version_under_another_product_code_stops_before_the_uac_window():
    with pytest.raises(tw.WindowsPlanError,
                       match=r"another version of the middleware is installed: Classic Client "
                             r"7\.2\.0 \{AAAAAAAA-1111-2222-3333-444444444444\} \(64-bit view\).*1638"):
        tw.middleware_pending(_CC, "C:\\cc.msi", _PID)
    # removal asked: pending, and it is removed first like a legacy product (the legacy 5.1.5 is not counted twice)
    got = tw.other_versions(_CC, _PID, mode="remove")
    assert [x["product_id"] for x in got] == ["{AAAAAAAA-1111-2222-3333-444444444444}"]
    pend = tw.middleware_pending(_CC, "C:\\cc.msi", _PID, other_version="remove")
    assert pend["pending"]
    assert "another version to remove first: {AAAAAAAA-1111-2222-3333-444444444444}" in pend["reasons"]
    # the product itself installed, or no ProductCode given: nothing to say
    assert tw.other_versions(_CC + [{"key": _PID, "display_name": "Classic Client", "view": 64}], _PID) == []
    assert tw.other_versions(_CC, "") == []
    with pytest.raises(tw.WindowsPlanError, match="token_middleware_other_version must be one of fail, remove"):
        tw.other_versions(_CC, _PID, mode="keep")
