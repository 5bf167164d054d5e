# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Firefox: bitness, GPO registry, policies.json (role windows_firefox_policies)."""
from __future__ import annotations

import re

from ansible.module_utils import tokentrust_policies as pol

from .common import ARCH_BITS, FIREFOX_GPO_KEY, PE_MACHINES, WindowsPlanError, _entry
from .verify import check


# ---------------------------------------------------------------------------------------------
# Firefox: bitness, GPO registry, policies.json
# ---------------------------------------------------------------------------------------------
def pe_arch(machine):
    """Architecture of a PE image from IMAGE_FILE_HEADER.Machine (int, '0x8664' or '34404')."""
    if isinstance(machine, str):
        try:
            machine = int(machine, 16) if machine.lower().startswith("0x") else int(machine)
        except ValueError as e:
            raise WindowsPlanError(f"PE machine {machine!r} is not a number") from e
    if machine not in PE_MACHINES:
        raise WindowsPlanError(f"unknown PE machine type 0x{int(machine):04X}")
    return PE_MACHINES[machine]


def _arch_label(arch):
    return f"{ARCH_BITS[arch]}-bit ({arch})"


def _arch_of(item, what):
    """Architecture of a probe item ({machine}: the PE header's) or of a planned one ({arch})."""
    if "machine" not in item and item.get("arch"):
        if item["arch"] not in ARCH_BITS:
            raise WindowsPlanError(f"{what} {item.get('path')}: unknown architecture {item['arch']!r}")
        return item["arch"]
    if item.get("machine") is None:
        raise WindowsPlanError(f"{what} {item.get('path')}: no PE machine type read (is it a PE file?)")
    return pe_arch(item["machine"])


def choose_gclib(firefox, candidates):
    """The gclib.dll that this Firefox can load.

    `firefox`: {path, machine|arch}; `candidates`: [{path, exists, machine|arch}] in preference
    order. Returns {path, arch}. The first existing candidate of the same architecture wins; if
    only other architectures exist, the error names both sides (a 64-bit Firefox cannot load a
    32-bit gclib.dll, nor the reverse).
    """
    fx_arch = _arch_of(firefox, "Firefox")
    found = [c for c in candidates or [] if c.get("exists")]
    for c in found:
        if _arch_of(c, "gclib.dll") == fx_arch:
            return {"path": c["path"], "arch": fx_arch}
    fx = f"Firefox {firefox.get('path')} is {_arch_label(fx_arch)}"
    if found:
        others = "; ".join(f"{c['path']} is {_arch_label(_arch_of(c, 'gclib.dll'))}" for c in found)
        raise WindowsPlanError(
            f"gclib.dll bitness mismatch: {fx}, but {others}. Firefox cannot load a PKCS#11 library of "
            f"another bitness: install the {ARCH_BITS[fx_arch]}-bit Classic Client (token_middleware_msi) "
            "or the Firefox build that matches it")
    looked = _looked_at(candidates)
    raise WindowsPlanError(f"no gclib.dll found for {fx}; looked at: {looked}. Install Classic Client "
                           "(role token_middleware) or set windows_firefox_policies_gclib_paths")


X86_VARIABLE = "%ProgramFiles(x86)%"


def _under(path, folder):
    """True when the Windows `path` is `folder` or inside it (case-insensitive, as NTFS names are)."""
    p, f = str(path or "").casefold().rstrip("\\"), str(folder or "").casefold().rstrip("\\")
    return bool(f) and (p == f or p.startswith(f + "\\"))


def candidate_is_x86(candidate, program_files=None):
    """Whether a gclib.dll candidate of the probe lies in the host's 32-bit Program Files folder: its (expanded)
    path is under the host's `program_files.x86` folder, or it was given as %ProgramFiles(x86)%\\...; only when
    neither is known (an older probe's answer, a literal path on a host without that folder), "(x86)" in its path."""
    pf = program_files or {}
    if "x64" in pf and "x86" in pf and not pf["x64"] and not pf["x86"]:
        # neither ProgramW6432 nor ProgramFiles(x86) is defined: a 32-bit Windows, where every program is 32-bit
        return True
    x86 = pf.get("x86")
    given = candidate.get("given")
    if x86 or given:
        return _under(candidate.get("path"), x86) or str(given or "").casefold().startswith(X86_VARIABLE.casefold())
    return "(x86)" in candidate.get("path", "")


