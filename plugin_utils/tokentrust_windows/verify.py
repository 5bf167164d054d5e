# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification and the key as far as a WinRM session can see it (role windows_verify)."""
from __future__ import annotations

from .common import WindowsPlanError
from .trust_store import normalize_thumbprint


# ---------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------
def check(name, ok, detail="", role=""):
    return {"name": name, "ok": bool(ok), "detail": detail, "role": role}


def check_stores(plan, present, role="windows_trust_store"):
    present = {k: {normalize_thumbprint(t) for t in (v or [])} for k, v in (present or {}).items()}
    out = []
    for i in plan.get("install", []):
        ok = i["thumbprint"] in present.get(i["store"], set())
        out.append(check(f"store {i['store']}: {i['name']}", ok,
                         f"{i['thumbprint']} {'present' if ok else 'MISSING'} in LocalMachine\\{i['store']}", role))
    for r in plan.get("remove", []):
        ok = r["thumbprint"] not in present.get(r["store"], set())
        state = "absent" if ok else "STILL PRESENT"
        out.append(check(f"store {r['store']}: {r['name']} removed", ok,
                         f"{r['thumbprint']} {state} in LocalMachine\\{r['store']}", role))
    return out


# win_regedit `type` -> the type win_reg_stat reports: a DWORD 1 and a REG_SZ "1" compare equal as strings,
# but Windows reads UAC's EnableLUA or a zone's 2500 only as a DWORD, so the type is part of the check.
REG_TYPES = {"string": "REG_SZ", "expandstring": "REG_EXPAND_SZ", "multistring": "REG_MULTI_SZ", "dword": "REG_DWORD",
             "qword": "REG_QWORD", "binary": "REG_BINARY", "none": "REG_NONE"}


def check_registry(entries, observed, role=""):
    """`observed`: one win_reg_stat result per entry, in the same order; value and type must both match."""
    if len(entries or []) != len(observed or []):
        raise WindowsPlanError(f"{len(entries or [])} planned registry entries but {len(observed or [])} observed")
    out = []
    for e, o in zip(entries or [], observed or []):
        exists = bool(o.get("exists"))
        have = o.get("raw_value", o.get("value"))
        where = f"{e['path']}\\{e['name']}" + (f" (hive {e['hive']})" if e.get("hive") else "")
        if e["state"] == "absent":
            ok, detail = not exists, f"{where} {'absent' if not exists else f'still {have!r}'}"
        else:
            want_type = REG_TYPES.get(str(e.get("type") or "string").casefold(), str(e.get("type")).upper())
            have_type = o.get("type")
            ok = exists and str(have) == str(e["data"]) and have_type == want_type
            detail = f"{where} = {have!r} ({have_type})" + ("" if ok else f", expected {e['data']!r} ({want_type})")
        out.append(check(where, ok, detail, role))
    return out


# ---------------------------------------------------------------------------------------------
# the key, as far as a WinRM session can see it (role windows_verify, win_tokentrust_token_probe)
# ---------------------------------------------------------------------------------------------
SCARD_ERRORS = {0x8010001D: "SCARD_E_NO_SERVICE", 0x8010002E: "SCARD_E_NO_READERS_AVAILABLE",
                0x8010000A: "SCARD_E_TIMEOUT", 0x80100017: "SCARD_E_READER_UNAVAILABLE",
                0x80100011: "SCARD_E_INVALID_VALUE", 0x80100066: "SCARD_W_UNRESPONSIVE_CARD"}
# What the test login of the manual does and a WinRM session cannot: said in every report.
TOKEN_NOT_VERIFIABLE = (
    "PIN entry: the CSP/KSP and Classic Client ask for the PIN in a dialog on the user's desktop; a WinRM "
    "session has no desktop (session 0, network logon), so no operation needing the PIN is attempted",
    "signing or TLS client authentication with the key (the manual's test login in a browser)",
    "certificate propagation of the card's certificates to the user's personal store (user session only)",
    "what the logged-on user's Firefox shows: the security device loads at the user's next Firefox start",
)


def _scard_error(code):
    if code in (None, ""):
        return None
    try:
        n = int(str(code), 16) if str(code).lower().startswith("0x") else int(code)
    except ValueError:
        return str(code)
    return f"0x{n:08X} ({SCARD_ERRORS.get(n, 'unknown')})"


def atr_matches(atr, registered_atr, mask=None):
    """Windows' ATR match of a card against a Calais\\SmartCards entry: same length and
    (atr & mask) == (registered & mask) byte by byte (hex strings; no mask = exact)."""
    try:
        a, r = bytes.fromhex(atr or ""), bytes.fromhex(registered_atr or "")
        m = bytes.fromhex(mask) if mask else b"\xff" * len(r)
    except ValueError:
        return False
    if not a or len(a) != len(r) or len(m) != len(r):
        return False
    return all((x & k) == (y & k) for x, y, k in zip(a, r, m))


def token_checks(probe, role="windows_verify", token=True):
    """Checks of the smart card side from the read-only token probe: services (always), then with `token`
    (the key is plugged in during the run) reader, token inserted, minidriver registered for the token's ATR.
    Nothing here needs the PIN."""
    probe = probe or {}
    out = service_checks(probe, role)
    if not token:
        return out
    return out + _token_present_checks(probe, role)


