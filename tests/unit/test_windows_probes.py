"""The PowerShell probes we ship, checked by a real PowerShell grammar (tree-sitter-powershell).

The probes are modules of ours (library/win_tokentrust_<probe>.ps1, Ansible.Basic, signable for App Control)
but for language_mode.ps1, the windows_preflight body that must run unsigned. From each probe's syntax tree
(tests/support/winsim/psshape.py) we derive the keys and nesting of its result (`$module.Result.<key>`, or
`$Ansible.Result`), and check them against the tasks that run it (a module's options; a win_powershell body's
`depth`), the keys the roles' YAML and our module_utils read, and the MOCK host's answer
(tests/support/winsim/probes.py).
Mutations prove the check: a probe body that is not PowerShell, or a result deeper than its task's
depth, makes these tests red.
"""
import glob
import os
import re
import shutil

import pytest
import yaml

from plugin_utils import tokentrust_windows as tw
from tests.support.winsim import ROOT, module_source, probes, psshape

SHIPPED = sorted(probes.shipped())


def test_the_shipped_probes_agree_with_their_tasks_the_roles_and_the_mock():
    assert len(SHIPPED) >= 7, SHIPPED
    assert probes.problems() == []


@pytest.mark.parametrize("name,depth,path", [
    ("token_probe.ps1", 3, ("scard", "readers", "[]", "atr")),
    ("firefox_probe.ps1", 4, ("gpo_users", "*", "*", "*")),
    ("user_profiles.ps1", 2, ("profiles", "[]", "sid")),
    ("uninstall_entries.ps1", 3, ("entries", "[]", "quiet_uninstall_string")),
    ("private_dir_probe.ps1", 2, ("folders", "[]", "owner_sid")),
    ("private_dir_create.ps1", 0, ("created",)),
    ("ie_zones_probe.ps1", 1, ("zones", "*")),
])
def test_the_shape_comes_from_the_syntax_tree(name, depth, path):
    shape = psshape.result_shape(probes.read(probes.shipped()[name]))
    assert psshape.depth_needed(shape) == depth
    assert path in psshape.paths(shape)
    runs = [t for t in probes.tasks() if t["script"] == name]
    # a module of ours: Ansible.Basic's ExitJson returns the result whole, whatever its depth
    assert runs and all(t["module"] and t["depth"] is None for t in runs), runs


def test_convert_output_is_win_powershells_rule():
    """The rule psshape.convert_output copies, as the installed ansible.windows states it."""
    src = module_source("win_powershell")
    assert "depth = @{ type = 'int'; default = 2 }" in src
    assert "$childDepth = $Depth - 1" in src
    rule = src[src.index("elseif ($Depth -lt 0) {\n            # This must occur after"):]
    assert "[string]$InputObject" in rule.split("elseif", 2)[1]
    value = {"a": {"b": [{"c": 1}], "n": 2, "s": "x"}}
    assert psshape.convert_output(value, 2) == {"a": {"b": ["System.Collections.Hashtable"], "n": 2, "s": "x"}}
    assert psshape.convert_output(value, 3) == value
    assert psshape.convert_output({"l": [[1, 2]]}, 1) == {"l": ["1 2"]}


def test_the_default_depth_breaks_the_token_checks_when_a_reader_is_present():
    """Why the probe is a module: with win_powershell's default depth 2, each reader arrives as a string;
    Ansible.Basic returns the module's result whole."""
    answer = probes.token_answer(present=True)
    flat = psshape.convert_output(answer, 2)
    assert flat["scard"]["readers"] == ["System.Collections.Hashtable"]
    with pytest.raises(AttributeError, match="'str' object has no attribute 'get'"):
        tw.token_checks(flat)
    task = next(t for t in probes.tasks() if t["script"] == "token_probe.ps1")
    assert task["module"] and task["depth"] is None
    checks = tw.token_checks(answer)
    assert [c["ok"] for c in checks] == [True] * 7
    # and the checker still applies the depth rule to a win_powershell body (the preflight's)
    assert any("windows_preflight/tasks/main.yml: task" in p and "has no `depth`" in p
               for p in _problems_with(lambda roles: _set_depth(roles, "language_mode.ps1", None)))


def test_a_task_option_the_module_does_not_declare_is_red():
    def mutate(roles):
        path = os.path.join(roles, "windows_private_dir", "tasks", "main.yml")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace("    paths: \"{{", "    folders: \"{{"))

    got = _problems_with(mutate)
    assert any("option folders is not in the argument spec of win_tokentrust_private_dir_probe" in p for p in got), got


