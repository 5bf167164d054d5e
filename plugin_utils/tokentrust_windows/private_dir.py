# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Admin-only folders (role windows_private_dir)."""
from __future__ import annotations

import re

from .common import WindowsPlanError

# ---------------------------------------------------------------------------------------------
# admin-only folders (role windows_private_dir)
# ---------------------------------------------------------------------------------------------
# Well-known accounts by SID only: their names are localized (a French Windows names its Administrators group
# Administrateurs),
# and ansible-core's Ansible.ModuleUtils.SID translates a name with the host's own language.
ADMINISTRATORS_SID = "S-1-5-32-544"
SYSTEM_SID = "S-1-5-18"
USERS_SID = "S-1-5-32-545"
ADMIN_SIDS = (ADMINISTRATORS_SID, SYSTEM_SID)
WELL_KNOWN_SIDS = {ADMINISTRATORS_SID: "the Administrators group", SYSTEM_SID: "the local system account",
                   USERS_SID: "the Users group"}
_ANY_SID = re.compile(r"^S-1-\d+(-\d+)+$")


def _sid(value, what):
    v = str(value or "").strip()
    if not _ANY_SID.match(v):
        raise WindowsPlanError(f"{what}: {value!r} is not a SID: give accounts as SIDs (S-1-5-32-544 for the "
                               "Administrators group, S-1-5-18 for the system account, S-1-5-32-545 for Users): "
                               "account names are localized and fail on a Windows in another language")
    return v.upper()


def private_aces(readers=()):
    """The explicit ACL of an admin-only folder: full control for Administrators and SYSTEM, read for
    `readers` (SIDs)."""
    out = [{"sid": s, "rights": "FullControl"} for s in ADMIN_SIDS]
    for r in readers or ():
        s = _sid(r, "windows_private_dir_readers")
        if s not in ADMIN_SIDS:
            out.append({"sid": s, "rights": "ReadAndExecute"})
    return out


def private_chain(path):
    """The folders to create admin-only for `path`: itself and its parents from the drive's second
    level down (C:\\ProgramData\\tokentrust\\certs -> [C:\\ProgramData\\tokentrust, ...\\certs]); the
    drive and its top-level folder (C:\\ProgramData, owned by the system) are not touched."""
    p = str(path or "").replace("/", "\\").rstrip("\\")
    m = re.match(r"^([A-Za-z]:)((?:\\[^\\]+)+)$", p)
    if not m or any(part in ("", ".", "..") for part in m.group(2).split("\\")[1:]):
        raise WindowsPlanError(f"{path!r} is not an absolute local Windows folder (C:\\...): give a folder such as "
                               "C:\\ProgramData\\tokentrust\\certs")
    parts = m.group(2).split("\\")[1:]
    start = 2 if len(parts) > 1 else 1
    return [m.group(1) + "\\" + "\\".join(parts[:i]) for i in range(start, len(parts) + 1)]


def private_dir_problems(folders, owners=ADMIN_SIDS):
    """Why folders of the chain cannot be trusted, from win_tokentrust_private_dir_probe's `folders` (owner read
    as a SID); empty list: all fine."""
    ok = {_sid(o, "windows_private_dir_owners") for o in owners or ()}
    allowed = " or ".join(f"{o} ({WELL_KNOWN_SIDS[o]})" if o in WELL_KNOWN_SIDS else o for o in sorted(ok))
    out = []
    for f in folders or []:
        where = f.get("path")
        if not f.get("exists"):
            continue
        if f.get("reparse") or not f.get("isdir"):
            kind = "a link or junction" if f.get("reparse") else "not a folder"
            out.append(f"{where} exists but is {kind}: remove it (and check what put it there), then run again")
        elif str(f.get("owner_sid") or "").upper() not in ok:
            who = f.get("owner_sid") or "an unknown account"
            if f.get("owner_name"):
                who = f"{f['owner_name']} ({who})"
            out.append(f"{where} exists and is owned by {who}, not by {allowed}: a standard user can create "
                       "folders in ProgramData, so its content cannot be trusted. Check it, delete it, then run again")
    return out