def service_checks(probe, role="windows_verify"):
    """The services and the policy the key needs, whether it is plugged in or not: Smart Card (SCardSvr),
    Certificate Propagation (CertPropSvc) and its Group Policy switch, Smart Card Device Enumeration."""
    out = []
    svc = probe.get("service") or {}
    svc_ok = bool(svc.get("exists")) and svc.get("start_type") != "Disabled"
    out.append(check("smart card service", svc_ok,
                     f"SCardSvr {svc.get('status')}, start {svc.get('start_type')}" if svc.get("exists")
                     else "SCardSvr (Smart Card service) does not exist", role))
    cp = probe.get("certprop") or {}
    cp_ok = bool(cp.get("exists")) and cp.get("start_type") == "Automatic" and cp.get("status") == "Running"
    out.append(check("certificate propagation service", cp_ok,
                     f"CertPropSvc {cp.get('status')}, start {cp.get('start_type')}"
                     + ("" if cp_ok else ": it copies the key's certificates into the user's personal store when the "
                        "key is inserted (what 'Tout enregistrer' of Classic Client Toolbox does by hand); set it to "
                        "Automatic and start it (role token_middleware, token_middleware_certprop)")
                     if cp.get("exists") else "CertPropSvc (Certificate Propagation) does not exist", role))
    # Group Policy "Turn on certificate propagation from smart card" (SmartCard.admx: HKLM\SOFTWARE\Policies\
    # Microsoft\Windows\CertProp, CertPropEnabled; 0 = disabled): with it off, CertPropSvc runs and copies nothing.
    pol = (probe.get("certprop_policy") or {}).get("enabled")
    out.append(check("certificate propagation policy", pol != 0,
                     "not set by Group Policy (propagation on)" if pol is None else
                     f"CertPropEnabled = {pol}" + ("" if pol != 0 else
                                                   ": Group Policy 'Turn on certificate propagation from smart card' "
                                                   "is disabled, so the key's certificates never reach the user's "
                                                   "store; ask the GPO owner to enable it"), role))
    # Smart Card Device Enumeration Service (ScDeviceEnum): creates the device nodes of inserted cards; disabled,
    # Windows does not see the card as a device (minidriver, certificate propagation).
    de = probe.get("scdeviceenum") or {}
    de_ok = bool(de.get("exists")) and de.get("start_type") != "Disabled"
    out.append(check("smart card device enumeration service", de_ok,
                     f"ScDeviceEnum {de.get('status')}, start {de.get('start_type')}"
                     + ("" if de_ok else ": disabled, Windows does not enumerate inserted cards; set it back to "
                                         "Manual (trigger start)")
                     if de.get("exists") else "ScDeviceEnum (Smart Card Device Enumeration Service) does not exist",
                     role))
    return out


def _token_present_checks(probe, role):
    out = []
    if probe.get("rds_session_host"):
        out.append(check("smart card reader", True, "not visible over WinRM on an RDS host: the key is redirected "
                         "into the user's remote session, which a WinRM session cannot see; check it from that "
                         "session (certutil -scinfo)", role))
        return out
    sc = probe.get("scard") or {}
    err = _scard_error(sc.get("context_error")) or _scard_error(sc.get("list_error"))
    readers = sc.get("readers") or []
    pnp = probe.get("pnp_readers") or []
    if readers:
        out.append(check("smart card reader", True, "readers: " + ", ".join(r.get("name", "?") for r in readers), role))
    else:
        why = f"WinSCard: {err}" if err else "WinSCard lists no reader"
        seen = ", ".join(f"{p.get('name')} ({p.get('status')})" for p in pnp)
        out.append(check("smart card reader", False, why + (f"; Plug and Play sees: {seen}" if seen
                                                            else "; no smart card reader in Plug and Play either: "
                                                                 "is the token plugged in?"), role))
    cards = [r for r in readers if r.get("present") and r.get("atr")]
    out.append(check("token inserted", bool(cards),
                     "; ".join(f"card in {r['name']}, ATR {r['atr']}" for r in cards) if cards
                     else "no card in any reader", role))
    registered = probe.get("registered_cards") or []
    for r in cards:
        hits = [c for c in registered if atr_matches(r["atr"], c.get("atr"), c.get("atr_mask"))
                and (c.get("minidriver") or c.get("ksp") or c.get("csp"))]
        detail = ("; ".join(f"{c['name']} ({c.get('view')}-bit): minidriver {c.get('minidriver') or '-'}, "
                            f"KSP {c.get('ksp') or '-'}, CSP {c.get('csp') or '-'}" for c in hits) if hits
                  else f"no Calais\\SmartCards entry matches ATR {r['atr']}: Windows has no minidriver for this "
                       "token (install or repair Classic Client)")
        out.append(check(f"minidriver for the token in {r['name']}", bool(hits), detail, role))
    return out


def report(host, checks, extra=None):
    """The per-host `tokentrust_windows_report` fact for the fleet report."""
    checks = list(checks or [])
    failed = [c["name"] for c in checks if not c.get("ok")]
    out = {"host": host, "platform": "windows", "ok": not failed, "checks": checks, "failed": failed,
           "summary": f"{len(checks) - len(failed)}/{len(checks)} checks passed"}
    out.update(extra or {})
    return out