def _looked_at(candidates):
    """The candidates' paths as the host expanded them, each with the reason it could not be looked at."""
    return ", ".join(c.get("path", "?") + (f" ({c['reason']})" if c.get("reason") else "")
                     for c in candidates or []) or "(no candidate paths)"


def expected_gclib(firefox, candidates, program_files=None):
    """Where gclib.dll WILL be for this Firefox when none is installed yet (check mode before the
    middleware install): the first candidate in the Program Files folder of Firefox's bitness
    (`program_files`: the probe's {x64, x86}, the host's own folders). A candidate whose environment
    variable the host does not define (its `reason`) is no path and is skipped."""
    fx_arch = _arch_of(firefox, "Firefox")
    want_x86 = ARCH_BITS[fx_arch] == 32
    for c in candidates or []:
        if c.get("reason"):
            continue
        if candidate_is_x86(c, program_files) == want_x86:
            return {"path": c["path"], "arch": fx_arch, "assumed": True}
    raise WindowsPlanError(f"no gclib.dll candidate path for a {_arch_label(fx_arch)} Firefox; looked at: "
                           f"{_looked_at(candidates)}")


def _install_gclib(i, probe, security_device, assume_missing_dll, warnings):
    """Set i["gclib"], the gclib.dll for the Firefox install `i` (None without security device)."""
    if not security_device:
        i["gclib"] = None
        return
    add_ok = supports_security_devices_add(i.get("version"))
    if add_ok is False:
        raise WindowsPlanError(
            f"Firefox {i['path']} is version {i.get('version')}: SecurityDevices.Add needs Firefox 114 or "
            "ESR 102.12 and later, this one would ignore it. Update Firefox (ESR 115 or later), or set "
            "windows_firefox_policies_security_device: false")
    if add_ok is None:  # no ProductVersion read (None) is as unknown as an odd one: never passed silently
        warnings.append(f"Firefox {i['path']}: version {i.get('version')!r} unreadable; SecurityDevices.Add "
                        "needs Firefox 114 / ESR 102.12 or later: check Help > About Firefox on this host")
    try:
        i["gclib"] = choose_gclib(i, probe.get("gclib"))["path"]
    except WindowsPlanError:
        if not assume_missing_dll or any(c.get("exists") for c in probe.get("gclib") or []):
            raise
        i["gclib"] = expected_gclib(i, probe.get("gclib"), probe.get("program_files"))["path"]
        warnings.append(f"gclib.dll not installed yet; assuming {i['gclib']} (check mode)")


def _registry_plan(out, probe, installs, fragment, state):
    """The GPO registry target: one fragment for every install (so one gclib.dll)."""
    dlls = sorted({i["gclib"] for i in installs if i["gclib"]})
    if len(dlls) > 1:
        raise WindowsPlanError(
            "Firefox installs of different bitness need different gclib.dll files ("
            + ", ".join(f"{i['path']} -> {i['gclib']}" for i in installs)
            + "), but the GPO registry holds one SecurityDevices path for all: set "
              "windows_firefox_policies_target to json, or remove one Firefox")
    desired = fragment(dlls[0] if dlls else None)
    out["desired"] = desired
    out["registry"] = gpo_plan(probe.get("gpo"), desired, state)


