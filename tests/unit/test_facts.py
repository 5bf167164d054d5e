"""module_utils/tokentrust_facts.py: the facts kept once (issue 12 item 6, issue 14), and no other copy of them.

Against upstream and against their users: tests/integration/test_facts_agree.py."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ansible.module_utils import tokentrust_facts as tl
from ansible.module_utils.tokentrust_policies import PolicyError, default_policies_path

ROOT = Path(__file__).resolve().parents[2]
MAC = "/Library/Frameworks/Pkcs11ClassicClient.framework/Versions/A/Pkcs11ClassicClient/libgclib.dylib"


def test_the_table():
    assert tl.default_library("Linux") == "/usr/lib/pkcs11/libgclib.so"
    assert tl.default_library("Darwin") == MAC
    assert tl.default_library("Windows") == "%ProgramFiles%\\Gemalto\\Classic Client\\BIN\\gclib.dll"
    # both Program Files trees, Gemalto and Thales (the Windows plan picks the DLL of Firefox's bitness among them),
    # named by the host's own variables (expanded on the host: Program Files may be on another drive)
    assert len(tl.library_candidates("Windows")) == 4
    assert {p.split("\\")[0] for p in tl.library_candidates("Windows")} == {"%ProgramFiles%", "%ProgramFiles(x86)%"}
    assert tl.firefox_install_dirs("Windows") == ["%ProgramFiles%\\Mozilla Firefox",
                                                  "%ProgramFiles(x86)%\\Mozilla Firefox"]


def test_no_windows_path_names_a_drive():
    """Every Windows path of the tables starts with an environment variable of the host (%ProgramFiles%,
    %ProgramFiles(x86)%, %SystemRoot%), never C:\\ (Program Files and Windows may be elsewhere)."""
    paths = tl.token_library_paths("Windows") + tl.firefox_install_dirs("Windows")
    assert paths and all(re.match(r"^%(ProgramFiles|ProgramFiles\(x86\)|SystemRoot)%\\", p) for p in paths), paths
    assert [p for p in tl.token_library_paths("Windows") if "System32" in p] == [
        "%SystemRoot%\\System32\\IDPrimePKCS11.dll", "%SystemRoot%\\System32\\eTPKCS11.dll"]
    assert tl.default_library("Plan9") is None and tl.library_candidates("Plan9") == []
    assert tl.default_library("FreeBSD", guess=True) == tl.default_library("Linux")


def test_every_module_uses_the_table():
    from ansible.module_utils.tokentrust_nss.token import default_module
    from ansible.module_utils.tokentrust_provision import default_library

    assert default_module("Darwin") == MAC and default_module("Linux") == tl.default_library("Linux")
    assert default_library() == tl.default_library()


def test_no_other_macos_path_anywhere():
    """Every macOS framework path in code, roles and docs is the table's default (there were two)."""
    found = {}
    for p in ROOT.rglob("*"):
        if (p.suffix not in (".py", ".yml", ".yaml", ".md") or {".venv", ".git", ".cache"} & set(p.parts)
                or p.relative_to(ROOT).parts[:2] == ("lab", "build") or p.name == "test_libraries.py"):
            # not the project's own files: the venv, git's, the VM image cache, the labs that runs make (make test's
            # other lane may be writing there)
            continue
        for m in re.finditer(r"/Library/Frameworks/Pkcs11ClassicClient\.framework[^\s`)'\"]*",
                             p.read_text(errors="replace")):
            found.setdefault(m.group(0).rstrip(".,"), []).append(str(p.relative_to(ROOT)))
    assert found and set(found) == {MAC}, found


@pytest.mark.parametrize("ca, stem", [
    ({"name": "Certeurope Root CA 2"}, "certeurope_root_ca_2"),
    ({"name": "AC CertEurope Classe 3 Plus V2"}, "ac_certeurope_classe_3_plus_v2"),
    ({"name": "  ../../etc/passwd "}, "etc_passwd"),
    ({"name": "Élan/CA"}, "lan_ca"),
    ({"name": "!!!"}, "ca"),
    ({"name": "X", "nickname": "Lab Root CA"}, "lab_root_ca"),
    ({"name": "Null Nickname", "nickname": None}, "null_nickname"),   # the report's Jinja copy said none.pem
    ({"name": "Empty Nickname", "nickname": ""}, "empty_nickname"),   # ... and ca.pem
])
def test_ca_file_names(ca, stem):
    [f] = tl.ca_files([dict(ca, pem="x")], "/d")
    assert f["path"] == f"/d/{stem}.pem" == "/d/" + tl.ca_file_name(tl.ca_entry_name(ca))


