"""Windows tests that check what a probe or a task MEANS, not only its shape (issue 28, item 2).

Each test here kills a mutation of tests/mutations/windows.py (run `python -m tests.mutations.windows`): the
registry TYPE of the UAC values, the exact ACL win_tokentrust_private_dir_create builds (the MOCK derives it from the
script's statements, tests/support/winsim/statements.py), a legacy product registered in the 32-bit view
only, and UAC values that were absent before the window and must be absent after it. The Windows host is a
MOCK (tests/support/winsim): no Windows runs here.
"""
import pytest

from tests.support.winsim import Host, ca_set, firefox_and_classic_client, new_state, probes

PRODUCT = "{6B0B7AC4-1B7E-4E3A-9C5D-2F1B3C4D5E6F}"
LEGACY = "{11111111-2222-3333-4444-555555555555}"
UAC_KEY = "hklm:\\software\\microsoft\\windows\\currentversion\\policies\\system"
USERS, ADMINS, SYSTEM = "S-1-5-32-545", "S-1-5-32-544", "S-1-5-18"
INHERIT = "ContainerInherit, ObjectInherit"


@pytest.fixture(scope="module")
def cas():
    return ca_set()


def _host(tmp_path, legacy=None, uac=None):
    state = new_state(uninstall_entries=list(legacy or []),
                      services={"CertPropSvc": {"start_mode": "auto", "state": "started"}})
    state["powershell"]["firefox_probe.ps1"] = probes.firefox_answer(gpo=False)
    firefox_and_classic_client(state)  # 64-bit Firefox and gclib.dll in C:\Program Files
    state["powershell"]["token_probe.ps1"] = probes.token_answer()
    if uac is not None:  # a host where some UAC values were never written (Windows then uses its defaults)
        state["registry"][UAC_KEY] = uac
    return Host(tmp_path, state)


def _msi_vars(tmp_path, cas, **kw):
    msi = tmp_path / "ClassicClient-x64.msi"
    msi.write_bytes(b"msi")
    return dict({"tokentrust_ca_set": cas, "token_middleware_msi_src": str(msi),
                 "token_middleware_msi_checksum": "00" * 32, "token_middleware_product_id": PRODUCT}, **kw)


def test_uac_values_are_written_and_checked_as_dwords(tmp_path):
    """EnableLUA written as REG_SZ "0" is not a DWORD 0: Windows ignores it. The values must be DWORDs on the
    host, and the role's own check must fail on a REG_SZ with the right digits."""
    host = _host(tmp_path)
    p, facts = host.run(["windows_uac"], {"windows_uac_mode": "disabled", "windows_uac_phase": "before",
                                          "windows_uac_verify": True}, facts=["windows_uac_checks"])
    assert p.returncode == 0, p.stdout[-3000:]
    values = host.load()["registry"][UAC_KEY]
    assert {k: (v["type"], v["data"]) for k, v in values.items()} == {
        "EnableLUA": ("REG_DWORD", 0), "ConsentPromptBehaviorAdmin": ("REG_DWORD", 0),
        "PromptOnSecureDesktop": ("REG_DWORD", 0)}
    # the verify step on a host where the digits are right but the type is not
    s = host.load()
    s["registry"][UAC_KEY]["EnableLUA"] = {"type": "REG_SZ", "data": "0"}
    host.save(s)
    p2, facts2 = host.run([("windows_uac", "verify.yml")], {"windows_uac_mode": "disabled",
                                                            "windows_uac_phase": "before"},
                          facts=["windows_uac_checks"])
    assert p2.returncode == 0, p2.stdout[-3000:]
    bad = [c for c in facts2["windows_uac_checks"] if not c["ok"]]
    assert [c["name"] for c in bad] == [
        "HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Policies\\System\\EnableLUA"], bad
    assert "expected 0 (REG_DWORD)" in bad[0]["detail"]


def test_uac_restore_deletes_the_values_that_were_absent(tmp_path, cas):
    """A host that never had ConsentPromptBehaviorAdmin / PromptOnSecureDesktop (Windows' defaults apply):
    after the UAC window they are absent again, not 0 (0 = elevate without prompting)."""
    host = _host(tmp_path, legacy=[{"key": LEGACY, "display_name": "GemSafe Standard Edition",
                                    "windows_installer": 1, "view": 64}],
                 uac={"EnableLUA": {"type": "REG_DWORD", "data": 1}})
    p = host.playbook("playbooks/windows.yml", _msi_vars(tmp_path, cas, windows_uac_mode="disable_for_install"))
    assert p.returncode == 0, p.stdout[-4000:]
    s = host.load()
    assert s["registry"][UAC_KEY] == {"EnableLUA": {"type": "REG_DWORD", "data": 1}}
    assert s["reboots"] == 2
    assert "Original" not in s["registry"].get("hklm:\\software\\tokentrust\\uac", {})


def test_private_dir_create_makes_the_exact_protected_acl(tmp_path):
    """The folder is made with its final ACL: protected (nothing from ProgramData), exactly Administrators and
    SYSTEM full control and the readers READ, owner Administrators. The MOCK builds the ACL from
    win_tokentrust_private_dir_create.ps1's own statements, so a script that keeps inheritance or gives more rights gets
    that ACL here."""
    host = Host(tmp_path)
    path = "C:\\ProgramData\\tokentrust"
    task = {"name": "create", "win_tokentrust_private_dir_create": {"path": path, "read_sids": [USERS]}}
    p = host.play([task])
    assert p.returncode == 0, p.stdout[-3000:]
    d = host.load()["dirs"][path.casefold()]
    assert d["owner"] == ADMINS and d["inherit"] is False
    assert sorted((e["sid"], e["rights"], e["type"], e["inherit"], e["inherited"]) for e in d["acl"]) == sorted([
        (ADMINS, "FullControl", "allow", INHERIT, False), (SYSTEM, "FullControl", "allow", INHERIT, False),
        (USERS, "ReadAndExecute", "allow", INHERIT, False)])


def test_a_legacy_product_in_the_32_bit_view_only_is_removed(tmp_path, cas):
    """GemSafe registered by a 32-bit installer sits under WOW6432Node only: the probe must open both views."""
    host = _host(tmp_path, legacy=[{"key": LEGACY, "display_name": "GemSafe Libraries", "windows_installer": 1,
                                    "view": 32}])
    p = host.role("token_middleware", extra_vars=_msi_vars(tmp_path, cas))
    assert p.returncode == 0, p.stdout[-3000:]
    removed = [c["args"]["product_id"] for c in host.calls("win_package") if c["args"].get("state") == "absent"]
    assert removed == [LEGACY]
    assert [e["key"] for e in host.load()["uninstall_entries"]] == [PRODUCT]