def _json_plan(out, probe, installs, fragment, state):
    """The policies.json target: one file per install, and the Group Policy that would override them."""
    existing = probe.get("policies_json") or {}
    for i in installs:
        desired = fragment(i["gclib"])
        r = policies_json(existing.get(i["policies_json"]), desired, state, i["policies_json"])
        out["json"].append({"path": i["policies_json"], "dir": i["distribution"], "text": r["text"],
                            "changed": r["changed"], "warnings": r["warnings"], "desired": desired})
        out["warnings"] += r["warnings"]
    if state != "present":
        return
    desired = out["json"][0]["desired"]
    scopes = [("HKLM", probe.get("gpo"))] + [
        (f"HKU\\{sid}", d) for sid, d in sorted((probe.get("gpo_users") or {}).items())]
    found = {}
    for scope, dump in scopes:
        for c in gpo_conflicts(dump, desired):
            found.setdefault(c, []).append(scope)
    out["conflicts"] = sorted(found)
    # what to add to the GPO so that the policy holds our entries (the registry form of the fragment)
    out["gpo_values"] = gpo_values({k: desired[k] for k in out["conflicts"]})
    for c in out["conflicts"]:
        out["warnings"].append(
            f"Group Policy ({', '.join(found[c])}) already sets the Firefox policy {c}: it wins over "
            f"policies.json, so our {c} entries have no effect. Add them to that GPO: "
            + "; ".join(v["value"] for v in out["gpo_values"] if v["policy"] == c))


def firefox_plan(probe, certificate_paths, device_name="gem", import_enterprise_roots=True, prefer="auto",
                 state="present", assume_missing_dll=False, security_device=True):
    """Everything the Firefox policy role applies, from one read-only probe of the host.

    `probe`: {installs: [{path, dir, exists, machine}], gclib: [{path, given, exists, machine, reason}],
    gpo: {relative key: {name: data}}, policies_json: {path: text|null}, program_files: {x64, x86}}; its
    paths are the host's, environment variables expanded there (%ProgramFiles%: D:\\Programmes...).
    Returns {target, installs, desired_by_install, json: [{path, dir, text, changed, warnings}],
    registry: [entries], conflicts, warnings}.
    """
    installs = firefox_installs(probe.get("installs"))
    if not installs:
        looked = ", ".join((i.get("dir") or i.get("path", "?")) + (f" ({i['reason']})" if i.get("reason") else "")
                           for i in probe.get("installs") or [])
        raise WindowsPlanError("no Firefox install found on the host (looked in "
                               + (looked + ", " if looked else "")
                               + "the Mozilla registry keys of the machine and of loaded user hives, each profile's "
                               "AppData\\Local\\Mozilla Firefox and the Microsoft Store packages): install Firefox "
                               "first, or set windows_firefox_policies_firefox_dirs")
    warnings = []
    for i in installs:
        _install_gclib(i, probe, security_device, assume_missing_dll, warnings)
    target = firefox_target(gpo_present(probe.get("gpo")), prefer, [i["kind"] for i in installs])
    if prefer == "auto" and target == "registry":
        warnings.append("Firefox " + ", ".join(f"{i['path']} ({i['kind']})" for i in installs
                                               if i["kind"] != "machine")
                        + ": a Microsoft Store or per-user install, whose folder cannot hold a policies.json "
                          "users cannot change: the policies go to the machine GPO registry instead")

    def fragment(dll):
        return desired_fragment(certificate_paths, {device_name: dll} if dll else {}, import_enterprise_roots)

    out = {"target": target, "installs": installs, "json": [], "registry": [], "conflicts": [], "warnings": warnings,
           "gpo_values": []}
    if target == "registry" and gpo_present(probe.get("gpo")):
        warnings.append("target registry on a host with Firefox Group Policy: if a GPO manages "
                        "Certificates\\Install or SecurityDevices\\Add, each Group Policy refresh replaces those "
                        "lists and removes our values; add them to the GPO instead")
    if target == "registry":
        _registry_plan(out, probe, installs, fragment, state)
    else:
        _json_plan(out, probe, installs, fragment, state)
    return out