def _copy_roles(tmp):
    """A copy of roles/ and, next to it, of library/ (our modules): mutations touch the copy only."""
    dst = os.path.join(str(tmp), "roles")
    shutil.copytree(probes.ROLES, dst)
    shutil.copytree(probes.library_of(probes.ROLES), probes.library_of(dst))
    return dst


def _problems_with(mutate, tmp=None):
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as d:
        roles = _copy_roles(d)
        mutate(roles)
        return probes.problems(roles)


def _set_depth(roles, script, depth):
    for path in glob.glob(os.path.join(roles, "*", "tasks", "*.yml")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if f"'{script}'" in text:
            text = re.sub(r"\n    depth: \d+", "" if depth is None else f"\n    depth: {depth}", text)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)


NOT_POWERSHELL = {
    "python-like": 'result = {"readers": [r for r in readers if r.present}\nreturn result ]\n',
    "prose": "This file used to be a probe.\nIt now says nothing a Windows host could run.\n",
}


@pytest.mark.parametrize("kind", sorted(NOT_POWERSHELL))
@pytest.mark.parametrize("name", SHIPPED)
def test_mutation_a_probe_body_that_is_not_powershell_is_red(tmp_path, name, kind):
    def mutate(roles):
        path = probes.shipped(roles)[name]
        first = probes.read(path).splitlines()[0]  # the header comment stays: a marker match would not see it
        with open(path, "w", encoding="utf-8") as f:
            f.write(first + "\n" + NOT_POWERSHELL[kind])

    got = _problems_with(mutate)
    assert [p for p in got if p.startswith(name)], got
    assert any("not valid PowerShell" in p or "never sets $Ansible.Result" in p for p in got), got


@pytest.mark.parametrize("name", SHIPPED)
def test_mutation_output_deeper_than_the_tasks_depth_is_red(tmp_path, name):
    """A key the probe emits and the MOCK does not answer is red; for a win_powershell body, a result deeper than
    its task's depth too (a module's result is not flattened: no depth to exceed)."""
    module = psshape.is_module(probes.read(probes.shipped()[name]))

    def mutate(roles):
        path = probes.shipped(roles)[name]
        text = probes.read(path)
        deeper = "deeper = @{ a = @{ b = @(@{ c = @{ d = 1 } }) } }"
        if module:
            assert text.count("$module.ExitJson()") == 1
            text = text.replace("$module.ExitJson()", f"$module.Result.{deeper}\n$module.ExitJson()")
        else:
            assert text.count("$Ansible.Result = @{") == 1
            text = text.replace("$Ansible.Result = @{", f"$Ansible.Result = @{{ {deeper}\n   ")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    got = _problems_with(mutate)
    if not module:
        assert any(f"{name} emits containers" in p and "would turn them into strings" in p for p in got), got
    assert any(p.startswith(f"{name}: MOCK answer: result.deeper") for p in got), got


def test_mutation_a_key_the_python_reads_that_the_probe_no_longer_emits_is_red():
    def mutate(roles):
        path = probes.shipped(roles)["token_probe.ps1"]
        text = probes.read(path).replace("present = [bool]", "inserted = [bool]")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    got = _problems_with(mutate)
    assert "token_probe.ps1: module_utils reads result.scard.readers.[].present, which the probe does not emit" in got


# ------------------------------------------------------------------ well-known accounts by SID only
_NAMES = re.compile(r"(?i)\b(BUILTIN|NT AUTHORITY|AUTORITE NT)\\|\bCREATOR OWNER\b|\bCREATEUR PROPRIETAIRE\b"
                    r"|\bEveryone\b|\bTout le monde\b"
                    r"|(?-i:[\"'](Administrators|Administrateurs|SYSTEM|Syst[eè]me|Users|Utilisateurs)[\"'])")


def _our_files():
    pats = ["roles/**/*.yml", "roles/**/*.ps1", "library/*.ps1", "module_utils/*.py", "filter_plugins/*.py",
            "playbooks/*.yml", "inventories/example/**/*.yml"]
    for pat in pats:
        yield from sorted(glob.glob(os.path.join(ROOT, pat), recursive=True))


def test_no_well_known_account_is_named_in_roles_defaults_or_module_utils():
    hits = []
    for path in _our_files():
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if _NAMES.search(line):
                    hits.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert hits == []


