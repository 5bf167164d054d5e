# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report: per-host status model and the self-contained HTML page.

Pure Python, no Ansible import and no network: used by `library/fleet_report.py` on the controller.

Input per host (what role `fleet_report` gathers, the `fleet_report_host` fact), all keys optional:

    {"platform": "linux" | "darwin" | "windows", "system": "Linux",
     "profiles": [firefox_profiles_info profiles], "profiles_warnings": [...],
     "databases": [nss_info databases], "module": {"name": "gem", "library": "/usr/lib/pkcs11/libgclib.so"},
     "policies": {"checked": true, "path": ..., "candidates": [...], "exists": bool, "content": text or None,
                  "expected_install": [{"name", "path", "exists"}], "device": {"name", "library"}},
     "windows": tokentrust_windows_report,
     "error": {"task": ..., "message": ...}}

A host with no data at all was not reached by the run that gathered (role `fleet_report` records every gathering
failure of a reached host as `error`): its status is "unreachable" (amber, not failed), whatever an older run
found, with when it was last seen and last converged from the controller-side fleet state
(module_utils/tokentrust_state.py, the `state` of its entry).

Levels, worst first: "failed" (red, needs action), "unreachable" (amber: not reached, state unknown), "warning"
(amber), "ok" (green); "info" notes change nothing.
"""
from __future__ import annotations

import datetime as _dt
import html
import json

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_policies import (
    SECURITY_DEVICES_KEYWORDS,
    PolicyError,
    flat_security_devices,
    load_policies,
)
from ansible.module_utils.tokentrust_trust import encoded_trust

FORMAT = "tokentrust-fleet-report/1"
FAILED, WARNING, OK, INFO = "failed", "warning", "ok", "info"
UNREACHABLE = "unreachable"
RANK = {FAILED: 0, UNREACHABLE: 1, WARNING: 2, OK: 3, INFO: 4}
NOT_RUN = "not run"
UNKNOWN = "unknown"  # a test login said ok, but too long ago (or without a time): not counted as ok

DEFAULT_SETTINGS = {
    "expiry_warning_days": 90,   # amber below this many days left
    "expiry_critical_days": 30,  # red below this many days left (and when expired)
    "token_required": False,     # a host without a test-login result is amber (else only "not run")
    "token_max_age_hours": 168,  # an "ok" test login older than this (or without checked_at) is "unknown", amber
    "check_policies": True,      # Linux/macOS: policies.json must hold our entries
    "title": "tokentrust fleet report",
}


class ReportError(TokentrustError):
    """Input the report cannot use (the message says which host and what)."""

    def __init__(self, message):
        super().__init__("report", message)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def now_utc():
    return _dt.datetime.now(_dt.timezone.utc)


def parse_time(value):
    """ISO 8601 (with Z or an offset, or naive = UTC) to an aware datetime; None when empty or unparsable."""
    if value in (None, ""):
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    s = str(value).strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    try:
        t = _dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def days_left(not_after, now):
    t = parse_time(not_after)
    if t is None:
        return None
    return int((t - now).total_seconds() // 86400)


def expiry_level(days, settings):
    if days is None:
        return OK
    if days < 0 or days < settings["expiry_critical_days"]:
        return FAILED
    if days < settings["expiry_warning_days"]:
        return WARNING
    return OK


def expiry_words(what, days):
    if days < 0:
        return "%s expired %d days ago" % (what, -days)
    if days == 0:
        return "%s expires today" % what
    return "%s expires in %d day%s" % (what, days, "" if days == 1 else "s")


def worst(levels):
    levels = [lv for lv in levels if lv != INFO]
    return min(levels, key=RANK.get) if levels else OK


def _reason(level, text, part):
    return {"level": level, "text": text, "part": part}


def reason_text(reason):
    """A reason in words, with its what-to-do when it has one (the module's `reasons`, a console)."""
    return reason["text"] + (". What to do: " + reason["todo"] if reason.get("todo") else "")


def _fp(value):
    return str(value or "").replace(":", "").replace(" ", "").upper()


def settings_with_defaults(settings):
    out = dict(DEFAULT_SETTINGS)
    for k, v in (settings or {}).items():
        if v is not None:
            out[k] = v
    for k in ("expiry_warning_days", "expiry_critical_days", "token_max_age_hours"):
        try:
            out[k] = int(out[k])
        except (TypeError, ValueError) as exc:
            raise ReportError("%s must be a whole number of %s, got %r"
                              % (k, "hours" if k.endswith("hours") else "days", out[k])) from exc
    if out["token_max_age_hours"] <= 0:
        raise ReportError("token_max_age_hours must be at least 1, got %d" % out["token_max_age_hours"])
    if out["expiry_critical_days"] > out["expiry_warning_days"]:
        raise ReportError("expiry_critical_days (%d) must not exceed expiry_warning_days (%d)"
                          % (out["expiry_critical_days"], out["expiry_warning_days"]))
    return out


# ---------------------------------------------------------------------------------------------
# the CA set
# ---------------------------------------------------------------------------------------------
def ca_entries(ca_set, settings, now):
    """The CA set as the report shows it (no PEM), with days left recomputed for `now`."""
    out = []
    for ca in ca_set or []:
        if not isinstance(ca, dict) or not ca.get("name"):
            raise ReportError("every CA of the set needs a name (the tokentrust_ca_set fact); got %r" % (ca,))
        d = days_left(ca.get("not_after"), now)
        if d is None and ca.get("days_left") is not None:
            d = int(ca["days_left"])
        out.append({
            "name": ca["name"], "role": ca.get("role") or "", "sha256": _fp(ca.get("sha256")),
            "subject": ca.get("subject") or "", "not_after": ca.get("not_after") or "",
            "days_left": d, "level": expiry_level(d, settings),
            "nss_trust": encoded_trust(ca.get("nss_trust") or ca.get("trust") or "C,,"),
        })
    return out


# ---------------------------------------------------------------------------------------------
# the token test login (reports/token/<host>.json or the tokentrust_token_report fact)
# ---------------------------------------------------------------------------------------------
# The key's states as users meet them (the test login's error.card_state, decided on the host by
# module_utils/tokentrust_nss/token.py, which also gives error.todo: what to do), in the report's words.
CARD_STATE_WORDS = {
    "pcscd_missing": "pcscd is not installed",
    "pcscd_not_running": "pcscd is not running",
    "no_reader": "no card reader",
    "no_card": "reader without a key",
    "no_token": "no key plugged in",
    "card_pulled": "key pulled out during the test login",
    "several_cards": "several keys plugged in",
    "other_card": "not the holder's key",
    "pin_final_try": "PIN at its final try",
    "pin_locked": "PIN blocked",
    "puk_locked": "PIN and PUK blocked",
}


def _without(message, todo):
    """The message without the what-to-do text it may end with (shown on its own line)."""
    if message and todo and todo in message:
        message = message.replace(todo, "").rstrip(" :;,.")
    return message


def normalise_token(data, settings, now):
    """The test-login result in one shape: status ok / failed / "not run", holder, certificates, error, and the key's
    state (card_state, its words, todo) when the key's state explains the failure."""
    if not data:
        return {"status": NOT_RUN, "holder": None, "http_status": None, "error": None, "url": None,
                "checked_at": None, "age_hours": None, "stale": None, "certificates": [], "problems": [],
                "client_cert_requested": None, "client_cert_sent": None, "client_cert_accepted": None,
                "login_certificate": None, "card_state": None, "card_state_words": None, "todo": None}
    if not isinstance(data, dict):
        raise ReportError("the token report must be a JSON object, got %s" % type(data).__name__)
    status = data.get("status")
    if status is None:
        status = OK if data.get("ok") else FAILED
    status = str(status).lower()
    if status not in (OK, FAILED, NOT_RUN):
        raise ReportError("token report status must be ok, failed or 'not run', got %r" % status)
    err = data.get("error")
    card_state = todo = None
    if isinstance(err, dict):
        card_state = err.get("card_state") if isinstance(err.get("card_state"), str) else None
        todo = err.get("todo") if isinstance(err.get("todo"), str) and err.get("todo") else None
        err = _without(err.get("message"), todo) or err.get("kind") or json.dumps(err, sort_keys=True)
    http_status = data.get("http_status")
    if http_status is None and isinstance(data.get("tls"), dict):
        http_status = data["tls"].get("status")
    certs = []
    for c in data.get("certificates") or []:
        d = days_left(c.get("not_after"), now)
        if d is None and c.get("days_left") is not None:
            d = int(c["days_left"])
        certs.append({"holder": c.get("holder") or c.get("subject") or c.get("nickname") or "certificate",
                      "issuer": c.get("issuer") or "", "not_after": c.get("not_after") or "",
                      "sha256": _fp(c.get("sha256")), "days_left": d, "level": expiry_level(d, settings)})
    # staleness: an "ok" is only as good as its time; none, or older than token_max_age_hours, is "unknown"
    checked = parse_time(data.get("checked_at"))
    age = round((now - checked).total_seconds() / 3600.0, 1) if checked else None
    stale = None
    if checked is None:
        stale = "the result has no check time (checked_at)"
    elif age > settings["token_max_age_hours"]:
        stale = "checked %s, %d hours ago (more than %d)" % (
            data.get("checked_at"), int(age), settings["token_max_age_hours"])
    if status == OK and stale:
        status = UNKNOWN
    if status == OK and data.get("client_cert_requested") is False:
        status, err = FAILED, err or "the server did not ask for a client certificate: the key was not used"
    cert = data.get("login_certificate") if isinstance(data.get("login_certificate"), dict) else None
    return {"status": status, "holder": data.get("holder"), "http_status": http_status,
            "error": err, "url": data.get("url"), "checked_at": data.get("checked_at"), "age_hours": age,
            "stale": stale, "certificates": certs, "problems": list(data.get("problems") or []),
            "client_cert_requested": data.get("client_cert_requested"),
            "client_cert_sent": data.get("client_cert_sent"), "client_cert_accepted": data.get("client_cert_accepted"),
            "login_certificate": {k: cert.get(k) for k in ("holder", "issuer", "serial", "not_after", "sha256")}
            if cert else None,
            "card_state": card_state, "card_state_words": CARD_STATE_WORDS.get(card_state, card_state), "todo": todo}


# ---------------------------------------------------------------------------------------------
# policies.json
# ---------------------------------------------------------------------------------------------
def check_policies(pol):
    """Findings for the policies.json Firefox reads on the host: (summary dict, reasons)."""
    reasons = []
    path = pol.get("path") or (pol.get("candidates") or ["policies.json"])[0]
    out = {"path": path, "exists": bool(pol.get("exists")), "certificates_ok": False, "device_ok": False,
           "missing_certificates": [], "missing_files": [], "ok": False}
    if not pol.get("exists"):
        reasons.append(_reason(FAILED, "policies.json missing (%s)" % path, "policies"))
        return out, reasons
    try:
        doc = load_policies(pol.get("content") or "", path)
    except PolicyError as exc:
        reasons.append(_reason(FAILED, "policies.json unreadable: %s" % exc, "policies"))
        return out, reasons
    policies = doc.get("policies") if isinstance(doc.get("policies"), dict) else {}
    certs = policies.get("Certificates") if isinstance(policies.get("Certificates"), dict) else {}
    install = certs.get("Install") or []
    for e in pol.get("expected_install") or []:
        if e["path"] not in install and e["path"].rsplit("/", 1)[-1] not in install:
            out["missing_certificates"].append(e["name"])
            reasons.append(_reason(FAILED, "policies.json lacks CA %s (Certificates.Install %s)"
                                   % (e["name"], e["path"]), "policies"))
        elif e.get("exists") is False:
            out["missing_files"].append(e["path"])
            reasons.append(_reason(FAILED, "CA file %s listed in policies.json is missing on the host" % e["path"],
                                   "policies"))
    out["certificates_ok"] = not out["missing_certificates"] and not out["missing_files"]
    dev = pol.get("device") or {}
    if dev.get("name"):
        sd = policies.get("SecurityDevices") if isinstance(policies.get("SecurityDevices"), dict) else {}
        add = sd.get("Add") if isinstance(sd.get("Add"), dict) else None
        new_form = add is not None or "Delete" in sd
        # Firefox ignores the deprecated flat entries as soon as Add or Delete is there
        devices = dict(add or {}) if new_form else flat_security_devices(doc)
        have = devices.get(dev["name"])
        same_lib = [n for n, lib in devices.items() if dev.get("library") and lib == dev["library"]]
        if have is None and not same_lib:
            reasons.append(_reason(FAILED, "policies.json lacks security device %s" % dev["name"], "policies"))
        else:
            out["device_ok"] = True
            if have is not None and dev.get("library") and have != dev["library"]:
                reasons.append(_reason(WARNING, "policies.json registers security device %s with %s, expected %s"
                                       % (dev["name"], have, dev["library"]), "policies"))
        if dev["name"] in (sd.get("Delete") or []):
            reasons.append(_reason(WARNING, "policies.json also lists security device %s in SecurityDevices.Delete"
                                   % dev["name"], "policies"))
        if [k for k in sd if k not in SECURITY_DEVICES_KEYWORDS] and new_form:
            reasons.append(_reason(WARNING, "policies.json mixes the deprecated flat SecurityDevices form with "
                                   "Add/Delete: Firefox ignores the flat entries", "policies"))
    else:
        out["device_ok"] = True
    out["ok"] = out["certificates_ok"] and out["device_ok"]
    return out, reasons


# ---------------------------------------------------------------------------------------------
# one host
# ---------------------------------------------------------------------------------------------
def _profile_label(p):
    name = p.get("name") or ""
    path = p.get("path") or ""
    owner = p.get("owner")
    if isinstance(owner, dict):
        owner = owner.get("name")
    base = "%s (%s)" % (name, path) if name else path
    return base + (" of %s" % owner if owner else "")


def _nss_profiles(raw, cas, reasons):
    profiles = raw.get("profiles") or []
    dbs = {d.get("path"): d for d in raw.get("databases") or []}
    module = raw.get("module") or {}
    by_fp = {c["sha256"]: c for c in cas}
    out = []
    for p in profiles:
        label = _profile_label(p)
        owner = p.get("owner")
        entry = {"name": p.get("name") or "", "path": p.get("path") or "", "kind": p.get("kind") or "",
                 "format": p.get("format") or "", "owner": owner.get("name") if isinstance(owner, dict) else owner,
                 "in_use": bool(p.get("in_use")),
                 "missing": [], "wrong_trust": [], "module_ok": None, "error": None, "status": OK,
                 "certificates": []}
        if p.get("format") == "dbm":
            entry["status"] = WARNING
            reasons.append(_reason(WARNING, "profile %s uses the legacy dbm format (cert8.db): left alone; start a "
                                   "current Firefox on it once" % label, "profiles"))
            out.append(entry)
            continue
        if p.get("format") == "none":
            entry["status"] = INFO
            reasons.append(_reason(INFO, "profile %s has no certificate database yet (Firefox makes it at its first "
                                   "start; policies.json covers it)" % label, "profiles"))
            out.append(entry)
            continue
        db = dbs.get(p.get("path"))
        if db is None:
            entry["status"] = FAILED
            entry["error"] = "not read"
            reasons.append(_reason(FAILED, "profile %s was not read" % label, "profiles"))
            out.append(entry)
            continue
        if db.get("error"):
            entry["status"] = FAILED
            entry["error"] = db["error"]
            reasons.append(_reason(FAILED, "profile %s could not be read: %s" % (label, db["error"]), "profiles"))
            out.append(entry)
            continue
        have = {_fp(c.get("sha256")): c for c in db.get("certificates") or []}
        for ca in cas:
            c = have.get(ca["sha256"])
            if c is None:
                entry["missing"].append(ca["name"])
                reasons.append(_reason(FAILED, "profile %s lacks CA %s" % (label, ca["name"]), "certificates"))
            elif encoded_trust(c.get("trust") or "") != ca["nss_trust"]:
                entry["wrong_trust"].append(ca["name"])
                reasons.append(_reason(FAILED, "profile %s: CA %s has trust '%s', expected '%s'"
                                       % (label, ca["name"], c.get("trust"), ca["nss_trust"]), "certificates"))
        entry["certificates"] = [{"name": by_fp[fp]["name"], "trust": c.get("trust")}
                                 for fp, c in have.items() if fp in by_fp]
        if module.get("name"):
            mods = db.get("modules") or []
            named = [m for m in mods if m.get("name") == module["name"]]
            ok = any(not module.get("library") or m.get("library") == module["library"] for m in named)
            entry["module_ok"] = ok
            if not named:
                reasons.append(_reason(FAILED, "module %s not registered in profile %s" % (module["name"], label),
                                       "module"))
            elif not ok:
                reasons.append(_reason(FAILED, "module %s of profile %s loads %s, expected %s"
                                       % (module["name"], label, named[0].get("library"), module["library"]),
                                       "module"))
        if entry["missing"] or entry["wrong_trust"] or entry["module_ok"] is False:
            entry["status"] = FAILED
        out.append(entry)
    return out


def _windows(win, reasons):
    checks = list(win.get("checks") or [])
    if win.get("check_mode"):
        reasons.append(_reason(WARNING, "Windows checks were not run (check mode)", "windows"))
    elif not checks:
        reasons.append(_reason(WARNING, "Windows: no checks were recorded", "windows"))
    for c in checks:
        if not c.get("ok"):
            reasons.append(_reason(FAILED, "Windows %s: %s" % (c.get("name"), c.get("detail") or "failed"),
                                   "windows"))
    stores = [c for c in checks if str(c.get("name", "")).startswith("store ")]
    return {"ok": bool(win.get("ok")) and not win.get("check_mode"), "summary": win.get("summary") or "",
            "checks": checks, "stores": stores, "failed": [c.get("name") for c in checks if not c.get("ok")]}


def _when(stamp):
    return stamp if parse_time(stamp) is not None else "never"


def state_entry(state):
    """The host's controller-side state as the report shows it (module_utils/tokentrust_state.py fields)."""
    state = state if isinstance(state, dict) else {}
    converged = [state.get("last_converged") or "", state.get("pull_converged") or ""]
    out = {k: state.get(k) for k in ("last_seen", "last_converged", "pull_converged", "last_attempt",
                                     "last_unreachable", "unreachable_msg", "last_result")}
    out["converged_at"] = max(converged) or None
    out["converged_by"] = None if not out["converged_at"] else "pull" if converged[1] > converged[0] else "push"
    if not state.get("last_attempt") and not out["converged_at"]:
        out["converged"] = None  # no converge run recorded for it (only seen by other playbooks, or no state)
    else:
        out["converged"] = bool(out["converged_at"]) and out["converged_at"] >= (state.get("last_attempt") or "")
    return out


def build_host(name, raw, cas, token, settings, now, state=None):
    """The status model of one host: status, reasons in words, and the parts behind them."""
    reasons = []
    seen = state_entry(state)
    host = {"name": name, "platform": "unknown", "status": OK, "reasons": reasons, "profiles": [],
            "module": None, "policies": None, "windows": None, "token": normalise_token(token, settings, now),
            "expiry": [], "counts": {}, "reached": bool(raw), "state": seen}
    if raw:  # seen by this very report (its time is the report's): no time stamp that changes the file every run
        seen["last_seen"] = None
    _host_reasons(raw, seen, reasons)
    if raw:
        host["platform"] = raw.get("platform") or str(raw.get("system") or "unknown").lower()
    if raw and not raw.get("error"):
        _host_parts(host, raw, cas, settings, reasons)
    # test login
    tok = host["token"]
    _token_reasons(tok, settings, reasons)
    # expiry: the CA set (trust breaks on every host) and the certificates on this host's token
    _expiry(host, cas, tok, reasons)
    known = [e["days_left"] for e in host["expiry"] if e["days_left"] is not None]
    host["next_expiry_days"] = min(known) if known else None
    host["status"] = worst(r["level"] for r in reasons) if raw else UNREACHABLE  # never an old run's colour
    reasons.sort(key=lambda r: (bool(raw) or r["level"] != UNREACHABLE, RANK[r["level"]]))  # unreachable first
    host["counts"] = {
        "profiles": sum(1 for p in host["profiles"] if p["status"] != INFO),
        "profiles_ok": sum(1 for p in host["profiles"] if p["status"] == OK),
        "certificates_missing": sum(len(p["missing"]) + len(p["wrong_trust"]) for p in host["profiles"]),
    }
    return host


def _host_reasons(raw, seen, reasons):
    """The host as a whole: unreachable, its last converge run incomplete, or its gathering failed."""
    if not raw:
        why = (": " + seen["unreachable_msg"]) if seen["unreachable_msg"] and seen["last_unreachable"] and \
            seen["last_unreachable"] >= (seen["last_seen"] or "") else ""
        reasons.append(_reason(UNREACHABLE, "unreachable: not reached by this report%s; last seen %s, last converged "
                               "%s%s. Nothing shown for it is current" % (
                                   why, _when(seen["last_seen"]), _when(seen["converged_at"]),
                                   " (pull mode)" if seen["converged_by"] == "pull" else ""), "host"))
    elif seen["converged"] is False:
        reasons.append(_reason(INFO, "the last converge run did not complete on it (%s); re-run it with --limit "
                               "@<state dir>/not_converged" % (seen["last_result"] or "interrupted"), "host"))
    elif raw.get("error"):
        err = raw["error"] if isinstance(raw["error"], dict) else {"message": str(raw["error"])}
        reasons.append(_reason(FAILED, "gathering failed%s: %s" % (
            " at '%s'" % err["task"] if err.get("task") else "", err.get("message") or "unknown error"), "host"))


def _host_parts(host, raw, cas, settings, reasons):
    """What was gathered: the Windows part, or the NSS profiles, the security module and the policies."""
    if host["platform"] == "windows":
        host["windows"] = _windows(raw.get("windows") or {}, reasons)
        return
    for w in raw.get("profiles_warnings") or []:
        reasons.append(_reason(WARNING, "profile finder: %s" % w, "profiles"))
    host["profiles"] = _nss_profiles(raw, cas, reasons)
    if not host["profiles"]:
        reasons.append(_reason(WARNING, "no Firefox profile found (profiles created later are covered by "
                               "policies.json)", "profiles"))
    module = raw.get("module") or {}
    if module.get("name"):
        nss = [p for p in host["profiles"] if p["module_ok"] is not None]
        host["module"] = {"name": module["name"], "library": module.get("library"),
                          "ok": all(p["module_ok"] for p in nss) if nss else None,
                          "registered": sum(1 for p in nss if p["module_ok"]), "profiles": len(nss)}
    pol = raw.get("policies") or {}
    if settings["check_policies"] and pol.get("checked", True) and pol:
        host["policies"], more = check_policies(pol)
        reasons.extend(more)


def _token_reasons(tok, settings, reasons):
    """The test login's outcome in words."""
    if tok["status"] == FAILED:
        why = tok["error"] or "; ".join(tok["problems"]) or "no reason given"
        if tok["card_state"]:
            reasons.append(dict(_reason(FAILED, "test login failed, %s: %s" % (tok["card_state_words"], why), "token"),
                                card_state=tok["card_state"], todo=tok["todo"]))
        else:
            reasons.append(_reason(FAILED, "test login failed: %s" % why, "token"))
    elif tok["status"] == NOT_RUN:
        reasons.append(_reason(WARNING if settings["token_required"] else INFO, "test login not run", "token"))
    elif tok["status"] == UNKNOWN:
        reasons.append(_reason(WARNING, "test login result unknown: it said ok, but %s; run playbooks/verify.yml "
                               "again" % tok["stale"], "token"))
    elif tok["http_status"] not in (None, 200):
        reasons.append(_reason(WARNING, "test login: the test page answered HTTP %s" % tok["http_status"], "token"))


def _expiry(host, cas, tok, reasons):
    """host["expiry"]: the CA set's certificates, then those on the token, with a reason for each one not OK."""
    for ca in cas:
        host["expiry"].append({"name": ca["name"], "kind": "CA", "not_after": ca["not_after"],
                               "days_left": ca["days_left"], "level": ca["level"]})
        if ca["level"] != OK and ca["days_left"] is not None:
            reasons.append(_reason(ca["level"], expiry_words("CA %s" % ca["name"], ca["days_left"]), "expiry"))
    for c in tok["certificates"]:
        host["expiry"].append({"name": c["holder"], "kind": "token", "not_after": c["not_after"],
                               "days_left": c["days_left"], "level": c["level"]})
        if c["level"] != OK and c["days_left"] is not None:
            reasons.append(_reason(c["level"], expiry_words("token certificate %s" % c["holder"], c["days_left"]),
                                   "expiry"))


# ---------------------------------------------------------------------------------------------
# the fleet
# ---------------------------------------------------------------------------------------------
def build_report(hosts, ca_set, settings=None, now=None, generated=None):
    """The whole report (the fleet.json document). `hosts`: [{"name", "data", "token"}]."""
    settings = settings_with_defaults(settings)
    now = now or now_utc()
    cas = ca_entries(ca_set, settings, now)
    seen = set()
    models = []
    for h in hosts or []:
        if not isinstance(h, dict) or not h.get("name"):
            raise ReportError("every host needs a name, got %r" % (h,))
        if h["name"] in seen:
            raise ReportError("host %s is listed twice" % h["name"])
        seen.add(h["name"])
        try:
            models.append(build_host(h["name"], h.get("data"), cas, h.get("token"), settings, now, h.get("state")))
        except ReportError as exc:
            raise ReportError("host %s: %s" % (h["name"], exc)) from exc
    models.sort(key=lambda m: (RANK[m["status"]], m["name"]))
    tokens = [m["token"]["status"] for m in models]
    summary = {
        "hosts": len(models),
        OK: sum(1 for m in models if m["status"] == OK),
        WARNING: sum(1 for m in models if m["status"] == WARNING),
        FAILED: sum(1 for m in models if m["status"] == FAILED),
        UNREACHABLE: sum(1 for m in models if m["status"] == UNREACHABLE),
        "not_converged": sorted(m["name"] for m in models if m["state"]["converged"] is False),
        "profiles": sum(m["counts"]["profiles"] for m in models),
        "profiles_ok": sum(m["counts"]["profiles_ok"] for m in models),
        "token_ok": tokens.count(OK), "token_failed": tokens.count(FAILED), "token_not_run": tokens.count(NOT_RUN),
        "token_unknown": tokens.count(UNKNOWN),
        "windows_hosts": sum(1 for m in models if m["platform"] == "windows"),
        "cas": len(cas),
        "next_expiry_days": min([e["days_left"] for e in timeline(cas, models) if e["days_left"] is not None],
                                default=None),
    }
    return {
        "format": FORMAT,
        "title": settings["title"],
        "generated": generated or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {k: settings[k] for k in ("expiry_warning_days", "expiry_critical_days", "token_required",
                                              "token_max_age_hours", "check_policies")},
        "summary": summary,
        "ca_set": cas,
        "hosts": models,
        "timeline": timeline(cas, models),
    }


def timeline(cas, models):
    """Expiry entries: each CA once, each token certificate once (with the hosts it was seen on)."""
    out = [{"label": "CA " + c["name"], "kind": "CA", "not_after": c["not_after"], "days_left": c["days_left"],
            "level": c["level"], "hosts": []} for c in cas]
    tok = {}
    for m in models:
        for c in m["token"]["certificates"]:
            key = c["sha256"] or (c["holder"], c["not_after"])
            if key not in tok:
                tok[key] = {"label": "token " + c["holder"], "kind": "token", "not_after": c["not_after"],
                            "days_left": c["days_left"], "level": c["level"], "hosts": []}
            tok[key]["hosts"].append(m["name"])
    out.extend(tok.values())
    out.sort(key=lambda e: (e["days_left"] is None, e["days_left"] if e["days_left"] is not None else 0, e["label"]))
    return out


def to_json(report):
    return json.dumps(report, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
_E = html.escape
COLOURS = {OK: "#1e8e3e", WARNING: "#e8a10c", FAILED: "#d93025", INFO: "#5f6368", NOT_RUN: "#5f6368",
           UNREACHABLE: "#e8a10c"}
WORDS = {OK: "OK", WARNING: "Attention", FAILED: "Action needed", UNREACHABLE: "Unreachable"}

CSS = """
*{box-sizing:border-box}body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:0;color:#202124;background:#f1f3f4}header{background:#202124;color:#fff;padding:16px 24px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#bdc1c6}main{padding:16px 24px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:16px}.card{background:#fff;border-radius:8px;
padding:12px 16px;min-width:140px;box-shadow:0 1px 2px rgba(0,0,0,.15);border-top:6px solid #5f6368}
.card b{display:block;font-size:28px}.card.ok{border-color:#1e8e3e}.card.warning{border-color:#e8a10c}
.card.failed{border-color:#d93025}section{background:#fff;border-radius:8px;padding:12px 16px;margin-bottom:16px;
box-shadow:0 1px 2px rgba(0,0,0,.15)}h2{font-size:17px;margin:4px 0 10px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e0e0e0;vertical-align:top}
th{background:#e8eaed;cursor:pointer;user-select:none;white-space:nowrap}th:after{content:" \\2195";color:#9aa0a6}
th[aria-sort=ascending]:after{content:" \\25B2";color:#202124}th[aria-sort=descending]:after{content:" \\25BC";
color:#202124}tr.ok td:first-child{border-left:6px solid #1e8e3e}tr.warning td:first-child{border-left:6px solid
#e8a10c}tr.failed td:first-child{border-left:6px solid #d93025}tr.failed{background:#fce8e6}
tr.warning{background:#fef7e0}.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;
font-weight:600;font-size:12px;white-space:nowrap}.b-ok{background:#1e8e3e}.b-warning{background:#e8a10c}
.b-failed{background:#d93025}.b-info,.b-notrun{background:#5f6368}ul.reasons{margin:0;padding-left:18px}
li.failed{color:#a50e0e;font-weight:600}li.warning{color:#8a5a00}li.info{color:#5f6368}
details summary{cursor:pointer;color:#1a73e8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#5f6368}code{font-size:12px}svg text{font:12px system-ui,"DejaVu Sans",sans-serif}
table.inner td,table.inner th{font-size:12px;padding:3px 6px;background:none;cursor:default}
table.inner th:after{content:""}#hosts>tbody>tr>td:first-child{white-space:nowrap}
tr.unreachable td:first-child{border-left:6px dashed #e8a10c}tr.unreachable{background:repeating-linear-gradient(
135deg,#fef7e0 0 10px,#fdf0c8 10px 20px)}.b-unreachable{background:#e8a10c;color:#202124;border:1px dashed #202124}
.card.unreachable{border-color:#e8a10c;border-top-style:dashed}li.unreachable{color:#8a5a00;font-weight:600}
.seen{font-size:12px}li .todo{color:#202124;font-weight:400}
"""

JS = """
(function(){
  var table=document.getElementById('hosts');
  var heads=table.tHead.rows[0].cells;
  function key(row,i){var c=row.cells[i];var v=c.getAttribute('data-sort');return v===null?c.textContent.trim():v;}
  function sortBy(i){
    var th=heads[i];var asc=th.getAttribute('aria-sort')!=='ascending';
    for(var k=0;k<heads.length;k++){heads[k].removeAttribute('aria-sort');}
    th.setAttribute('aria-sort',asc?'ascending':'descending');
    var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
    var numeric=rows.every(function(r){var v=key(r,i);return v!==''&&!isNaN(Number(v));});
    rows.sort(function(a,b){var x=key(a,i),y=key(b,i);
      var d=numeric?Number(x)-Number(y):x.localeCompare(y,undefined,{numeric:true,sensitivity:'base'});
      if(d===0){d=key(a,0).localeCompare(key(b,0));}
      return asc?d:-d;});
    rows.forEach(function(r){body.appendChild(r);});
  }
  for(var i=0;i<heads.length;i++){(function(i){heads[i].addEventListener('click',function(){sortBy(i);});
    heads[i].setAttribute('tabindex','0');
    heads[i].addEventListener('keydown',function(e){if(e.key==='Enter'){sortBy(i);}});})(i);}
})();
"""


def _badge(level, text=None):
    cls = {NOT_RUN: "notrun"}.get(level, level)
    return '<span class="badge b-%s">%s</span>' % (_E(cls), _E(text or WORDS.get(level, level)))


def _ok_cell(ok, yes="yes", no="no", unknown="n/a"):
    if ok is None:
        return '<td data-sort="1" class="muted">%s</td>' % unknown
    return '<td data-sort="%d">%s</td>' % (2 if ok else 0, _badge(OK, yes) if ok else _badge(FAILED, no))


def _host_row(m):
    st = m["status"]
    seen = m.get("state") or {}
    when = ""
    if seen.get("converged_at") or st == UNREACHABLE:
        when = '<br><span class="muted seen">seen %s<br>converged %s</span>' % (
            _E(seen.get("last_seen") or "never") if not m.get("reached") else "by this report",
            _E(seen.get("converged_at") or "never"))
    cells = ['<td data-sort="%s"><b>%s</b><br><span class="muted">%s</span>%s</td>'
             % (_E(m["name"]), _E(m["name"]), _E(m["platform"]), when),
             '<td data-sort="%d">%s</td>' % (RANK[st], _badge(st))]
    if m["platform"] == "windows" and m["windows"]:
        w = m["windows"]
        bad = len(w["failed"])
        cells.append('<td data-sort="-1" class="muted">Windows</td>')
        stores = list(w["stores"])
        cells.append(_ok_cell(all(c.get("ok") for c in stores) if stores else None, "stores ok", "stores: %d bad"
                              % sum(1 for c in stores if not c.get("ok"))))
        cells.append('<td class="muted" data-sort="1">%s</td>' % _E(w["summary"]))
        cells.append(_ok_cell(w["ok"], "checks ok", "%d failed" % bad))
    else:
        c = m["counts"]
        cells.append('<td class="num" data-sort="%d">%d/%d</td>' % (c["profiles_ok"], c["profiles_ok"], c["profiles"]))
        cells.append(_ok_cell(None if not m["profiles"] else c["certificates_missing"] == 0,
                              "all present", "%d missing" % c["certificates_missing"]))
        mod = m["module"]
        cells.append(_ok_cell(None if not mod or mod["ok"] is None else mod["ok"],
                              "registered", "missing %d/%d" % (mod["profiles"] - mod["registered"], mod["profiles"])
                              if mod else "no"))
        pol = m["policies"]
        cells.append(_ok_cell(None if pol is None else pol["ok"], "in place",
                              "missing" if pol and not pol["exists"] else "incomplete"))
    tok = m["token"]
    if st == UNREACHABLE and tok["status"] != NOT_RUN:  # an old result: never shown in its colour
        tok_html = _badge(NOT_RUN, "last known: %s" % tok["status"]) + ' <span class="muted">%s</span>' % _E(
            tok["checked_at"] or "")
    elif tok["status"] == OK:
        tok_html = _badge(OK, "ok") + " " + _E(tok["holder"] or "")
        if tok["http_status"] is not None:
            tok_html += ' <span class="muted">HTTP %s</span>' % _E(str(tok["http_status"]))
    elif tok["status"] == FAILED:
        tok_html = _badge(FAILED, "failed") + " " + (
            "<b>%s</b>: " % _E(tok["card_state_words"]) if tok["card_state"] else "") + _E(tok["error"] or "")
    elif tok["status"] == UNKNOWN:
        tok_html = _badge(WARNING, "unknown") + " " + _E("ok, but %s" % tok["stale"])
    else:
        tok_html = _badge(NOT_RUN, "not run")
    cells.append('<td data-sort="%d">%s</td>' % ({FAILED: 0, UNKNOWN: 1, NOT_RUN: 1, OK: 2}[tok["status"]], tok_html))
    nx = m["next_expiry_days"]
    nx_level = worst([e["level"] for e in m["expiry"]]) if m["expiry"] else OK
    cells.append('<td class="num" data-sort="%s" style="color:%s">%s</td>'
                 % ("" if nx is None else nx, COLOURS[nx_level], "n/a" if nx is None else "%d days" % nx))
    shown = [r for r in m["reasons"] if r["level"] != INFO] or m["reasons"]
    items = []
    for r in shown:
        todo = '<br><span class="todo">What to do: %s</span>' % _E(r["todo"]) if r.get("todo") else ""
        items.append('<li class="%s">%s%s</li>' % (_E(r["level"]), _E(r["text"]), todo))
    reasons = "".join(items)
    cells.append('<td data-sort="%d"><ul class="reasons">%s</ul>%s</td>'
                 % (len([r for r in m["reasons"] if r["level"] in (FAILED, WARNING)]),
                    reasons or '<li class="info">nothing to do</li>', _details(m)))
    return '<tr class="%s" data-host="%s" data-status="%s">%s</tr>' % (_E(st), _E(m["name"]), _E(st), "".join(cells))


def _details(m):
    parts = []
    if m["profiles"]:
        rows = "".join(
            "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
                _badge(p["status"], p["status"]), _E(p["name"]), "<code>%s</code>" % _E(p["path"]),
                _E(p["kind"]), _E(", ".join("%s (%s)" % (c["name"], c["trust"]) for c in p["certificates"]) or "-"),
                _E(p["error"] or ("module ok" if p["module_ok"] else "module missing" if p["module_ok"] is False
                                  else "-")))
            for p in m["profiles"])
        parts.append('<table class="inner"><tr><th>status</th><th>profile</th><th>path</th><th>kind</th>'
                     '<th>CA certificates (trust)</th><th>module</th></tr>%s</table>' % rows)
    if m["policies"]:
        p = m["policies"]
        parts.append("<p>policies.json <code>%s</code>: %s</p>" % (
            _E(p["path"]), "in place" if p["ok"] else "missing" if not p["exists"] else "incomplete"))
    if m["windows"]:
        rows = "".join("<tr><td>%s</td><td>%s</td><td>%s</td></tr>" % (
            _badge(OK if c.get("ok") else FAILED, "ok" if c.get("ok") else "failed"), _E(str(c.get("name"))),
            _E(str(c.get("detail") or ""))) for c in m["windows"]["checks"])
        parts.append('<table class="inner"><tr><th>check</th><th>name</th><th>detail</th></tr>%s</table>' % rows)
    tok = m["token"]
    if tok["certificates"]:
        rows = "".join("<tr><td>%s</td><td>%s</td><td>%s</td></tr>" % (
            _E(c["holder"]), _E(c["not_after"]), "n/a" if c["days_left"] is None else "%d days" % c["days_left"])
            for c in tok["certificates"])
        parts.append('<table class="inner"><tr><th>token certificate</th><th>not after</th><th>left</th></tr>%s'
                     '</table>' % rows)
    if not parts:
        return ""
    return "<details><summary>details</summary>%s</details>" % "".join(parts)


def timeline_svg(entries, now, settings, width=960):
    """Inline SVG: one bar per certificate from today to its expiry, coloured by level, threshold lines."""
    row, left, right, top = 24, 300, 90, 34
    if not entries:
        return '<p class="muted">No certificate to show.</p>'
    dated = [(e, parse_time(e["not_after"])) for e in entries]
    ends = [d[1] for d in dated if d[1] is not None]
    span_end = max(ends + [now + _dt.timedelta(days=365)])
    span_end = min(span_end, now + _dt.timedelta(days=365 * 25))
    start = now - _dt.timedelta(days=30)
    total = (span_end - start).total_seconds() or 1.0
    plot = width - left - right

    def x(t):
        t = min(max(t, start), span_end)
        return left + plot * (t - start).total_seconds() / total

    height = top + row * len(entries) + 30
    out = ['<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'role="img" aria-label="Certificate expiry timeline">' % (width, height, width, height),
           '<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>' % (width, height)]
    years = range(start.year + 1, span_end.year + 1)
    step = max(1, len(years) // 10 + (1 if len(years) % 10 else 0)) if len(years) > 10 else 1
    for yr in list(years)[::step]:
        xx = x(_dt.datetime(yr, 1, 1, tzinfo=_dt.timezone.utc))
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e0e0e0"/>' % (xx, top - 8, xx, height - 14))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#5f6368">%d</text>' % (xx, top - 12, yr))
    for days, colour in ((settings["expiry_critical_days"], COLOURS[FAILED]),
                         (settings["expiry_warning_days"], COLOURS[WARNING])):
        xx = x(now + _dt.timedelta(days=days))
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-dasharray="4 3"/>'
                   % (xx, top - 4, xx, height - 14, colour))
    xn = x(now)
    out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#202124" stroke-width="2"/>'
               % (xn, top - 8, xn, height - 14))
    out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#202124">today</text>' % (xn, height - 2))
    for i, (e, t) in enumerate(dated):
        y = top + i * row
        colour = COLOURS[e["level"]]
        hosts = (" (%s)" % ", ".join(e["hosts"][:3]) + ("…" if len(e["hosts"]) > 3 else "")) if e["hosts"] else ""
        label = (e["label"] + hosts)
        if len(label) > 44:
            label = label[:43] + "…"
        out.append('<text x="%d" y="%d" fill="#202124"><title>%s</title>%s</text>'
                   % (8, y + 15, _E(e["label"] + hosts), _E(label)))
        if t is None:
            out.append('<text x="%d" y="%d" fill="#5f6368">unknown expiry</text>' % (left, y + 15))
            continue
        x0, x1 = (x(t), xn) if t < now else (xn, x(t))
        out.append('<rect class="bar %s" x="%.1f" y="%d" width="%.1f" height="16" rx="3" fill="%s">'
                   '<title>%s: %s</title></rect>' % (_E(e["level"]), x0, y + 3, max(2.0, x1 - x0), colour,
                                                     _E(e["label"]), _E(e["not_after"])))
        words = "expired %d d ago" % -e["days_left"] if e["days_left"] < 0 else "%d days" % e["days_left"]
        out.append('<text x="%.1f" y="%d" fill="%s">%s</text>' % (x(t) + 5 if t >= now else xn + 5, y + 15, colour,
                                                                  _E(words)))
    out.append("</svg>")
    return "".join(out)