def firefox_checks(plan, probe_after, state="present", role="windows_firefox_policies"):
    """Checks after the run: the policy holds our entries, the DLL exists and matches Firefox."""
    out = []
    if plan["target"] == "registry":
        left = gpo_plan(probe_after.get("gpo"), plan["desired"], state)
        out.append(check(f"Firefox GPO registry {state}", not left,
                         "as planned" if not left else f"{len(left)} value(s) differ: "
                         + ", ".join(f"{e['path']}\\{e['name']}" for e in left), role))
    else:
        texts = probe_after.get("policies_json") or {}
        for j in plan["json"]:
            try:
                r = policies_json(texts.get(j["path"]), j["desired"], state, j["path"])
                ok, detail = not r["changed"], "as planned" if not r["changed"] else "our entries are not all there"
            except WindowsPlanError as e:
                ok, detail = False, str(e)
            out.append(check(f"policies.json {j['path']}", ok, detail, role))
    if state == "present":
        for c in plan.get("conflicts") or []:
            out.append(check(f"Firefox policy {c} not overridden by Group Policy", False,
                             f"Group Policy sets {c}, so our policies.json entries for it have no effect; add to the "
                             "GPO: " + "; ".join(v["value"] for v in plan.get("gpo_values") or [] if v["policy"] == c),
                             role))
    gclib = {c["path"]: c for c in probe_after.get("gclib") or []}
    for i in plan["installs"]:
        if not i.get("gclib") or state == "absent":
            continue
        c = gclib.get(i["gclib"], {})
        try:
            ok = bool(c.get("exists")) and _arch_of(c, "gclib.dll") == i["arch"]
            detail = f"{i['gclib']} {'is' if ok else 'is NOT'} a {_arch_label(i['arch'])} DLL present for {i['path']}"
        except WindowsPlanError as e:
            ok, detail = False, str(e)
        out.append(check(f"gclib.dll for {i['path']}", ok, detail, role))
    return out


def firefox_installs(probe_installs):
    """Firefox installs from the probe, each with its architecture and distribution folder."""
    out, seen = [], set()
    for i in probe_installs or []:
        if not i.get("exists", True) or i["path"].casefold() in seen:
            continue
        seen.add(i["path"].casefold())
        d = i.get("dir") or i["path"].rsplit("\\", 1)[0]
        out.append({"path": i["path"], "dir": d, "arch": _arch_of(i, "Firefox"),
                    "distribution": d + "\\distribution", "policies_json": d + "\\distribution\\policies.json",
                    "version": i.get("version"), "kind": i.get("kind") or "machine"})
    return out


def firefox_target(gpo_present, prefer="auto", kinds=()):
    """Where our policies go: `json` (distribution\\policies.json) unless `registry` is asked for, or a
    Firefox of `kinds` is a Microsoft Store build (its folder under WindowsApps cannot be written) or a
    per-user install (its folder belongs to the user, who could rewrite a policies.json there): those read
    the machine GPO registry, which only administrators write.

    `auto` never writes into HKLM\\SOFTWARE\\Policies\\Mozilla\\Firefox, even on a host with Firefox
    GPO policies: that key belongs to Group Policy, whose list policies (Certificates\\Install,
    SecurityDevices\\Add) are not additive, so each refresh would wipe our values and each run re-add
    them. Policies that Group Policy already sets are reported as conflicts instead (gpo_conflicts).
    """
    if prefer not in ("auto", "json", "registry"):
        raise WindowsPlanError(f"windows_firefox_policies_target must be auto, json or registry, got {prefer!r}")
    if prefer == "auto":
        return "registry" if {"store", "user"} & set(kinds or ()) else "json"
    return prefer


def gpo_present(dump):
    """True when the GPO key HKLM\\SOFTWARE\\Policies\\Mozilla\\Firefox holds any value."""
    return any(bool(v) for v in (dump or {}).values())


# SecurityDevices.Add / Delete: Firefox 114, ESR 102.12 (mozilla/policy-templates); older ones only
# know the deprecated flat form.
SECURITY_DEVICES_ADD_SINCE = ((114, 0), (102, 12))


def firefox_version(text):
    """(major, minor) of a Firefox ProductVersion ("128.5.0", "115.0esr"), or None when unreadable."""
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?", str(text or ""))
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def supports_security_devices_add(version):
    v = firefox_version(version)
    if v is None:
        return None
    new, esr = SECURITY_DEVICES_ADD_SINCE
    return v >= new or (v[0] == esr[0] and v >= esr)


def gpo_values(fragment):
    """The GPO registry values (mozilla/policy-templates form) that carry `fragment`: what an administrator
    adds to the GPO when Group Policy owns a policy. [{policy, value: "Software\\...\\Name = data"}]"""
    out = []
    for e in gpo_plan({}, fragment):
        rel = e["path"][len(FIREFOX_GPO_KEY) + 1:]
        out.append({"policy": rel.split("\\")[0],
                    "value": f"Software\\Policies\\Mozilla\\Firefox\\{rel}\\{e['name']} = {e['data']}"})
    return out


