# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""MOCK Windows host for role tests (no Windows runs here): an action plugin that stands in for the
ansible.windows modules.

It is only reached through a shadow copy of ansible.windows without its action plugins
(tests/support/winsim/__init__.py builds it), so every ansible.windows task falls back to
`ansible.legacy.normal`, i.e. this file. It receives the task's args AFTER Ansible templated them
(what the real module would receive), records them, validates them against the installed module's
own DOCUMENTATION (unknown option, bad choice -> failure, as the real module would), and applies them
to a JSON host state whose semantics copy the modules' .ps1 sources where it matters:
win_certificate_info opens `X509Store(store_name)` unchanged (an unknown name is an empty store);
win_certificate_store maps only CertificateAuthority -> CA and fails on a store that does not exist.

The host speaks FRENCH (state["accounts"]: BUILTIN\\Administrateurs, AUTORITE NT\\Système, ...): win_stat
reports owners by their localized name; win_acl and win_owner resolve `user` as ansible-core's
Ansible.ModuleUtils.SID (Convert-ToSID) does, so a SID passes and an English name fails. Our own PowerShell
modules (win_tokentrust_*, the probes) are answered from their source, library/win_tokentrust_<probe>.ps1
(`_our_module`): args checked against its `$spec`, its statements and `$module.Result.<key>` keys followed, and
an unsigned one refused in Constrained Language mode. win_powershell
answers only the bodies we ship (roles/*/files/*.ps1, the script text must be one of them), parses each
with tree-sitter-powershell, refuses parameters its param() block does not declare, checks its own
answer against the shape derived from the probe's tree, and applies Convert-OutputObject's `depth` rule
(default 2) to it, as ansible.windows' win_powershell.ps1 does. win_package returns the exit code the
state asks for (3010: reboot_required).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys

from ansible.plugins.action import ActionBase

sys.path.insert(0, os.environ.get("TOKENTRUST_WINSIM_ROOT", os.getcwd()))
from tests.support.winsim import expand_env, host_env, psshape, statements  # noqa: E402  pylint: disable=wrong-import-position

SID_RE = re.compile(r"^S-1-\d+(-\d+)+$", re.IGNORECASE)
ADMINS, SYSTEM, USERS, CREATOR_OWNER = "S-1-5-32-544", "S-1-5-18", "S-1-5-32-545", "S-1-3-0"
READ_RIGHTS = ("FullControl", "Modify", "ReadAndExecute", "Read")


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _save(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _k(path):
    return path.replace("/", "\\").rstrip("\\").casefold()


def _thumb(pem_or_der):
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    data = pem_or_der.encode() if isinstance(pem_or_der, str) else pem_or_der
    cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    return hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest().upper()  # noqa: S324


def convert_to_sid(state, name):
    """ansible-core Ansible.ModuleUtils.SID Convert-ToSID on the MOCK host's accounts: a SID is returned as
    given; DOMAIN\\name, .\\name and name are looked up with the host's (localized) names; anything else
    fails with the module's message."""
    name = str(name)
    if SID_RE.match(name):
        return name.upper()
    accounts = state.get("accounts", {})
    if "\\" in name:
        domain, user = name.split("\\", 1)
        if domain == ".":
            domain = state.get("computername", "PC-01")
        want = [f"{domain}\\{user}".casefold()]
    else:
        want = [name.casefold()]
    for sid, full in accounts.items():
        short = full.split("\\", 1)[-1]
        if full.casefold() in want or ("\\" not in name and short.casefold() in want):
            return sid
    raise LookupError(f"account_name {name} is not a valid account, cannot get SID: Exception calling \"Translate\" "
                      "with \"1\" argument(s): \"Some or all identity references could not be translated.\"")


def account_name(state, sid):
    return state.get("accounts", {}).get(sid, sid)


def inherited_from(parent):
    """The ACEs a new child gets from `parent` (inheritable ones, marked inherited)."""
    return [dict(e, inherited=True) for e in (parent or {}).get("acl", [])
            if "ContainerInherit" in str(e.get("inherit", "")) or "ObjectInherit" in str(e.get("inherit", ""))]


def readable_by(state, path, sid):
    """True when `sid` (or a group the MOCK treats it as member of: Users) has an allow ACE with read."""
    f = state["files"].get(_k(path)) or state["dirs"].get(_k(path)) or {}
    return any(e.get("sid") == sid and e.get("type", "allow") == "allow" and e.get("rights") in READ_RIGHTS
               for e in f.get("acl", []))


def shipped_probes(roles):
    """{script text (as lookup('file') returns it): file name} of every .ps1 we ship."""
    out = {}
    for path in glob.glob(os.path.join(roles, "*", "files", "*.ps1")):
        with open(path, encoding="utf-8") as f:
            out[f.read().rstrip("\n")] = os.path.basename(path)
    return out


OURS = "win_tokentrust_"  # our PowerShell modules (library/win_tokentrust_<probe>.ps1)


def library_dir():
    """The library/ the MOCK reads our modules from: the one next to the roles under test (a test's mutated copy),
    else the repository's."""
    roles = os.environ.get("TOKENTRUST_WINSIM_ROLES") or os.path.join(os.getcwd(), "roles")
    lib = os.environ.get("TOKENTRUST_WINSIM_LIBRARY") or os.path.join(os.path.dirname(roles), "library")
    return lib if os.path.isdir(lib) else os.path.join(os.environ.get("TOKENTRUST_WINSIM_ROOT", os.getcwd()), "library")


def module_params(text, args):
    """{script variable: value} a module's `$Var = $module.Params.option` statements bind, from the task's args and
    the spec's defaults (what Ansible.Basic would hand the module); (None, message) on an unknown option."""
    opts = psshape.module_options(text)
    for k in args:
        if k not in opts:
            return None, f"Unsupported parameters for module: {k}. Supported parameters include: {', '.join(opts)}"
    missing = [k for k, o in opts.items() if o["required"] and args.get(k) is None]
    if missing:
        return None, f"missing required arguments: {', '.join(missing)}"
    out = {}
    for opt, var in psshape.module_bindings(text).items():
        o = opts.get(opt, {})
        value = args.get(opt)
        if value is None:
            value = {"@()": [], "$true": True, "$false": False}.get(str(o.get("default")), None)
        if o.get("type") == "list" and value is not None and not isinstance(value, list):
            value = [value]
        if o.get("type") == "bool" and isinstance(value, str):
            value = value.lower() in ("yes", "true", "1", "on")
        out[var] = value
    return out, None


class ProbeFailed(Exception):
    """A probe's `throw`, as the MOCK models it."""


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        action = self._task.action
        module = action.split(".")[-1]
        if not action.startswith("ansible.windows.") and not module.startswith(OURS):
            return {"failed": True, "msg": f"winsim MOCK only stands in for ansible.windows modules and ours "
                                           f"({OURS}*), not {action}"}
        args = dict(self._task.args)
        spath = os.environ["TOKENTRUST_WINSIM_STATE"]
        state = _load(spath)
        check = bool(self._task.check_mode)
        state.setdefault("calls", []).append({"module": module, "args": args, "check_mode": check})
        if module.startswith(OURS):
            out = self._our_module(state, module, args, check)
            _save(spath, state)
            result.update(out)
            result.setdefault("changed", False)
            return result
        specs = state.get("specs", {}).get(module)
        if specs is not None:
            bad = self._validate(module, args, specs)
            if bad:
                _save(spath, state)
                return dict(result, failed=True, msg=bad)
        try:
            out = getattr(self, "_" + module)(state, args, check)
        except KeyError as e:
            out = {"failed": True, "msg": f"winsim MOCK: {module} is not simulated ({e})"}
        except AttributeError:
            out = {"failed": True, "msg": f"winsim MOCK: {module} is not simulated"}
        _save(spath, state)
        result.update(out)
        result.setdefault("changed", False)
        return result

    @staticmethod
    def _validate(module, args, specs):
        for name, value in args.items():
            if name not in specs:
                return f"Unsupported parameters for ({module}) module: {name}"
            choices = specs[name].get("choices")
            if choices and value is not None:
                if isinstance(value, list):
                    values = value
                elif specs[name].get("comma") and isinstance(value, str):
                    values = [v.strip() for v in value.split(",")]
                else:
                    values = [value]
                for v in values:
                    if str(v) not in [str(c) for c in choices]:
                        return f"value of {name} must be one of: {', '.join(map(str, choices))}, got: {v}"
        return None

    # ---- certificates (semantics of win_certificate_info.ps1 / win_certificate_store.ps1) ----
    def _win_certificate_info(self, state, a, check):
        store = state["stores"].get(f"{a.get('store_location', 'LocalMachine')}\\{a.get('store_name', 'My')}", {})
        certs = [{"thumbprint": t, **meta} for t, meta in sorted(store.items())]
        return {"exists": bool(certs), "certificates": certs}

    def _win_certificate_store(self, state, a, check):
        name = a.get("store_name", "My")
        if name == "CertificateAuthority":  # the only mapping win_certificate_store.ps1 does
            name = "CA"
        key = f"{a.get('store_location', 'LocalMachine')}\\{name}"
        if key not in state["stores"]:
            return {"failed": True, "msg": f"unable to find store '{name}'"}
        store = state["stores"][key]
        if a.get("state", "present") == "present":
            f = state["files"].get(_k(a["path"]))
            if f is None:
                return {"failed": True, "msg": f"file at path '{a['path']}' does not exist"}
            t = _thumb(f["content"])
            changed = t not in store
            if changed and not check:
                store[t] = {"subject": "from " + a["path"]}
            return {"changed": changed, "thumbprints": [t]}
        t = a["thumbprint"].upper()
        changed = t in store
        if changed and not check:
            del store[t]
        return {"changed": changed, "thumbprints": [t] if changed else []}

    # ---- registry ----
    def _reg_key(self, state, a):
        path = a["path"]
        if a.get("hive"):
            path = "HIVE[" + a["hive"] + "]" + path
        return _k(path)

    def _win_reg_stat(self, state, a, check):
        key = state["registry"].get(self._reg_key(state, a))
        if key is None:
            return {"exists": False}
        if a.get("name") is None:
            return {"exists": True, "properties": {n: {"raw_value": v["data"], "value": v["data"], "type": v["type"]}
                                                   for n, v in key.items()}}
        v = key.get(a["name"])
        if v is None:
            return {"exists": False}
        return {"exists": True, "raw_value": v["data"], "value": v["data"], "type": v["type"]}

    def _win_regedit(self, state, a, check):
        kp = self._reg_key(state, a)
        key = state["registry"].get(kp)
        if a.get("state", "present") == "absent":
            if a.get("name") is None:
                changed = key is not None
                if changed and not check:
                    del state["registry"][kp]
                return {"changed": changed}
            changed = key is not None and a["name"] in key
            if changed and not check:
                del key[a["name"]]
            return {"changed": changed}
        vtype = {"dword": "REG_DWORD", "string": "REG_SZ"}.get(a.get("type", "string"), a.get("type"))
        data = a.get("data")
        if vtype == "REG_DWORD":
            data = int(data)
        new = {"type": vtype, "data": data}
        changed = key is None or (a.get("name") is not None and key.get(a["name"]) != new)
        if changed and not check:
            key = state["registry"].setdefault(kp, {})
            if a.get("name") is not None:
                key[a["name"]] = new
        return {"changed": changed}

    # ---- files and ACLs ----
    def _win_stat(self, state, a, check):
        p = _k(a["path"])
        if p in state["dirs"]:
            d = state["dirs"][p]
            return {"stat": {"exists": True, "isdir": True, "islnk": False, "isjunction": False,
                             "owner": account_name(state, d.get("owner", ADMINS))}}
        if p in state["files"]:
            f = state["files"][p]
            return {"stat": {"exists": True, "isdir": False, "owner": account_name(state, f.get("owner", ADMINS)),
                             "checksum": hashlib.sha1(f["content"].encode()).hexdigest()}}  # noqa: S324
        return {"stat": {"exists": False}}

    def _win_file(self, state, a, check):
        p = _k(a["path"])
        if a.get("state") == "directory":
            changed = p not in state["dirs"]
            if changed and not check:  # created with the ACL it inherits from its parent
                state["dirs"][p] = {"owner": ADMINS, "inherit": True,
                                    "acl": inherited_from(state["dirs"].get(p.rsplit("\\", 1)[0]))}
            return {"changed": changed}
        if a.get("state") == "absent":
            changed = p in state["files"] or p in state["dirs"]
            if changed and not check:
                state["files"].pop(p, None)
                state["dirs"].pop(p, None)
                for f in [f for f in state["files"] if f.startswith(p + "\\")]:
                    del state["files"][f]
            return {"changed": changed}
        return {"failed": True, "msg": f"winsim MOCK: win_file state {a.get('state')} not simulated"}

    def _win_copy(self, state, a, check):
        dest = _k(a["dest"])
        if a.get("content") is not None:
            content = a["content"]
        else:
            src = a["src"]
            if not os.path.isabs(src):
                src = self._find_needle("files", src)
            with open(src, "rb") as f:
                raw = f.read()
            try:
                content = raw.decode()
            except UnicodeDecodeError:
                content = raw.hex()
        if check and dest.rsplit("\\", 1)[0] not in state["dirs"]:
            # the win_copy action plugin answers a check run of a single file with changed, not asking the host
            return {"changed": True, "dest": a["dest"]}
        if dest.rsplit("\\", 1)[0] not in state["dirs"]:
            return {"failed": True, "msg": f"Cannot copy src file: parent folder of '{a['dest']}' does not exist"}
        changed = state["files"].get(dest, {}).get("content") != content
        if changed and not check:
            old = state["files"].get(dest)
            parent = state["dirs"][dest.rsplit("\\", 1)[0]]
            state["files"][dest] = {"content": content, "owner": old["owner"] if old else ADMINS,
                                    "acl": old["acl"] if old else inherited_from(parent)}
        return {"changed": changed, "dest": a["dest"]}

    def _win_acl_inheritance(self, state, a, check):
        d = state["dirs"].get(_k(a["path"]))
        if d is None:
            return {"failed": True, "msg": f"{a['path']} file or directory does not exist on the host"}
        want = a.get("state", "absent") == "present"
        changed = d.get("inherit", True) != want
        if changed and not check:
            d["inherit"] = want
            if not want and not a.get("reorganize"):
                d["acl"] = [e for e in d.get("acl", []) if not e.get("inherited")]
            elif not want:
                d["acl"] = [dict(e, inherited=False) for e in d.get("acl", [])]
            for f, meta in list(state["files"].items()) + list(state["dirs"].items()):
                if f.startswith(_k(a["path"]) + "\\"):  # children re-inherit
                    meta["acl"] = [e for e in meta.get("acl", []) if not e.get("inherited")] + inherited_from(d)
        return {"changed": changed}

    def _win_acl(self, state, a, check):
        d = state["dirs"].get(_k(a["path"]))
        if d is None:
            return {"failed": True, "msg": f"{a['path']} file or directory does not exist on the host"}
        try:
            sid = convert_to_sid(state, a["user"])
        except LookupError as e:
            return {"failed": True, "msg": str(e)}
        ace = {"sid": sid, "rights": a["rights"], "type": a["type"], "inherit": a.get("inherit", ""),
               "propagation": a.get("propagation", "None"), "inherited": False}
        acl = d.setdefault("acl", [])
        if a.get("state", "present") == "absent":
            changed = ace in acl
            if changed and not check:
                acl.remove(ace)
            return {"changed": changed}
        changed = ace not in acl
        if changed and not check:
            acl.append(ace)
            for f, meta in list(state["files"].items()) + list(state["dirs"].items()):
                if f.startswith(_k(a["path"]) + "\\") and ace["inherit"]:
                    meta.setdefault("acl", []).append(dict(ace, inherited=True))
        return {"changed": changed}

    def _win_owner(self, state, a, check):
        d = state["dirs"].get(_k(a["path"]))
        if d is None:
            return {"failed": True, "msg": f"{a['path']} does not exist"}
        try:
            sid = convert_to_sid(state, a["user"])
        except LookupError as e:
            return {"failed": True, "msg": str(e)}
        changed = d.get("owner") != sid
        if not check:
            d["owner"] = sid
        if a.get("recurse"):
            for f, meta in list(state["files"].items()) + list(state["dirs"].items()):
                if f.startswith(_k(a["path"]) + "\\") and meta.get("owner") != sid:
                    changed = True
                    if not check:
                        meta["owner"] = sid
        return {"changed": changed}

    # ---- scripts, packages, reboots ----
    def _win_powershell(self, state, a, check):
        roles = os.environ.get("TOKENTRUST_WINSIM_ROLES") or os.path.join(os.getcwd(), "roles")
        script = a["script"].rstrip("\n")
        name = shipped_probes(roles).get(script)
        if name is None:
            first = (script.lstrip().splitlines() or [""])[0]
            return {"failed": True, "msg": f"winsim MOCK refuses a script that is not one of the probes we ship "
                                           f"(roles/*/files/*.ps1): {first[:80]!r}"}
        try:
            shape = psshape.result_shape(script)
            declared = psshape.params(script)
        except psshape.ProbeError as e:
            return {"failed": True, "msg": f"winsim MOCK: {name}: {e}"}
        given = a.get("parameters") or {}
        unknown = [k for k in given if k.casefold() not in {d.casefold() for d in declared}]
        if unknown:
            return {"failed": True, "msg": f"{name}: A parameter cannot be found that matches parameter name "
                                           f"'{unknown[0]}'."}
        self._script = script  # the statements the MOCK's answer follows (tests/support/winsim/statements.py)
        if state.get("language_mode", "FullLanguage") == "ConstrainedLanguage" and name != "language_mode.ps1":
            # what win_powershell gives a script body under App Control: CLM, where Add-Type and most .NET types fail
            return {"failed": True, "msg": f"winsim MOCK: {name} in ConstrainedLanguage: Cannot invoke method. Method "
                                           "invocation is supported only on core types in this language mode."}
        try:
            answer = getattr(self, "_probe_" + name[:-4])(state, given, check)
        except ProbeFailed as e:  # a terminating error of the script (throw): win_powershell fails with it
            return {"failed": True, "msg": str(e), "result": {}, "output": [], "error": [str(e)]}
        changed = bool(answer.pop("__changed__", False)) if isinstance(answer, dict) else False
        # a value the probe emits as a constant is that constant, whatever the host holds
        answer = statements.apply_constants(answer, statements.constant_leaves(script))
        bad = psshape.conforms(answer, shape)
        if bad:
            return {"failed": True, "msg": f"winsim MOCK: {name}: its answer does not match what the probe emits: "
                                           + "; ".join(bad[:5])}
        depth = int(a.get("depth", 2))  # win_powershell's default
        return {"result": psshape.convert_output(answer, depth), "output": [], "error": [], "changed": changed}

    def _our_module(self, state, module, args, check):
        """One of our PowerShell modules, from ITS source (library/win_tokentrust_<probe>.ps1): its argument spec
        checks the args, its statements steer the answer (the probe's `_probe_<name>`), its `$module.Result.<key>`
        assignments give the keys; an unsigned module does not even start under App Control (CLM)."""
        name = module[len(OURS):] + ".ps1"
        path = os.path.join(library_dir(), module + ".ps1")
        if not os.path.isfile(path):
            return {"failed": True, "msg": f"winsim MOCK: no module {module} in {library_dir()}"}
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            shape = psshape.result_shape(text)
            params, bad = module_params(text, args)
        except psshape.ProbeError as e:
            return {"failed": True, "msg": f"winsim MOCK: {module}: {e}"}
        if bad:
            return {"failed": True, "msg": f"{module}: {bad}"}
        if state.get("language_mode", "FullLanguage") == "ConstrainedLanguage" and not state.get("signed_modules"):
            return {"failed": True, "msg": f"winsim MOCK: {module} in ConstrainedLanguage: an unsigned module cannot "
                                           "start (Ansible.Basic is compiled with Add-Type)"}
        self._script = text  # the statements the MOCK's answer follows (tests/support/winsim/statements.py)
        try:
            answer = getattr(self, "_probe_" + name[:-4])(state, params, check)
        except ProbeFailed as e:  # $module.FailJson(...): the module fails with its message
            return {"failed": True, "msg": str(e)}
        changed = bool(answer.pop("__changed__", False))
        answer = statements.apply_constants(answer, statements.constant_leaves(text))
        wrong = psshape.conforms(answer, shape)
        if wrong:
            return {"failed": True, "msg": f"winsim MOCK: {module}: its answer does not match what the module "
                                           "emits: " + "; ".join(wrong[:5])}
        return dict(answer, changed=changed)  # Ansible.Basic's ExitJson: every key at the top, nothing flattened

    @staticmethod
    def _canned(state, name):
        if name not in state.get("powershell", {}):
            raise KeyError(f"no state for probe {name} in this MOCK host")
        return json.loads(json.dumps(state["powershell"][name]))

    def _probe_uninstall_entries(self, state, params, check):
        keys = ("key", "display_name", "display_version", "publisher", "windows_installer", "uninstall_string",
                "quiet_uninstall_string", "view")
        views = statements.registry_views(self._script)  # only the views the probe opens
        return {"entries": [{k: e.get(k, 0 if k == "windows_installer" else None) for k in keys}
                            for e in state.get("uninstall_entries", []) if int(e.get("view", 64)) in views]}

    def _probe_token_probe(self, state, params, check):
        res = self._canned(state, "token_probe.ps1")
        svc = state.get("services", {}).get("CertPropSvc")
        if svc is not None:  # as win_service left it
            modes = {"auto": "Automatic", "manual": "Manual"}
            res["certprop"] = {"exists": True, "status": "Running" if svc["state"] == "started" else "Stopped",
                               "start_type": modes.get(svc["start_mode"], "Disabled")}
        return res

    def _probe_user_profiles(self, state, params, check):
        return state.get("powershell", {}).get("user_profiles.ps1") or {
            "profiles": [], "connection_sid": "S-1-5-21-9-9-9-500",
            "default_profile": {"path": "C:\\Users\\Default", "ntuser_exists": True}}

    def _probe_firefox_probe(self, state, params, check):
        """Firefox installs and gclib.dll candidates from the host's files (PE images: tests/support/winsim pe_file)
        at the paths the module receives, expanded with the host's environment only as far as the module's source
        expands them (statements.path_expansion); Firefox folders the host registers (Mozilla's registry keys, user
        profiles, Store packages) from state["firefox_registered"]; Group Policy from the host's canned dump (the
        subkeys only when Read-Key recurses); policies.json as the host's files hold it now."""
        canned = state.get("powershell", {}).get("firefox_probe.ps1") or {}
        env = host_env(state)
        guard = statements.guards_undefined_variables(self._script)

        def as_looked_at(given, variable):
            return expand_env(given, env, **statements.path_expansion(self._script, variable))

        def file_info(path, given):
            info = {"path": path, "given": given, "exists": False, "machine": None, "version": None, "reason": None}
            hole = re.search(r"%[^%\\]+%", path)
            if hole and guard:
                info["reason"] = f"environment variable {hole.group(0)} is not defined on this host"
                return info
            f = state["files"].get(_k(path)) if not hole else None  # Test-Path of a relative '%...%' path: none
            if f is not None:
                info.update(exists=True, machine=f.get("machine"), version=f.get("version"))
            return info

        dirs = {}  # the probe's List[string] (Contains: ordinal, case-sensitive) -> (kind, given)
        for d in params.get("FirefoxDirs") or []:
            dirs.setdefault(as_looked_at(d, "FirefoxDirs").rstrip("\\"), ("machine", d))
        for r in state.get("firefox_registered") or []:
            dirs.setdefault(r["dir"].rstrip("\\"), (r.get("kind", "machine"), None))
        installs = [dict(file_info(d + "\\firefox.exe", given), dir=d, kind=kind) for d, (kind, given) in dirs.items()]
        gclib = [file_info(as_looked_at(p, "GclibPaths"), p) for p in params.get("GclibPaths") or []]
        gpo, gpo_users = dict(canned.get("gpo") or {}), dict(canned.get("gpo_users") or {})
        if not statements.function_recurses(self._script, "Read-Key"):  # the probe reads the top key only
            gpo = {k: v for k, v in gpo.items() if k == ""}
            gpo_users = {sid: {k: v for k, v in keys.items() if k == ""} for sid, keys in gpo_users.items()}
        policies = {}
        for i in installs:
            if i["exists"]:
                f = state["files"].get(_k(i["dir"] + "\\distribution\\policies.json"))
                policies[i["dir"] + "\\distribution\\policies.json"] = f["content"] if f is not None else None
        return {"installs": installs, "gclib": gclib, "gpo": gpo, "gpo_users": gpo_users, "policies_json": policies,
                "program_files": {"x64": env.get("ProgramW6432"), "x86": env.get("ProgramFiles(x86)")}}

    def _probe_ie_zones_probe(self, state, params, check):
        """The zone of each URL from the machine Site to Zone Assignment List when its policy is on (the
        WinRM account's own list is not modelled: zone 3, Internet, otherwise)."""
        key = "HKLM:\\SOFTWARE\\Policies\\Microsoft\\Windows\\CurrentVersion\\Internet Settings"
        pol = state["registry"].get(_k(key), {})
        zonemap = state["registry"].get(_k(key + "\\ZoneMapKey"), {})
        on = (pol.get("ListBox_Support_ZoneMapKey") or {}).get("data") == 1
        zones = {}
        for u in params.get("Urls") or []:
            host = u.split("://", 1)[-1]
            hit = zonemap.get(u) or zonemap.get(host)
            zones[u] = int(hit["data"]) if on and hit else 3
        esc = state.get("ie_esc") or {"admins": False, "users": False}
        return {"gpo_sources": list(state.get("ie_gpo_sources") or []), "esc": dict(esc), "zones": zones}

    def _probe_private_dir_probe(self, state, params, check):
        out = []
        hidden = {_k(h) for h in state.get("appear_after_probe") or []}  # made by someone right after the probe
        for p in params.get("Paths") or []:
            d = state["dirs"].get(_k(p)) if _k(p) not in hidden else None
            f = state["files"].get(_k(p)) if _k(p) not in hidden else None
            if d is None and f is None:
                out.append({"path": p, "exists": False, "isdir": False, "reparse": False, "owner_sid": None,
                            "owner_name": None})
                continue
            meta = d if d is not None else f
            owner = meta.get("owner", ADMINS)
            out.append({"path": p, "exists": True, "isdir": d is not None, "reparse": bool(meta.get("reparse")),
                        "owner_sid": owner, "owner_name": state.get("accounts", {}).get(owner)})
        return {"folders": out}

    def _probe_private_dir_create(self, state, params, check):
        """The folder made, or an existing one's ACL replaced, as the script's own statements say
        (statements.created_acl); a folder that exists although the probe found it missing stops, when the
        script says so (statements.appeared_refusal)."""
        p = _k(params["Path"])
        parent = state["dirs"].get(p.rsplit("\\", 1)[0])
        made = statements.created_acl(self._script, params, parent)
        owner = made["owner"] or ADMINS
        if p in state["dirs"] or p in state["files"]:
            refusal = statements.appeared_refusal(self._script)
            if refusal and not params.get("Existed"):
                raise ProbeFailed(refusal.replace("$Path", params["Path"]))
            d = state["dirs"].get(p)
            if d is None:
                raise ProbeFailed(f"{params['Path']} is no longer a plain folder")
            if not statements.replaces_existing_acl(self._script):
                return {"path": params["Path"], "created": False, "fixed": False}

            def norm(acl):
                return sorted((e["sid"].upper(), e["rights"], e["type"], str(e.get("inherit")),
                               bool(e.get("inherited"))) for e in acl)
            fixed = (d.get("owner") != owner or bool(d.get("inherit", True)) != made["inherit"]
                     or norm(d.get("acl", [])) != norm(made["acl"]))
            if fixed and not check:
                d.update(owner=owner, inherit=made["inherit"], acl=made["acl"])
                for f, meta in list(state["files"].items()) + list(state["dirs"].items()):
                    if f.startswith(p + "\\"):  # children re-inherit from the new DACL
                        meta["acl"] = [e for e in meta.get("acl", []) if not e.get("inherited")] + \
                            [dict(e, inherited=True) for e in made["acl"]]
            return {"path": params["Path"], "created": False, "fixed": fixed, "__changed__": fixed}
        if not check and parent is None:
            raise KeyError(f"parent of {params['Path']} missing")
        if not check:  # the ACL the script's own statements build (not a hand-written answer)
            state["dirs"][p] = {"owner": owner, "inherit": made["inherit"], "acl": made["acl"]}
        return {"path": params["Path"], "created": True, "fixed": False, "__changed__": True}

    def _probe_logged_on_users(self, state, params, check):
        return {"users": [dict(u) for u in state.get("logged_on") or []]}

    def _probe_language_mode(self, state, params, check):
        return {"language_mode": state.get("language_mode", "FullLanguage")}

    def _win_package(self, state, a, check):
        pid = a.get("product_id") or a.get("path")
        installed = state.setdefault("installed", [])
        entries = state.setdefault("uninstall_entries", [])
        keys = [e["key"].casefold() for e in entries]
        if a.get("state", "present") == "present":
            # like the real module: idempotent only when it can find the ProductCode in the Uninstall keys
            changed = not (a.get("product_id") and a["product_id"].casefold() in keys)
            if changed and not check:
                installed.append(pid)
                if a.get("product_id"):
                    entries.append({"key": a["product_id"], "display_name": "Classic Client", "windows_installer": 1,
                                    "view": 64})
        else:
            changed = pid.casefold() in keys
            if changed and not check:
                state["uninstall_entries"] = [e for e in entries if e["key"].casefold() != pid.casefold()]
        rc = int(state.get("package_rc", {}).get(str(pid).casefold(), 0)) if changed and not check else 0
        if rc not in [int(x) for x in (a.get("expected_return_code") or [0, 3010])]:
            return {"failed": True, "rc": rc, "msg": f"unexpected rc from '{pid}': see rc, stdout, and stderr for more "
                                                     "details"}
        # win_package.ps1 sets failed = $false itself: Ansible would take a non-zero rc as a failure
        return {"changed": changed, "reboot_required": rc == 3010, "rc": rc, "failed": False}

    def _win_service(self, state, a, check):
        svc = state.setdefault("services", {}).get(a["name"])
        if svc is None:
            return {"failed": True, "msg": f"Service '{a['name']}' is not installed, need to set 'path' to create a "
                                           "new service"}
        want = {k: a[k] for k in ("start_mode", "state") if a.get(k)}
        changed = any(svc.get(k) != v for k, v in want.items())
        if changed and not check:
            svc.update(want)
        return {"changed": changed, "exists": True, "name": a["name"]}

    def _win_reboot(self, state, a, check):
        if not check:
            state["reboots"] = state.get("reboots", 0) + 1
        return {"changed": True, "rebooted": not check}

    def _win_ping(self, state, a, check):
        return {"ping": "pong"}