def test_which_cas_policies_install():
    cas = [{"name": "root", "nss_trust": "C,,"}, {"name": "none given"}, {"name": "null", "nss_trust": None},
           {"name": "both", "nss_trust": "CT,C,"}, {"name": "intermediate", "nss_trust": ",,"},
           {"name": "client only", "nss_trust": "T,,"}, {"name": "email only", "nss_trust": ",C,"}]
    assert [f["name"] for f in tl.ca_files(cas, "/d", only_tls_server_cas=True)] == ["root", "none given", "null",
                                                                                      "both"]
    assert len(tl.ca_files(cas, "/d")) == len(cas)


def test_policies_candidates_and_the_modules_default_path_agree():
    linux = tl.policies_candidates("Linux")
    assert linux[0] == "/etc/firefox/policies/policies.json" == default_policies_path("Linux", "system")
    assert linux[1:] == [d + "/distribution/policies.json" for d in tl.LINUX_INSTALL_DIRS]
    assert default_policies_path("Linux", "distribution", exists=lambda d: d == tl.LINUX_INSTALL_DIRS[2]) == linux[3]
    assert tl.policies_candidates("Linux", install_dir="/opt/fx") == [
        linux[0], "/opt/fx/distribution/policies.json"] == [default_policies_path("Linux", "system"),
                                                             default_policies_path("Linux", "distribution", "/opt/fx")]
    mac = "/Applications/Firefox.app/Contents/Resources/distribution/policies.json"
    assert tl.policies_candidates("Darwin") == [mac] == [default_policies_path("Darwin")]
    assert tl.policies_candidates("Linux", path="/x/p.json") == ["/x/p.json"]
    assert tl.policies_candidates("Windows") == tl.policies_candidates("SunOS") == []
    with pytest.raises(PolicyError, match="no default policies.json path for SunOS"):
        default_policies_path("SunOS")