def render_html(report, now=None):
    """The self-contained page (inline CSS, JS and SVG; no external resource)."""
    settings = settings_with_defaults(dict(report["settings"], title=report.get("title")))
    now = now or parse_time(report["generated"]) or now_utc()
    s = report["summary"]
    cards = [("hosts", s["hosts"], "hosts", ""), ("ok", s[OK], "fine", OK),
             ("warning", s[WARNING], "attention", WARNING),
             ("failed", s[FAILED], "need action", FAILED),
             ("unreachable", s.get(UNREACHABLE, 0), "unreachable (not reached: state unknown)", UNREACHABLE),
             ("profiles", "%d/%d" % (s["profiles_ok"], s["profiles"]), "profiles compliant", ""),
             ("token", "%d/%d" % (s["token_ok"], s["hosts"]), "test logins ok (%d failed, %d not run, %d unknown)"
              % (s["token_failed"], s["token_not_run"], s.get("token_unknown", 0)),
              FAILED if s["token_failed"] else ""),
             ("expiry", "n/a" if s["next_expiry_days"] is None else "%d d" % s["next_expiry_days"],
              "until the next expiry", expiry_level(s["next_expiry_days"], settings)
              if s["next_expiry_days"] is not None else "")]
    cards_html = "".join('<div class="card %s" id="card-%s"><b>%s</b>%s</div>' % (_E(cls), _E(k), _E(str(v)), _E(t))
                         for k, v, t, cls in cards)
    rows = "".join(_host_row(m) for m in report["hosts"])
    ca_rows = "".join(
        '<tr class="%s"><td>%s</td><td>%s</td><td><code>%s</code></td><td>%s</td><td class="num" data-sort="%s">%s'
        '</td></tr>' % (_E(c["level"]), _E(c["name"]), _E(c["role"]), _E(c["sha256"][:23]), _E(c["not_after"]),
                        "" if c["days_left"] is None else c["days_left"],
                        "n/a" if c["days_left"] is None else "%d days" % c["days_left"]) for c in report["ca_set"])
    title = report.get("title") or DEFAULT_SETTINGS["title"]
    overall = FAILED if s[FAILED] else UNREACHABLE if s.get(UNREACHABLE) else WARNING if s[WARNING] else OK
    headline = ("All %d hosts are fine." % s["hosts"] if overall == OK else
                "%d of %d hosts need action, %d need attention%s." % (
                    s[FAILED], s["hosts"], s[WARNING],
                    ", %d unreachable" % s[UNREACHABLE] if s.get(UNREACHABLE) else ""))
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">",
        "<title>%s</title><style>%s</style></head><body>" % (_E(title), CSS),
        "<header><h1>%s</h1><p id=\"headline\" data-status=\"%s\">%s Generated %s. Amber below %d days, red below "
        "%d days before expiry.</p></header><main>" % (_E(title), overall, _E(headline), _E(report["generated"]),
                                                       settings["expiry_warning_days"],
                                                       settings["expiry_critical_days"]),
        '<div class="cards">%s</div>' % cards_html,
        '<section><h2>Hosts</h2><p class="muted">Click a column header to sort.</p>'
        '<table id="hosts"><thead><tr><th>Host</th><th aria-sort="ascending">Status</th><th>Profiles ok</th>'
        '<th>CA certificates</th><th>Module</th><th>Policies</th><th>Test login</th><th>Next expiry</th>'
        '<th>What to do</th></tr></thead><tbody>%s</tbody></table></section>' % rows,
        '<section><h2>Expiry timeline</h2>%s</section>' % timeline_svg(report["timeline"], now, settings),
        '<section><h2>CA set</h2><table class="inner" id="cas"><tr><th>CA</th><th>role</th><th>SHA-256</th>'
        '<th>not after</th><th>left</th></tr>%s</table></section>' % ca_rows,
        "</main><script>%s</script></body></html>\n" % JS,
    ])
