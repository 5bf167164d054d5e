# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The LocalMachine Root / CA stores (role windows_trust_store)."""
from __future__ import annotations

import re

from .common import _HEX40, STORE_MODULE_NAMES, TRUST_RECORD_KEY, WindowsPlanError


# ---------------------------------------------------------------------------------------------
# trust stores
# ---------------------------------------------------------------------------------------------
def normalize_thumbprint(value):
    t = re.sub(r"[\s:]", "", str(value or "")).upper()
    if not _HEX40.match(t):
        raise WindowsPlanError(f"{value!r} is not a SHA-1 thumbprint (40 hex digits, colons allowed)")
    return t


def store_for(ca):
    """LocalMachine store of one CA of the set: `windows_store` when given, else Root/CA by role."""
    name = ca.get("name", "?")
    ws = ca.get("windows_store")
    if ws is not None:
        if ws not in ("Root", "CA"):
            raise WindowsPlanError(f"CA {name!r}: windows_store must be Root or CA, got {ws!r}")
        return ws
    role = ca.get("role")
    if role == "root":
        return "Root"
    if role == "intermediate":
        return "CA"
    raise WindowsPlanError(f"CA {name!r}: cannot choose a store: role is {role!r} (root|intermediate) "
                           "and windows_store is not set; check the ca_certificates output")


def _removal(thumb, store, name):
    if store not in STORE_MODULE_NAMES:
        raise WindowsPlanError(f"record {TRUST_RECORD_KEY}\\{thumb} names store {store!r}, not Root or CA: "
                               "fix or delete that value")
    return {"thumbprint": thumb, "store": store, "store_name": STORE_MODULE_NAMES[store], "name": name}


def store_thumbprints(results):
    """{"Root": [...], "CA": [...]} from looped win_certificate_info results (item = system store name).

    A store name other than Root / CA is refused: win_certificate_info reads an unknown name as an
    empty store, which would make every certificate look missing.
    """
    back = {v: k for k, v in STORE_MODULE_NAMES.items()}
    out = {}
    for r in results or []:
        if r.get("item") not in back:
            raise WindowsPlanError(f"win_certificate_info was looped over store {r.get('item')!r}: read the system "
                                   f"stores {', '.join(back)} (an unknown name reads as an empty store)")
        out[back[r["item"]]] = [c["thumbprint"] for c in r.get("certificates") or []]
    return out


def store_plan(ca_set, present=None, recorded=None, remove_stale=False, state="present"):
    """What to put in / take out of LocalMachine\\Root and LocalMachine\\CA.

    `present`: {"Root": [thumbprints], "CA": [...]} read from the host (win_certificate_info);
    `recorded`: {thumbprint: store} of our record key (what we installed earlier).
    A certificate that was in the store before us is not recorded, so `absent` / stale removal
    never takes out a certificate that Windows or an administrator put there.
    """
    if state not in ("present", "absent"):
        raise WindowsPlanError(f"state must be present or absent, got {state!r}")
    present = {k: {normalize_thumbprint(t) for t in (v or [])} for k, v in (present or {}).items()}
    recorded = {normalize_thumbprint(t): s for t, s in (recorded or {}).items()}
    install, keep, seen = [], {}, set()
    for ca in ca_set or []:
        if not isinstance(ca, dict):
            raise WindowsPlanError(f"CA set entries must be dicts, got {ca!r}")
        thumb = normalize_thumbprint(ca.get("sha1"))
        if thumb in seen:
            continue
        seen.add(thumb)
        store = store_for(ca)
        if not (ca.get("pem") or ca.get("der_path") or ca.get("pem_path")):
            raise WindowsPlanError(f"CA {ca.get('name', thumb)!r} has neither pem nor der_path/pem_path")
        already = thumb in present.get(store, set())
        ours = recorded.get(thumb) == store
        item = {
            "thumbprint": thumb, "store": store, "store_name": STORE_MODULE_NAMES[store], "name": ca.get("name", thumb),
            "file": thumb + (".cer" if ca.get("der_path") else ".pem"),
            "src": ca.get("der_path") or ca.get("pem_path"), "pem": ca.get("pem"),
            "file_type": "der" if ca.get("der_path") else "pem",
            "already_present": already, "ours": ours, "expired": bool(ca.get("expired")),
        }
        install.append(item)
        if ours or not already:
            keep[thumb] = store
    remove, record_remove = [], []
    if state == "absent":
        for item in install:
            if item["ours"]:
                remove.append(_removal(item["thumbprint"], item["store"], item["name"]))
        gone = {i["thumbprint"] for i in install}
        for thumb, store in sorted(recorded.items()):
            if thumb not in gone and remove_stale:
                remove.append(_removal(thumb, store, thumb))
        record_remove = sorted(t for t in recorded if t in gone or remove_stale)
        return {"install": [], "remove": remove, "record": {}, "record_remove": record_remove}
    for thumb, store in sorted(recorded.items()):
        if thumb in seen:
            continue
        if remove_stale:
            remove.append(_removal(thumb, store, thumb))
            record_remove.append(thumb)
    record_add = {t: s for t, s in keep.items() if recorded.get(t) != s}
    return {"install": install, "remove": remove, "record": record_add, "record_remove": record_remove}
