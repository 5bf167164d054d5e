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
"""
from __future__ import annotations

import hashlib
import json
import os

from ansible.plugins.action import ActionBase


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


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        action = self._task.action
        if not action.startswith("ansible.windows."):
            return {"failed": True, "msg": f"winsim MOCK only stands in for ansible.windows modules, not {action}"}
        module = action.split(".")[-1]
        args = dict(self._task.args)
        spath = os.environ["TOKENTRUST_WINSIM_STATE"]
        state = _load(spath)
        check = bool(self._task.check_mode)
        state.setdefault("calls", []).append({"module": module, "args": args, "check_mode": check})
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
                             "owner": d.get("owner", "BUILTIN\\Administrators")}}
        if p in state["files"]:
            f = state["files"][p]
            return {"stat": {"exists": True, "isdir": False, "owner": f.get("owner", "BUILTIN\\Administrators"),
                             "checksum": hashlib.sha1(f["content"].encode()).hexdigest()}}  # noqa: S324
        return {"stat": {"exists": False}}

    def _win_file(self, state, a, check):
        p = _k(a["path"])
        if a.get("state") == "directory":
            changed = p not in state["dirs"]
            if changed and not check:
                state["dirs"][p] = {"owner": "BUILTIN\\Administrators", "inherit": True, "acl": []}
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
        if dest.rsplit("\\", 1)[0] not in state["dirs"]:
            return {"failed": True, "msg": f"Cannot copy src file: parent folder of '{a['dest']}' does not exist"}
        changed = state["files"].get(dest, {}).get("content") != content
        if changed and not check:
            state["files"][dest] = {"content": content, "owner": "BUILTIN\\Administrators"}
        return {"changed": changed, "dest": a["dest"]}

    def _win_acl_inheritance(self, state, a, check):
        d = state["dirs"].get(_k(a["path"]))
        if d is None:
            return {"failed": True, "msg": f"{a['path']} file or directory does not exist on the host"}
        want = a.get("state", "absent") == "present"
        changed = d.get("inherit", True) != want
        if changed and not check:
            d["inherit"] = want
            if not a.get("reorganize"):
                d["acl"] = [e for e in d.get("acl", []) if not e.get("inherited")]
        return {"changed": changed}

    def _win_acl(self, state, a, check):
        d = state["dirs"].get(_k(a["path"]))
        if d is None:
            return {"failed": True, "msg": f"{a['path']} file or directory does not exist on the host"}
        ace = {"user": a["user"], "rights": a["rights"], "type": a["type"], "state": a.get("state", "present")}
        acl = d.setdefault("acl", [])
        changed = ace not in acl
        if changed and not check:
            acl.append(ace)
        return {"changed": changed}

    def _win_owner(self, state, a, check):
        d = state["dirs"].get(_k(a["path"]))
        if d is None:
            return {"failed": True, "msg": f"{a['path']} does not exist"}
        changed = d.get("owner") != a["user"]
        if not check:
            d["owner"] = a["user"]
            if a.get("recurse"):
                for f, meta in state["files"].items():
                    if f.startswith(_k(a["path"]) + "\\") and meta.get("owner") != a["user"]:
                        meta["owner"], changed = a["user"], True
        return {"changed": changed}

    # ---- scripts, packages, reboots ----
    def _win_powershell(self, state, a, check):
        first = a["script"].lstrip().splitlines()[0]
        if "list the machine-wide Uninstall entries" in first:  # follows what win_package did to the host
            return {"result": {"entries": state.get("uninstall_entries", [])}, "output": [], "error": []}
        for marker, res in state.get("powershell", {}).items():
            if marker in first:
                if "read-only probe of Firefox installs" in first:  # policies.json as the host holds it now
                    res = dict(res, policies_json=dict(res.get("policies_json") or {}))
                    for i in res.get("installs") or []:
                        path = i["dir"] + "\\distribution\\policies.json"
                        f = state["files"].get(_k(path))
                        if f is not None:
                            res["policies_json"][path] = f["content"]
                return {"result": res, "output": [], "error": []}
        return {"failed": True, "msg": f"winsim MOCK: no canned result for script {first!r}"}

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
        return {"changed": changed, "reboot_required": False, "rc": 0}

    def _win_reboot(self, state, a, check):
        if not check:
            state["reboots"] = state.get("reboots", 0) + 1
        return {"changed": True, "rebooted": not check}

    def _win_ping(self, state, a, check):
        return {"ping": "pong"}