def _yaml_values(node):
    """Every string value, documentation (argument_specs descriptions) left out: prose may name a fact."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k not in ("description", "short_description"):
                yield from _yaml_values(v)
    elif isinstance(node, list):
        for v in node:
            yield from _yaml_values(v)
    elif isinstance(node, str):
        yield node


def test_no_copy_of_the_facts_in_roles_or_inventories():
    """The values of the facts appear in no role, playbook or example inventory value (comments may name them), and
    no Jinja re-implements the CA file naming."""
    facts = set(tl.LINUX_INSTALL_DIRS) | set(tl.WINDOWS_FIREFOX_DIRS) | {tl.LINUX_SYSTEM_POLICIES, tl.MACOS_APP} \
        | {p for paths in tl.GEMALTO_CLASSIC_CLIENT.values() for p in paths}
    found = []
    files = [p for top in ("roles", "playbooks", "inventories/example") for p in (ROOT / top).rglob("*.yml")]
    assert len(files) > 50
    for p in files:
        text = p.read_text()
        for v in _yaml_values(yaml.safe_load(text)):
            found += [f"{p.relative_to(ROOT)}: {f}" for f in facts if f in v]
            if "distribution/policies.json" in v or "regex_replace('[^a-z0-9]" in v:
                found.append(f"{p.relative_to(ROOT)}: {v[:80]}")
    assert found == []


@pytest.mark.parametrize("playbook_dir, expected", [
    ("/srv/tokentrust/playbooks", "/srv/tokentrust"),                    # this repository (its playbooks/)
    ("/srv/tokentrust/playbooks/", "/srv/tokentrust"),
    ("/home/it/fleet", "/home/it/fleet"),                                  # a project's own site.yml at its top
    ("/home/it/fleet/playbooks", "/home/it/fleet"),
    ("/usr/share/ansible/collections/ansible_collections/tokentrust/workstation/playbooks", "/work/cwd"),
    ("/home/it/.ansible/collections/ansible_collections/tokentrust/workstation/playbooks", "/work/cwd"),
])
def test_project_dir_is_never_inside_an_installed_collection(playbook_dir, expected):
    assert tl.project_dir(playbook_dir, "/work/cwd") == expected


def test_the_nss_of_firefox_is_looked_for_where_firefox_is_installed():
    """The bindings load the NSS of the Firefox install when it ships one: the same install dirs as policies.json
    (before, their own copy lacked /opt/firefox-esr)."""
    from ansible.module_utils.tokentrust_nss._ffi import FIREFOX_NSS_DIRS

    assert FIREFOX_NSS_DIRS == tuple(tl.LINUX_INSTALL_DIRS) + (tl.MACOS_APP + "/Contents/MacOS",)


# ------------------------------------------------------------------ issue 18: the one token library variable
def test_token_library_table_covers_the_key_family():
    names = [name for name, _table in tl.TOKEN_LIBRARIES]
    assert names == ["Classic Client", "IDPrime", "SafeNet Authentication Client", "OpenSC"]
    for name, table in tl.TOKEN_LIBRARIES:
        assert set(table) >= {"Linux", "Darwin", "Windows"}, name
        assert all(table[s] for s in ("Linux", "Darwin", "Windows")), name
    # Classic Client first: with nothing installed the default stays the manual's middleware
    assert tl.token_library_paths("Linux")[:3] == tl.library_candidates("Linux")
    assert "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so" in tl.token_library_paths("Linux")
    assert tl.token_library_paths("FreeBSD", guess=True) == tl.token_library_paths("Linux")
    assert tl.token_library_paths("Plan9") == []
    # every path is cited: the comment above the table names each middleware and where its paths come from
    src = (ROOT / "module_utils" / "tokentrust_facts.py").read_text()
    block = src[src.index("# Every token library this key family"):src.index("TOKEN_LIBRARIES = (")]
    for needle in ("NixOS/nixpkgs", "open-eid/browser-token-signing", "OpenSC/OpenSC win32/OpenSC.wxs.in",
                   "opensc-pkcs11's file list", "Administrator Guide"):
        assert needle in block


@pytest.mark.parametrize("present,expected", [
    ([], "/usr/lib/pkcs11/libgclib.so"),  # nothing found: Classic Client's default, as before
    (["/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"], "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"),
    (["/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "/usr/lib/libeTPkcs11.so"], "/usr/lib/libeTPkcs11.so"),
    (["/usr/lib/libeTPkcs11.so", "/usr/lib/pkcs11/libIDPrimePKCS11.so"], "/usr/lib/pkcs11/libIDPrimePKCS11.so"),
    (["/usr/lib64/pkcs11/opensc-pkcs11.so", "/usr/lib/ClassicClient/libgclib.so"],
     "/usr/lib/ClassicClient/libgclib.so"),
])
def test_the_host_default_is_the_first_library_found(present, expected, monkeypatch):
    monkeypatch.setattr(tl.platform, "system", lambda: "Linux")
    assert tl.default_library(exists=present.__contains__) == expected
    found = tl.find_token_library(exists=present.__contains__)
    assert (found[1] if found else tl.default_library("Linux")) == expected
    # a controller naming the host's OS never probes its own disk: Classic Client's path
    assert tl.default_library("Linux", exists=present.__contains__) == "/usr/lib/pkcs11/libgclib.so"


def _commented_vars(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^# ([a-z_]+): (.*)$", line)
        if m:
            out[m.group(1)] = yaml.safe_load(m.group(2))
    return out


def test_example_inventory_lists_the_role_defaults():
    """inventories/example/group_vars/linux/tokentrust.yml: every public variable of firefox_nss, firefox_policies and
    token_verify, commented out with its real default (the text said token_verify 'did not exist yet')."""
    text = (ROOT / "inventories/example/group_vars/linux/tokentrust.yml").read_text()
    assert "did not exist yet" not in text
    listed = _commented_vars(text)
    assert "tokentrust_token_library" in listed
    for role in ("firefox_nss", "firefox_policies", "token_verify"):
        defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
        for name, value in defaults.items():
            assert name in listed, "%s (role %s) is not in the example" % (name, role)
            assert listed[name] == value, "%s: example %r, role default %r" % (name, listed[name], value)
    for name in ("firefox_nss_module_library", "firefox_policies_module_path", "token_verify_module"):
        assert listed[name] == "{{ tokentrust_token_library | default('') }}"
