"""The PowerShell probes we ship (our modules library/win_tokentrust_<probe>.ps1, and the win_powershell body
roles/windows_preflight/files/language_mode.ps1), the tasks that run them, and what the roles read of them.

`problems(roles)` is the check tests/unit/test_windows_probes.py runs (and runs again on mutated copies):
each probe parses with tree-sitter-powershell; for a win_powershell body, the shape of its `$Ansible.Result`
(psshape) fits in the `depth` of every task that runs it and the task's `parameters` are declared in its param()
block; for a module, the task's options are in its `$spec`; every key a role's YAML reads
(`<register>.<key>` of a module, `<register>.result.<key>` of a body), and every key our Python reads of it
(plugin_utils, run on the MOCK host's answer, after the task's depth for a body), is one the probe emits; the MOCK's
answer has exactly the keys the probe emits.
"""
from __future__ import annotations

import copy
import glob
import os
import re

import yaml
from ansible.module_utils.tokentrust_facts import firefox_install_dirs, library_candidates

from plugin_utils import tokentrust_windows as tw
from tests.support.winsim import firefox_and_classic_client, new_state, psshape

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLES = os.path.join(ROOT, "roles")
_LOOKUP = re.compile(r"lookup\(\s*'ansible\.builtin\.file'\s*,\s*'([^']+\.ps1)'\s*\)")

TOKEN_ATR = "3BFF9600008131FE4380318065B0846566FB120177829000F7"   # an IDPrime-like ATR (made up)


OURS = "win_tokentrust_"  # our PowerShell modules: library/win_tokentrust_<probe>.ps1


def library_of(roles):
    """The library/ next to `roles` (the repository's, or a test's copy of both)."""
    return os.path.join(os.path.dirname(os.path.abspath(roles)), "library")


def shipped(roles=ROLES):
    """{probe name: path}: every .ps1 under roles/*/files (win_powershell bodies) and every module of ours in the
    library/ next to the roles (library/win_tokentrust_<probe>.ps1, named <probe>.ps1)."""
    out = {os.path.basename(p): p for p in sorted(glob.glob(os.path.join(roles, "*", "files", "*.ps1")))}
    for p in sorted(glob.glob(os.path.join(library_of(roles), OURS + "*.ps1"))):
        out[os.path.basename(p)[len(OURS):]] = p
    return out


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\n")  # as lookup('ansible.builtin.file') gives it


def tasks(roles=ROLES):
    """[{file, name, script, depth, parameters, register, module}] of every win_powershell task of the roles and
    every task calling one of our PowerShell modules (module true, depth None: Ansible.Basic flattens nothing)."""
    out = []

    def walk(items, path):
        for t in items or []:
            if not isinstance(t, dict):
                continue
            for key in ("block", "rescue", "always"):
                walk(t.get(key), path)
            args = t.get("ansible.windows.win_powershell")
            if isinstance(args, dict):
                m = _LOOKUP.search(str(args.get("script", "")))
                out.append({"file": os.path.relpath(path, roles), "name": t.get("name"),
                            "script": m.group(1) if m else None, "depth": args.get("depth"),
                            "parameters": args.get("parameters") or {}, "register": t.get("register"),
                            "module": False})
            for key, margs in t.items():
                if key.split(".")[-1].startswith(OURS):
                    out.append({"file": os.path.relpath(path, roles), "name": t.get("name"),
                                "script": key.split(".")[-1][len(OURS):] + ".ps1", "depth": None,
                                "parameters": margs or {}, "register": t.get("register"), "module": True})

    for path in sorted(glob.glob(os.path.join(roles, "*", "tasks", "*.yml"))):
        with open(path, encoding="utf-8") as f:
            walk(yaml.safe_load(f), path)
    return out