def gpo_conflicts(dump, desired):
    """Top-level policies we want that the GPO registry already sets: GPO wins for those."""
    tops = {k.split("\\")[0] for k, v in (dump or {}).items() if v and k}
    tops |= set((dump or {}).get("", {}) or {})
    return sorted(p for p in desired if p in tops)


def _reg_value(value, where):
    if isinstance(value, bool):
        return int(value), "dword"
    if isinstance(value, int):
        return value, "dword"
    if isinstance(value, str):
        return value, "string"
    raise WindowsPlanError(f"{where}: cannot render {value!r} as a registry value")


def _numbered(values):
    return [kv[1] for kv in sorted((int(k), v) for k, v in (values or {}).items() if str(k).isdigit())]


def gpo_plan(dump, desired, state="present", key=FIREFOX_GPO_KEY):
    """win_regedit entries that put the `desired` fragment into the Firefox GPO registry.

    `dump`: {relative key path: {value name: data}} of the existing GPO key ("" = the key itself).
    Lists (Certificates\\Install) are numbered values 1..n: ours are appended after the existing
    ones, `absent` removes ours and renumbers the rest. Scalars and dict entries are set; `absent`
    removes them only when they still hold our value.
    """
    if state not in ("present", "absent"):
        raise WindowsPlanError(f"state must be present or absent, got {state!r}")
    dump = dump or {}
    entries = []

    def walk(rel, obj):
        have = dump.get(rel, {}) or {}
        path = key + ("\\" + rel if rel else "")
        for name, value in obj.items():
            sub = f"{rel}\\{name}" if rel else name
            if isinstance(value, dict):
                walk(sub, value)
            elif isinstance(value, list):
                entries.extend(_list_entries(key + "\\" + sub, dump.get(sub, {}) or {}, value, state))
            else:
                data, vtype = _reg_value(value, sub)
                cur = have.get(name)
                if state == "present":
                    if cur is None or _reg_norm(cur) != data:
                        entries.append(_entry(path, name, data, vtype))
                elif cur is not None and _reg_norm(cur) == data:
                    entries.append(_entry(path, name, None, vtype, "absent"))

    walk("", desired or {})
    return entries


def _reg_norm(v):
    return int(v) if isinstance(v, bool) else v


def _list_entries(path, have, wanted, state):
    existing = _numbered(have)
    for v in wanted:
        if not isinstance(v, str):
            raise WindowsPlanError(f"{path}: list items must be strings, got {v!r}")
    if state == "present":
        final = existing + [v for v in dict.fromkeys(wanted) if v not in existing]
    else:
        final = [v for v in existing if v not in wanted]
    out = []
    for i, v in enumerate(final, 1):
        if have.get(str(i)) != v:
            out.append(_entry(path, str(i), v))
    for k in sorted((k for k in have if str(k).isdigit() and int(k) > len(final)), key=int):
        out.append(_entry(path, str(k), None, "string", "absent"))
    return out


def desired_fragment(certificate_paths, devices, import_enterprise_roots=None):
    """The shared Firefox policy fragment (module_utils/tokentrust_policies.desired_policies)."""
    try:
        return pol.desired_policies(certificate_paths, devices, import_enterprise_roots)
    except pol.PolicyError as e:
        raise WindowsPlanError(str(e)) from e


def policies_json(existing_text, desired, state="present", path="policies.json"):
    """New policies.json text for one install: {text, changed, added, removed, warnings}."""
    try:
        doc = pol.load_policies(existing_text or "", path)
        res = pol.plan_merge(doc, desired, state)
    except pol.PolicyError as e:
        raise WindowsPlanError(f"{e}: fix or remove that file, then run again") from e
    # Nothing of ours changed -> the file is left as it is (an administrator's formatting is kept).
    return {"text": pol.dump_policies(res.doc), "changed": res.changed, "doc": res.doc, **res.as_dict()}