def _values(tasks, module, key):
    for t in tasks or []:
        if isinstance(t, dict):
            for k in ("block", "rescue", "always"):
                yield from _values(t.get(k), module, key)
            if isinstance(t.get(module), dict) and key in t[module]:
                yield t[module][key], t.get("loop")


def test_acl_and_owner_users_are_sids():
    sid = re.compile(r"^S-1-\d+(-\d+)+$")
    seen = 0
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "tasks", "*.yml")):
        with open(path, encoding="utf-8") as f:
            tasks = yaml.safe_load(f)
        for module in ("ansible.windows.win_acl", "ansible.windows.win_owner"):
            for value, _loop in _values(tasks, module, "user"):
                seen += 1
                assert sid.match(value) or value == "{{ item.sid }}", (path, value)
    # win_owner of windows_private_dir; the ACL itself is set by win_tokentrust_private_dir_create, by SID
    assert seen == 1
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "defaults", "main.yml")):
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f) or {}
        for k, v in d.items():
            if k.endswith(("_owners", "_readers")):
                assert all(sid.match(x) for x in v), (path, k, v)


def test_the_mock_resolves_names_as_ansible_core_does():
    """ansible-core's Ansible.ModuleUtils.SID: a SID string is taken as is, a name is translated with the
    host's language (NTAccount.Translate), a name it cannot translate fails the module with this message."""
    import ansible  # noqa: PLC0415

    from tests.support.winsim import new_state  # noqa: PLC0415
    from tests.support.winsim.action_plugins.normal import convert_to_sid  # noqa: PLC0415

    src_path = os.path.join(os.path.dirname(ansible.__file__), "module_utils", "powershell",
                            "Ansible.ModuleUtils.SID.psm1")
    with open(src_path, encoding="utf-8") as f:
        src = f.read()
    assert "New-Object -TypeName System.Security.Principal.SecurityIdentifier -ArgumentList $account_name" in src
    assert "$account.Translate([System.Security.Principal.SecurityIdentifier])" in src
    assert '"account_name $account_name is not a valid account, cannot get SID: $($_.Exception.Message)"' in src
    state = new_state()
    assert convert_to_sid(state, "S-1-5-32-544") == "S-1-5-32-544"
    assert convert_to_sid(state, "BUILTIN\\Administrateurs") == "S-1-5-32-544"
    assert convert_to_sid(state, "AUTORITE NT\\Système") == "S-1-5-18"
    assert convert_to_sid(state, ".\\mallory") == "S-1-5-21-1-2-3-1001"
    for english in ("BUILTIN\\Administrators", "NT AUTHORITY\\SYSTEM", "Users"):
        msg = f"account_name {english} is not a valid account, cannot get SID"
        with pytest.raises(LookupError, match=re.escape(msg)):
            convert_to_sid(state, english)


def test_every_emitted_leaf_is_a_string_number_or_bool():
    """A .NET value emitted as is does not reach Ansible as the string the Python compares: a service's
    Status is a ServiceControllerStatus enum (ConvertTo-Json gives 4, Ansible's serializer an object), so
    `status == 'Running'` would never hold. Every leaf is cast explicitly (issue 28: the CertPropSvc
    mutation)."""
    loose = {name: psshape.loose_leaves(psshape.result_shape(probes.read(path)))
             for name, path in probes.shipped().items()}
    assert {n: v for n, v in loose.items() if v} == {}
    # the rule itself: an enum member emitted raw is caught, its string form is not
    raw = psshape.result_shape('$cp = Get-Service -Name CertPropSvc\n$Ansible.Result = @{ status = $cp.Status }')
    cast = psshape.result_shape('$cp = Get-Service -Name CertPropSvc\n$Ansible.Result = @{ status = "$($cp.Status)" }')
    assert psshape.loose_leaves(raw) == [("status",)] and psshape.loose_leaves(cast) == []


def _hash_entries(text, key):
    """Every literal value given to `key` in the probe's hashtables (tree-sitter, not a regex on the text)."""
    out = []
    for n in psshape._descendants(psshape.parse(text).root_node):  # noqa: SLF001
        if n.type == "hash_entry":
            kids = psshape._named(n)  # noqa: SLF001
            if psshape._unwrap(kids[0]).text.decode().strip("'\"") == key:  # noqa: SLF001
                out.append((n, psshape._unwrap(kids[-1]).text.decode()))  # noqa: SLF001
    return out