def yaml_reads(roles=ROLES):
    """{script: {(key, ...)}}: what the roles' YAML reads of each probe's registered result."""
    regs = {t["register"]: (t["script"], t["module"]) for t in tasks(roles) if t["register"] and t["script"]}
    out = {}
    for path in glob.glob(os.path.join(roles, "*", "tasks", "*.yml")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for reg, (script, module) in regs.items():
            # win_powershell: <register>.result.<key>; a module: <register>.<key> (Ansible's own keys aside)
            for m in re.finditer(re.escape(reg) + (r"\b((?:\.\w+)*)" if module else r"\.result((?:\.\w+)*)"), text):
                keys = tuple(k for k in m.group(1).split(".") if k)
                if module and keys[:1] and keys[0] in ANSIBLE_KEYS:
                    continue
                out.setdefault(script, set()).add(keys)
    return out


ANSIBLE_KEYS = {"changed", "failed", "skipped", "msg", "invocation", "warnings", "deprecations"}


# ------------------------------------------------------------------ the MOCK host's answers
def firefox_answer(gpo=True):
    """The Firefox Group Policy the MOCK host holds (with `gpo`: machine and user values, one a list). Firefox and
    gclib.dll are files of the host (winsim.firefox_and_classic_client), which the MOCK's probe looks up itself."""
    return {"gpo": {"": {"DisableAppUpdate": 1}, "Certificates\\Install": {"1": "C:\\corp\\root.cer"},
                    "Preferences": {"JSON": ["{", "}"]}} if gpo else {},
            "gpo_users": {"S-1-5-21-1-2-3-1001": {"SecurityDevices": {"corp": "C:\\corp\\p11.dll"}}} if gpo else {}}


def token_answer(present=True):
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


def sample_state():
    """A French MOCK host with something for every probe to report."""
    s = new_state(uninstall_entries=[{"key": "{11111111-2222-3333-4444-555555555555}",
                                      "display_name": "GemSafe Standard Edition", "windows_installer": 1,
                                      "view": 64,
                                      "uninstall_string": "MsiExec.exe /X{11111111-2222-3333-4444-555555555555}"}])
    s["powershell"]["firefox_probe.ps1"] = firefox_answer()
    firefox_and_classic_client(s)
    s["powershell"]["token_probe.ps1"] = token_answer()
    s["powershell"]["user_profiles.ps1"] = {
        "profiles": [{"sid": "S-1-5-21-1-2-3-1001", "profile_path": "C:\\Users\\anna", "loaded": True,
                      "ntuser_exists": True}],
        "connection_sid": "S-1-5-21-1-2-3-500",
        "default_profile": {"path": "C:\\Users\\Default", "ntuser_exists": True}}
    s["dirs"]["c:\\programdata\\tokentrust"] = {"owner": "S-1-5-21-1-2-3-1001", "inherit": True, "acl": []}
    return s


SAMPLE_PARAMS = {"private_dir_probe.ps1": {"Paths": ["C:\\ProgramData\\tokentrust", "C:\\ProgramData\\tokentrust\\x"]},
                 "private_dir_create.ps1": {"Path": "C:\\ProgramData\\tokentrust2", "ReadSids": ["S-1-5-32-545"]},
                 # the role's defaults (environment variables, expanded by the probe on the host)
                 "firefox_probe.ps1": {"FirefoxDirs": firefox_install_dirs("Windows"),
                                       "GclibPaths": library_candidates("Windows")},
                 "ie_zones_probe.ps1": {"Urls": ["https://services.certeurope.fr"]}}


def mock_answer(script, state=None, roles=ROLES):
    """What the MOCK host (action_plugins/normal.py) answers for `script`, before the depth rule."""
    from tests.support.winsim.action_plugins.normal import ActionModule  # noqa: PLC0415

    mock = object.__new__(ActionModule)
    mock._script = read(shipped(roles)[script])  # noqa: SLF001
    state = copy.deepcopy(state or sample_state())
    answer = getattr(mock, "_probe_" + script[:-4])(state, SAMPLE_PARAMS.get(script, {}), False)
    if isinstance(answer, dict):
        answer.pop("__changed__", None)
    return answer


# ------------------------------------------------------------------ what our Python reads
class _Reads:
    def __init__(self):
        self.paths = set()

    def wrap(self, value, path=()):
        if isinstance(value, dict):
            return _RecDict(value, path, self)
        if isinstance(value, list):
            return [self.wrap(v, (*path, "[]")) for v in value]
        return value


class _RecDict(dict):
    """A dict that records every key read (path from the result's top)."""

    def __init__(self, data, path, log):
        super().__init__({k: log.wrap(v, (*path, k)) for k, v in data.items()})
        self._path, self._log = path, log

    def __getitem__(self, key):
        self._log.paths.add((*self._path, key))
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._log.paths.add((*self._path, key))
        return super().get(key, default)

    def __contains__(self, key):
        self._log.paths.add((*self._path, key))
        return super().__contains__(key)


def _consumers():
    """{script: fn(result)}: the module_utils code that reads each probe's result, as the roles call it."""
    return {
        "token_probe.ps1": tw.token_checks,
        "firefox_probe.ps1": lambda r: tw.firefox_checks(
            tw.firefox_plan(r, ["C:\\ProgramData\\tokentrust\\certs\\a.pem"]), r),
        "user_profiles.ps1": lambda r: tw.ie_users(r["profiles"], True, [r["connection_sid"]], r["default_profile"]),
        "uninstall_entries.ps1": lambda r: (tw.legacy_match(r["entries"]),
                                            tw.middleware_pending(r["entries"], "C:\\cc.msi", "", state="present"),
                                            tw.middleware_checks(r["entries"])),
        "private_dir_probe.ps1": lambda r: tw.private_dir_problems(r["folders"]),
        "ie_zones_probe.ps1": lambda r: tw.ie_checks(["https://services.certeurope.fr"], r, True, False),
    }


def python_reads(script, result):
    """Key paths our Python reads of `result` (raises what the Python raises on it)."""
    fn = _consumers().get(script)
    if fn is None:
        return set()
    log = _Reads()
    fn(log.wrap(result))
    return log.paths


def _emitted(shape, path):
    """True when `path` (keys, '[]' for list items) is a key path of `shape`."""
    for k in path:
        t = shape["t"]
        if t == "dict" and k in shape["keys"]:
            shape = shape["keys"][k]
        elif t == "map" and k != "[]":
            shape = shape["of"]
        elif t == "list" and k == "[]":
            shape = shape["of"]
        else:
            return False
    return True


def problems(roles=ROLES, state=None):
    """Every disagreement between the probes, the tasks that run them, what the roles read and the MOCK."""
    out = []
    files = shipped(roles)
    runs = tasks(roles)
    reads = yaml_reads(roles)
    for t in runs:
        if t["script"] is None:
            out.append(f"{t['file']}: task {t['name']!r} runs a script that is not one of roles/*/files/*.ps1")
        if not t["module"] and not isinstance(t["depth"], int):
            out.append(f"{t['file']}: task {t['name']!r} has no `depth` (win_powershell's default 2 flattens "
                       "anything deeper into strings)")
    for name, path in files.items():
        text = read(path)
        try:
            shape = psshape.result_shape(text)
            declared = {p.casefold() for p in psshape.params(text)}
        except psshape.ProbeError as e:
            out.append(f"{name}: {e}")
            continue
        for leaf in psshape.loose_leaves(shape):
            out.append(f"{name}: result.{'.'.join(leaf) or '(top)'} is a .NET object, not a string, number or bool: "
                       "cast it ([string], \"$(...)\", [int], [bool]); an enum or SID would reach Ansible as an "
                       "object or a number")
        need = psshape.depth_needed(shape)
        mine = [t for t in runs if t["script"] == name]
        if not mine:
            out.append(f"{name}: no task runs it (win_powershell, or the module {OURS}{name[:-4]})")
        for t in mine:
            if t["module"]:
                continue  # Ansible.Basic returns the result whole (no depth); its options: _module_problems
            depth = t["depth"] if isinstance(t["depth"], int) else 2
            if depth < need:
                said = f"depth {depth}" if isinstance(t["depth"], int) else "depth 2 (win_powershell's default)"
                out.append(f"{t['file']}: task {t['name']!r}: {said} but {name} emits containers "
                           f"{need} levels below its result: win_powershell would turn them into strings")
            for p in t["parameters"]:
                if p.casefold() not in declared:
                    out.append(f"{t['file']}: task {t['name']!r}: parameter {p} is not in {name}'s param() block")
        for t in mine:
            if t["module"]:
                out += [f"{t['file']}: task {t['name']!r}: option {p} is not in the argument spec of {OURS}{name[:-4]}"
                        for p in t["parameters"] if p not in declared]
        for keys in sorted(reads.get(name, ())):
            if not _emitted(shape, keys):
                out.append(f"{name}: the roles read result.{'.'.join(keys)}, which the probe does not emit")
        try:
            answer = mock_answer(name, state, roles)
        except KeyError as e:
            out.append(f"{name}: the MOCK host has no answer for it ({e})")
            continue
        out += [f"{name}: MOCK answer: {b}" for b in psshape.conforms(answer, shape)]
        for t in mine:
            depth = t["depth"] if isinstance(t["depth"], int) else 2
            try:
                got = python_reads(name, answer if t["module"] else psshape.convert_output(answer, depth))
            except (AttributeError, TypeError, KeyError, ValueError) as e:
                out.append(f"{t['file']}: task {t['name']!r}: our Python fails on {name}'s result at depth {depth}: "
                           f"{type(e).__name__}: {e}")
                continue
            for keys in sorted(got):
                if not _emitted(shape, keys):
                    out.append(f"{name}: module_utils reads result.{'.'.join(keys)}, which the probe does not emit")
    return out
