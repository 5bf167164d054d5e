# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""UAC toggle with exact restore (role windows_uac)."""
from __future__ import annotations

import json

from .common import (
    UAC_KEY,
    UAC_MODES,
    UAC_PHASES,
    UAC_RECORD_KEY,
    UAC_RECORD_VALUE,
    UAC_VALUES,
    WindowsPlanError,
    _entry,
)


# ---------------------------------------------------------------------------------------------
# UAC
# ---------------------------------------------------------------------------------------------
def uac_mode_values(mode, disable_lua=True):
    if mode == "enabled":
        return {"EnableLUA": 1, "ConsentPromptBehaviorAdmin": 5, "PromptOnSecureDesktop": 1}
    if mode in ("disabled", "disable_for_install"):
        return {"EnableLUA": 0 if disable_lua else 1, "ConsentPromptBehaviorAdmin": 0, "PromptOnSecureDesktop": 0}
    raise WindowsPlanError(f"UAC mode {mode!r} has no fixed values")


def uac_current(properties):
    """{name: int|None} from win_reg_stat `properties` of the UAC key (None = value absent)."""
    out = {}
    for name in UAC_VALUES:
        p = (properties or {}).get(name)
        if p is None:
            out[name] = None
            continue
        raw = p.get("raw_value", p.get("value")) if isinstance(p, dict) else p
        try:
            out[name] = int(raw)
        except (TypeError, ValueError) as e:
            raise WindowsPlanError(f"{UAC_KEY}\\{name} holds {raw!r}, not a number: fix it by hand first") from e
    return out


def uac_record_encode(values, mode):
    return json.dumps({"version": 1, "mode": mode, "values": {k: values.get(k) for k in UAC_VALUES}},
                      sort_keys=True)


def uac_record_decode(text):
    """The recorded original values, or None when there is no record."""
    if text in (None, ""):
        return None
    where = f"{UAC_RECORD_KEY}\\{UAC_RECORD_VALUE}"
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise WindowsPlanError(f"{where} is not readable JSON ({e}): restore UAC by hand, then delete it") from e
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise WindowsPlanError(f"{where} has an unknown format: restore UAC by hand, then delete it")
    vals = doc.get("values")
    if not isinstance(vals, dict) or set(vals) != set(UAC_VALUES):
        raise WindowsPlanError(f"{where} does not hold {', '.join(UAC_VALUES)}: restore UAC by hand, then delete it")
    for k, v in vals.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise WindowsPlanError(f"{where}: {k} is {v!r}, not a number or null")
    return dict(vals)


def uac_plan(mode, phase, current, record_text=None, disable_lua=True, install_pending=True):
    """The UAC steps for one phase; `before` runs before the install, `after` after it.

    Crash safety: the original values are written on the host (one REG_SZ value, one atomic write)
    BEFORE anything is changed, and never overwritten while it exists; any later run that finds
    the record (phase `after`, or mode `keep`) restores exactly those values (absent ones deleted)
    and deletes the record.

    `install_pending` (disable_for_install, phase `before`): whether the middleware role has anything
    to install or remove on this host (`middleware_pending`). When it has not, UAC is left alone (no
    record, no disable, no reboot), so a run with nothing to install changes nothing; a leftover
    record of an interrupted run is restored instead.
    """
    if mode not in UAC_MODES:
        raise WindowsPlanError(f"windows_uac_mode must be one of {', '.join(UAC_MODES)}, got {mode!r}")
    if phase not in UAC_PHASES:
        raise WindowsPlanError(f"UAC phase must be before or after, got {phase!r}")
    current = {k: (current or {}).get(k) for k in UAC_VALUES}
    record = uac_record_decode(record_text)
    plan = {"record_write": None, "record_delete": False, "target": None, "set": [], "reboot": False,
            "messages": [], "restore": False}
    if mode == "disable_for_install":
        if phase == "before" and not install_pending:
            if record is not None:
                plan["target"], plan["record_delete"], plan["restore"] = record, True, True
                plan["messages"].append("nothing to install; restoring the UAC values recorded by an earlier, "
                                        "interrupted run")
            else:
                plan["messages"].append("disable_for_install: nothing to install or remove on this host, "
                                        "UAC left as it is")
        elif phase == "before":
            if record is None:
                plan["record_write"] = uac_record_encode(current, mode)
            else:
                plan["messages"].append("a record of the original UAC values from an earlier, interrupted run "
                                        "exists: kept as is (it holds the values to restore)")
            plan["target"] = uac_mode_values(mode, disable_lua)
        elif record is not None:
            plan["target"], plan["record_delete"], plan["restore"] = record, True, True
        else:
            plan["messages"].append("no UAC record on the host: nothing to restore")
    elif mode == "keep":
        if record is not None:
            plan["target"], plan["record_delete"], plan["restore"] = record, True, True
            plan["messages"].append("restoring the UAC values recorded by an earlier, interrupted run")
    elif phase == "before":
        plan["target"] = uac_mode_values(mode, disable_lua)
        if record is not None:
            plan["record_delete"] = True
            plan["messages"].append(f"explicit mode {mode!r} replaces the UAC record of an interrupted run")
    if plan["target"] is not None:
        for name in UAC_VALUES:
            want = plan["target"][name]
            if current[name] != want:
                plan["set"].append(_entry(UAC_KEY, name, want, "dword", "absent" if want is None else "present"))
    expected = plan["target"]
    if expected is None and mode in ("enabled", "disabled"):
        expected = uac_mode_values(mode, disable_lua)
    plan["expected"] = [_entry(UAC_KEY, n, v, "dword", "absent" if v is None else "present")
                        for n, v in (expected or {}).items()]
    plan["record_expected"] = ("absent" if (phase == "after" or mode != "disable_for_install" or not install_pending)
                               else "present")
    plan["reboot"] = any(e["name"] == "EnableLUA" for e in plan["set"])
    plan["changed"] = bool(plan["set"] or plan["record_write"] or plan["record_delete"])
    return plan