# Microsoft's documented values:
# - winscard.h, SCARD_READERSTATE dwEventState (learn.microsoft.com/windows/win32/api/winscard/
#   ns-winscard-scard_readerstatea; [MS-RDPESC] 2.2.7 "Reader State" gives the numbers):
#   SCARD_STATE_EMPTY 0x0010, SCARD_STATE_PRESENT 0x0020, SCARD_STATE_MUTE 0x0200.
# - SCardEstablishContext dwScope: SCARD_SCOPE_USER 0, SCARD_SCOPE_SYSTEM 2 (winscard.h).
# - IE Enhanced Security Configuration: Active Setup components under
#   HKLM\SOFTWARE\Microsoft\Active Setup\Installed Components, {A509B1A7-37EF-4b3f-8CFC-4F3A74704073} for
#   Administrators and {A509B1A8-37EF-4b3f-8CFC-4F3A74704073} for Users, value IsInstalled (1 = on); the
#   Server Manager "IE ESC" switch writes these (technet.microsoft.com/library/dd883248 describes the feature;
#   the GUIDs as Carbon's Disable-IEEnhancedSecurityConfiguration and Microsoft's own deployment scripts use them).
SCARD_STATE_PRESENT = 0x0020
SCARD_SCOPE_SYSTEM = 2
ESC_ADMINS = "{A509B1A7-37EF-4b3f-8CFC-4F3A74704073}"
ESC_USERS = "{A509B1A8-37EF-4b3f-8CFC-4F3A74704073}"


def test_probe_constants_are_microsofts_documented_values():
    token = probes.read(probes.shipped()["token_probe.ps1"])
    present = [v for _, v in _hash_entries(token, "present")]
    assert present, "token_probe.ps1 emits no `present`"
    for v in present:
        bits = [int(x, 16) for x in re.findall(r"-band\s+(0x[0-9A-Fa-f]+)", v)]
        assert bits == [SCARD_STATE_PRESENT], f"present = {v}: SCARD_STATE_PRESENT is 0x20 (winscard.h)"
    scope = re.search(r"SCardEstablishContext\((\d+),", token)
    assert scope and int(scope.group(1)) == SCARD_SCOPE_SYSTEM
    ie = probes.read(probes.shipped()["ie_zones_probe.ps1"])
    pairs = {}
    for n, _ in _hash_entries(ie, "who"):
        h = psshape._enclosing_hash(n)  # noqa: SLF001
        entries = {}
        for e in psshape._descendants(h):  # noqa: SLF001
            if e.type == "hash_entry" and psshape._enclosing_hash(e) == h:  # noqa: SLF001
                kids = psshape._named(e)  # noqa: SLF001
                entries[psshape._unwrap(kids[0]).text.decode()] = psshape._unwrap(kids[-1]).text.decode().strip("'\"")  # noqa: SLF001
        pairs[entries["who"]] = entries["key"]
    assert {k: v.upper() for k, v in pairs.items()} == {"admins": ESC_ADMINS.upper(), "users": ESC_USERS.upper()}


def _documentation(path):
    import ast  # noqa: PLC0415

    for node in ast.parse(open(path, encoding="utf-8").read()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "DOCUMENTATION":
            return yaml.safe_load(node.value.value)
    raise AssertionError(f"{path}: no DOCUMENTATION")


_PS_DEFAULTS = {"@()": [], "$true": True, "$false": False, None: None}


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "language_mode.ps1"])
def test_each_module_documents_its_argument_spec_and_supports_check_mode(name):
    """The documentation sidecar (library/win_tokentrust_<probe>.py, what ansible-doc renders) says what the
    module's `$spec` declares: same options, types, elements, required and defaults."""
    path = probes.shipped()[name]
    text = probes.read(path)
    assert "#AnsibleRequires -CSharpUtil Ansible.Basic" in text
    assert "[Ansible.Basic.AnsibleModule]::Create($args, $spec)" in text and "$module.ExitJson()" in text
    assert re.search(r"(?m)^\s+supports_check_mode = \$true$", text)
    doc = _documentation(path[:-4] + ".py")
    assert doc["module"] == os.path.basename(path)[:-4]
    spec = psshape.module_options(text)
    documented = doc.get("options") or {}
    assert sorted(documented) == sorted(spec)
    for opt, s in spec.items():
        d = documented[opt]
        assert d.get("type", "str") == s["type"], opt
        assert d.get("elements", "") == s["elements"], opt
        assert bool(d.get("required")) == s["required"], opt
        assert d.get("default") == _PS_DEFAULTS[s["default"]], opt
    # every option reaches the probe's statements through a `$Var = $module.Params.option` binding
    assert sorted(psshape.module_bindings(text)) == sorted(spec)
