"""The fleet report model (module_utils/tokentrust_report.py): green / amber / red rules, JSON shape, HTML page.

Windows hosts cannot run here: their part is tested with SAMPLE tokentrust_windows_report data (named as such),
in the shape plugin_utils/tokentrust_windows/ `report()` builds."""
import copy
import datetime as dt
import json
import re

import pytest
from ansible.module_utils import tokentrust_report as tr

from plugin_utils.tokentrust_windows import check as win_check
from plugin_utils.tokentrust_windows import report as win_report

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
SETTINGS = tr.settings_with_defaults({})
LIB = "/usr/lib/pkcs11/libgclib.so"


def _iso(days):
    return (NOW + dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def ca_set(root_days=3000, inter_days=2000):
    return [
        {"name": "Root CA", "nickname": "Root CA", "sha256": "AA:" * 31 + "AA", "role": "root", "nss_trust": "C,,",
         "not_after": _iso(root_days), "pem": "-----BEGIN CERTIFICATE-----..."},
        {"name": "Classe 3 Plus", "nickname": "Classe 3 Plus", "sha256": "BB" * 32, "role": "intermediate",
         "nss_trust": ",,", "not_after": _iso(inter_days)},
    ]


def profile(name="default-esr", path=None, fmt="sql", owner="alice"):
    return {"name": name, "path": path or "/home/alice/.mozilla/firefox/x.%s" % name, "kind": "firefox",
            "format": fmt, "in_use": False, "owner": {"name": owner, "uid": 1000, "gid": 1000}}


def database(path, certs=("AA" * 32, "BB" * 32), trusts=("C,,", ",,"), module=LIB, error=None):
    return {"path": path, "error": error,
            "certificates": [{"nickname": "n%d" % i, "sha256": fp, "trust": t} for i, (fp, t) in
                             enumerate(zip(certs, trusts))],
            "modules": [] if module is None else [{"name": "gem", "library": module, "slots": []}]}


def policies(install=("/ca/root_ca.pem", "/ca/classe_3_plus.pem"), devices=None, exists=True, raw=None,
             files_exist=True):
    doc = {"policies": {"Certificates": {"Install": list(install)},
                        "SecurityDevices": {"Add": devices if devices is not None else {"gem": LIB}}}}
    return {"checked": True, "path": "/etc/firefox/policies/policies.json",
            "candidates": ["/etc/firefox/policies/policies.json"], "exists": exists,
            "content": raw if raw is not None else (json.dumps(doc) if exists else None),
            "expected_install": [{"name": "Root CA", "path": "/ca/root_ca.pem", "exists": files_exist},
                                 {"name": "Classe 3 Plus", "path": "/ca/classe_3_plus.pem", "exists": True}],
            "device": {"name": "gem", "library": LIB}}


def linux_host(**over):
    p = profile()
    raw = {"platform": "linux", "system": "Linux", "profiles": [p], "databases": [database(p["path"])],
           "module": {"name": "gem", "library": LIB}, "policies": policies()}
    raw.update(over)
    return raw


def token_ok(days=700, **over):
    t = {"host": "ws", "status": "ok", "holder": "JEAN DUPONT", "http_status": 200, "error": None,
         "url": "https://127.0.0.1:8443/", "checked_at": _iso(0),
         "certificates": [{"holder": "JEAN DUPONT", "issuer": "CN=Classe 3 Plus", "not_after": _iso(days),
                           "days_left": days, "sha256": "CC" * 31 + "%02X" % (days % 256)}]}
    t.update(over)
    return t


def build(raw, token=None, cas=None, settings=None):
    st = tr.settings_with_defaults(settings or {})
    return tr.build_host("ws", raw, tr.ca_entries(ca_set() if cas is None else cas, st, NOW), token, st, NOW)


def texts(host, level=None):
    return [r["text"] for r in host["reasons"] if level is None or r["level"] == level]


# ---------------------------------------------------------------------------------------------
# the rules, as a table: (case, raw data, token, settings, expected status, expected reason or None)
# ---------------------------------------------------------------------------------------------
def _p2():
    a, b = profile("default-esr"), profile("work", path="/home/alice/p/work")
    return a, b


RULES = [
    ("all in place, login ok", linux_host(), token_ok(), {}, "ok", None),
    ("login not run, not required", linux_host(), None, {}, "ok", "test login not run"),
    ("login not run, required", linux_host(), None, {"token_required": True}, "warning", "test login not run"),
    ("login failed", linux_host(), token_ok(status="failed", error={"kind": "wrong_pin", "message": "wrong PIN"}),
     {}, "failed", "test login failed: wrong PIN"),
    ("login failed, only problems", linux_host(), token_ok(status="failed", error=None, problems=["HTTP 403"]), {},
     "failed", "test login failed: HTTP 403"),
    ("login ok but page not 200", linux_host(), token_ok(http_status=500), {}, "warning",
     "test login: the test page answered HTTP 500"),
    ("profile lacks a CA",
     linux_host(databases=[database(profile()["path"], certs=("AA" * 32,), trusts=("C,,",))]), token_ok(), {},
     "failed", "profile default-esr (/home/alice/.mozilla/firefox/x.default-esr) of alice lacks CA Classe 3 Plus"),
    ("CA with the wrong trust",
     linux_host(databases=[database(profile()["path"], trusts=(",,", ",,"))]), token_ok(), {}, "failed",
     "CA Root CA has trust ',,', expected 'C,,'"),
    ("module not registered", linux_host(databases=[database(profile()["path"], module=None)]), token_ok(), {},
     "failed", "module gem not registered in profile default-esr"),
    ("module with another library", linux_host(databases=[database(profile()["path"], module="/opt/other.so")]),
     token_ok(), {}, "failed", "loads /opt/other.so, expected /usr/lib/pkcs11/libgclib.so"),
    ("database unreadable", linux_host(databases=[database(profile()["path"], error="SEC_ERROR_BAD_DATABASE")]),
     token_ok(), {}, "failed", "could not be read: SEC_ERROR_BAD_DATABASE"),
    ("profile not read at all", linux_host(databases=[]), token_ok(), {}, "failed", "was not read"),
    ("legacy dbm profile", linux_host(profiles=[profile(fmt="dbm")], databases=[]), token_ok(), {}, "warning",
     "uses the legacy dbm format"),
    ("profile without databases yet", linux_host(profiles=[profile(), profile("default", fmt="none")]), token_ok(),
     {}, "ok", "has no certificate database yet"),
    ("no profile at all", linux_host(profiles=[], databases=[]), token_ok(), {}, "warning",
     "no Firefox profile found"),
    ("policies.json missing", linux_host(policies=policies(exists=False)), token_ok(), {}, "failed",
     "policies.json missing (/etc/firefox/policies/policies.json)"),
    ("policies.json not checked", linux_host(policies=policies(exists=False)), token_ok(), {"check_policies": False},
     "ok", None),
    ("policies.json lacks a CA", linux_host(policies=policies(install=("/ca/root_ca.pem",))), token_ok(), {},
     "failed", "policies.json lacks CA Classe 3 Plus (Certificates.Install /ca/classe_3_plus.pem)"),
    ("policies.json lists a CA file that is gone", linux_host(policies=policies(files_exist=False)), token_ok(), {},
     "failed", "CA file /ca/root_ca.pem listed in policies.json is missing on the host"),
    ("policies.json lacks the device", linux_host(policies=policies(devices={})), token_ok(), {}, "failed",
     "policies.json lacks security device gem"),
    ("device under another library", linux_host(policies=policies(devices={"gem": "/usr/lib64/pkcs11/libgclib.so"})),
     token_ok(), {}, "warning", "registers security device gem with /usr/lib64/pkcs11/libgclib.so"),
    ("same library under another name", linux_host(policies=policies(devices={"Classic Client": LIB})), token_ok(),
     {}, "ok", None),
    ("policies.json not JSON", linux_host(policies=policies(raw="{nope")), token_ok(), {}, "failed",
     "policies.json unreadable"),
    ("flat device form ignored next to Add", linux_host(policies=dict(policies(), content=json.dumps(
        {"policies": {"Certificates": {"Install": ["/ca/root_ca.pem", "/ca/classe_3_plus.pem"]},
                      "SecurityDevices": {"gem": LIB, "Add": {"other": "/x.so"}}}}))), token_ok(), {}, "failed",
     "policies.json lacks security device gem"),
    ("token certificate expires soon (amber)", linux_host(), token_ok(days=60), {}, "warning",
     "token certificate JEAN DUPONT expires in 60 days"),
    ("token certificate expires very soon (red)", linux_host(), token_ok(days=10), {}, "failed",
     "token certificate JEAN DUPONT expires in 10 days"),
    ("token certificate expired", linux_host(), token_ok(days=-3), {}, "failed",
     "token certificate JEAN DUPONT expired 3 days ago"),
    ("thresholds are settings", linux_host(), token_ok(days=60), {"expiry_warning_days": 50,
                                                                  "expiry_critical_days": 20}, "ok", None),
    ("unreachable host", None, None, {}, "unreachable", "unreachable: not reached by this report; last seen never, "
     "last converged never. Nothing shown for it is current"),
    ("gathering failed", {"platform": "linux", "error": {"task": "Fleet report | Read", "message": "no cffi"}},
     token_ok(), {}, "failed", "gathering failed at 'Fleet report | Read': no cffi"),
]


@pytest.mark.parametrize("case,raw,token,settings,status,reason", RULES, ids=[r[0] for r in RULES])
def test_rules(case, raw, token, settings, status, reason):
    host = build(copy.deepcopy(raw), token=token, settings=settings)
    assert host["status"] == status, (case, host["reasons"])
    if reason:
        assert any(reason in t for t in texts(host)), (reason, texts(host))
    if status == "ok":
        assert not texts(host, "failed") and not texts(host, "warning")


@pytest.mark.parametrize("days,level", [
    (None, "ok"), (-1, "failed"), (0, "failed"), (29, "failed"), (30, "warning"), (89, "warning"), (90, "ok"),
    (4000, "ok"),
])
def test_expiry_levels(days, level):
    assert tr.expiry_level(days, SETTINGS) == level


@pytest.mark.parametrize("root_days,status,reason", [
    (3000, "ok", None),
    (45, "warning", "CA Root CA expires in 45 days"),
    (1, "failed", "CA Root CA expires in 1 day"),
    (-10, "failed", "CA Root CA expired 10 days ago"),
])
def test_ca_expiry_marks_every_host(root_days, status, reason):
    host = build(linux_host(), token=token_ok(), cas=ca_set(root_days=root_days))
    assert host["status"] == status
    if reason:
        assert reason in texts(host)
    assert [e["name"] for e in host["expiry"]] == ["Root CA", "Classe 3 Plus", "JEAN DUPONT"]


def test_reasons_are_sorted_worst_first_and_parts_named():
    raw = linux_host(databases=[database(profile()["path"], certs=(), trusts=(), module=None)],
                     profiles=[profile(), profile("old", fmt="dbm")])
    host = build(raw, token=None, settings={"token_required": True})
    levels = [r["level"] for r in host["reasons"]]
    assert levels == sorted(levels, key=tr.RANK.get)
    assert {r["part"] for r in host["reasons"]} >= {"certificates", "module", "profiles", "token"}
    assert host["counts"] == {"profiles": 2, "profiles_ok": 0, "certificates_missing": 2}
    assert host["module"] == {"name": "gem", "library": LIB, "ok": False, "registered": 0, "profiles": 1}


def test_two_profiles_one_broken():
    a, b = _p2()
    raw = linux_host(profiles=[a, b], databases=[database(a["path"]), database(b["path"], certs=("AA" * 32,),
                                                                                 trusts=("C,,",))])
    host = build(raw, token=token_ok())
    assert host["status"] == "failed"
    assert [p["status"] for p in host["profiles"]] == ["ok", "failed"]
    assert texts(host, "failed") == ["profile work (/home/alice/p/work) of alice lacks CA Classe 3 Plus"]


# ---------------------------------------------------------------------------------------------
# Windows: SAMPLE data in the shape of tokentrust_windows_report (no Windows host here)
# ---------------------------------------------------------------------------------------------
def sample_windows_report(failed=(), check_mode=False):
    checks = [
        win_check("store Root: Root CA", "root" not in failed, "AA present in LocalMachine\\Root",
                  "windows_trust_store"),
        win_check("store CA: Classe 3 Plus", "ca" not in failed,
                  "BB %s in LocalMachine\\CA" % ("MISSING" if "ca" in failed else "present"), "windows_trust_store"),
        win_check("middleware installed", "mw" not in failed, "Classic Client 7.3 is in the Uninstall keys",
                  "token_middleware"),
    ]
    return win_report("win-01", [] if check_mode else checks, {"check_mode": check_mode})


@pytest.mark.parametrize("failed,check_mode,status,reason", [
    ((), False, "ok", None),
    (("ca",), False, "failed", "Windows store CA: Classe 3 Plus: BB MISSING in LocalMachine\\CA"),
    (("mw", "root"), False, "failed", "Windows middleware installed"),
    ((), True, "warning", "Windows checks were not run (check mode)"),
], ids=["sample-all-pass", "sample-store-missing", "sample-two-failed", "sample-check-mode"])
def test_windows_sample_reports(failed, check_mode, status, reason):
    raw = {"platform": "windows", "system": "Windows", "windows": sample_windows_report(failed, check_mode)}
    host = tr.build_host("win-01", raw, tr.ca_entries(ca_set(), SETTINGS, NOW), token_ok(), SETTINGS, NOW)
    assert host["platform"] == "windows"
    assert host["status"] == status, host["reasons"]
    if reason:
        assert any(reason in t for t in texts(host))
    assert len(host["windows"]["stores"]) == (0 if check_mode else 2)
    assert host["profiles"] == [] and host["policies"] is None


# ---------------------------------------------------------------------------------------------
# token results: the documented file shape and the module's own result both read
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data,status,error,http", [
    (None, "not run", None, None),
    ({}, "not run", None, None),
    ({"status": "ok", "holder": "A", "http_status": 200, "checked_at": "2026-06-01T10:00:00Z"}, "ok", None, 200),
    ({"status": "failed", "error": "connect: refused"}, "failed", "connect: refused", None),
    ({"status": "FAILED", "error": {"kind": "pin_locked", "message": "the PIN is locked"}}, "failed",
     "the PIN is locked", None),
    # a pkcs11_token_login result registered as is (ok/error/tls keys)
    ({"ok": True, "holder": "A", "tls": {"status": 200}, "error": None, "checked_at": "2026-06-01T11:59:00+00:00"},
     "ok", None, 200),
    ({"ok": False, "error": {"kind": "no_token", "message": "no token"}}, "failed", "no token", None),
])
def test_token_shapes(data, status, error, http):
    t = tr.normalise_token(data, SETTINGS, NOW)
    assert (t["status"], t["error"], t["http_status"]) == (status, error, http)


@pytest.mark.parametrize("data,msg", [
    ({"status": "maybe"}, "token report status must be ok, failed or 'not run'"),
    (["x"], "the token report must be a JSON object"),
])
def test_token_bad_shapes(data, msg):
    with pytest.raises(tr.ReportError, match=re.escape(msg)):
        tr.normalise_token(data, SETTINGS, NOW)


def test_token_days_left_recomputed_from_not_after():
    t = tr.normalise_token(token_ok(days=100, certificates=[{"holder": "A", "not_after": _iso(20),
                                                             "days_left": 999}]), SETTINGS, NOW)
    assert t["certificates"][0]["days_left"] == 20 and t["certificates"][0]["level"] == "failed"


# ---------------------------------------------------------------------------------------------
# the fleet document
# ---------------------------------------------------------------------------------------------
def fleet():
    broken = linux_host(databases=[database(profile()["path"], certs=("AA" * 32,), trusts=("C,,",))])
    return [
        {"name": "ws-b", "data": linux_host(), "token": token_ok()},
        {"name": "ws-a", "data": broken, "token": token_ok(status="failed", error="wrong PIN")},
        {"name": "ws-c", "data": linux_host(), "token": None},
        {"name": "ws-d", "data": None},
        {"name": "win-01", "data": {"platform": "windows", "windows": sample_windows_report()}, "token": token_ok()},
        {"name": "ws-e", "data": linux_host(), "token": token_ok(days=50)},
    ]


def test_build_report_shape_and_summary():
    rep = tr.build_report(fleet(), ca_set(), now=NOW)
    assert rep["format"] == "tokentrust-fleet-report/1" and rep["generated"] == "2026-06-01T12:00:00Z"
    assert [h["name"] for h in rep["hosts"]] == ["ws-a", "ws-d", "ws-e", "win-01", "ws-b", "ws-c"]
    assert rep["summary"] == {"hosts": 6, "ok": 3, "warning": 1, "failed": 1, "unreachable": 1, "not_converged": [],
                              "profiles": 4, "profiles_ok": 3,
                              "token_ok": 3, "token_failed": 1, "token_not_run": 2, "token_unknown": 0,
                              "windows_hosts": 1, "cas": 2, "next_expiry_days": 50}
    assert all("pem" not in c for c in rep["ca_set"])
    # the token certificate seen on three hosts is one timeline entry naming them
    tl = [e for e in rep["timeline"] if e["kind"] == "token"]
    assert len(tl) == 2
    assert sorted(tl[1]["hosts"]) == ["win-01", "ws-a", "ws-b"]
    json.loads(tr.to_json(rep))


@pytest.mark.parametrize("hosts,settings,msg", [
    ([{"name": "a"}, {"name": "a"}], {}, "host a is listed twice"),
    ([{"data": {}}], {}, "every host needs a name"),
    ([{"name": "a", "token": {"status": "?"}}], {}, "host a: token report status"),
    ([], {"expiry_critical_days": 100}, "expiry_critical_days (100) must not exceed expiry_warning_days (90)"),
    ([], {"expiry_warning_days": "soon"}, "expiry_warning_days must be a whole number of days"),
])
def test_build_report_refusals(hosts, settings, msg):
    with pytest.raises(tr.ReportError, match=re.escape(msg)):
        tr.build_report(hosts, ca_set(), settings=settings, now=NOW)


def test_ca_without_name_refused():
    with pytest.raises(tr.ReportError, match="every CA of the set needs a name"):
        tr.build_report([], [{"sha256": "AA"}], now=NOW)


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------
def test_html_is_self_contained_and_escaped():
    hosts = fleet()
    hosts.append({"name": "<script>alert(1)</script>", "data": None})
    page = tr.render_html(tr.build_report(hosts, ca_set(), now=NOW))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # nothing fetched from anywhere: no src/href attributes, no url(), no @import
    assert not re.search(r"""\b(src|href)\s*=""", page)
    assert "url(" not in page and "@import" not in page
    assert page.count("<script>") == 1 and page.count("<style>") == 1
    assert "default-src 'none'" in page
    for h in ("ws-a", "ws-b", "ws-c", "ws-d", "ws-e", "win-01"):
        assert 'data-host="%s"' % h in page
    assert 'data-host="ws-a" data-status="failed"' in page
    assert "lacks CA Classe 3 Plus" in page and "test login failed: wrong PIN" in page
    assert page.count('<svg id="timeline"') == 1


def test_timeline_bars_coloured_by_level():
    rep = tr.build_report(fleet(), ca_set(root_days=-5, inter_days=60), now=NOW)
    svg = tr.timeline_svg(rep["timeline"], NOW, SETTINGS)
    bars = re.findall(r'<rect class="bar (\w+)"', svg)
    assert len(bars) == len(rep["timeline"]) == 4
    assert bars.count("failed") == 1 and bars.count("warning") == 2
    assert "expired 5 d ago" in svg and "60 days" in svg
    assert tr.timeline_svg([], NOW, SETTINGS).startswith("<p")


# ---------------------------------------------------------------------------------------------
# issue 10 item 3: a test-login "ok" is only as good as its time
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("checked_at,max_age,status", [
    (_iso(0), None, "ok"),
    (None, None, "unknown"),                          # no time: unknown, never ok
    ("not a time", None, "unknown"),
    ((NOW - dt.timedelta(hours=167)).isoformat(), None, "ok"),  # default: 168 hours
    ((NOW - dt.timedelta(hours=169)).isoformat(), None, "unknown"),
    ((NOW - dt.timedelta(hours=3)).isoformat(), 2, "unknown"),
    ((NOW - dt.timedelta(hours=3)).isoformat(), 4, "ok"),
])
def test_token_result_age(checked_at, max_age, status):
    settings = {"token_max_age_hours": max_age} if max_age else {}
    host = build(linux_host(), token_ok(checked_at=checked_at), settings=settings)
    assert host["token"]["status"] == status
    if status == "unknown":
        assert host["status"] == "warning"
        assert any("test login result unknown: it said ok, but" in t and "verify.yml" in t for t in texts(host))
    else:
        assert host["status"] == "ok"


def test_an_old_failure_stays_failed_and_no_client_auth_is_never_ok():
    old = (NOW - dt.timedelta(days=30)).isoformat()
    host = build(linux_host(), token_ok(checked_at=old, status="failed", error="wrong PIN"))
    assert host["token"]["status"] == "failed" and host["status"] == "failed"
    host = build(linux_host(), token_ok(client_cert_requested=False))
    assert host["token"]["status"] == "failed"
    assert any("did not ask for a client certificate" in t for t in texts(host))


def test_token_facts_carried_and_unknown_counted():
    tok = token_ok(client_cert_requested=True, client_cert_sent="AB" * 32, client_cert_accepted=True,
                   login_certificate={"holder": "JEAN DUPONT", "sha256": "AB" * 32, "issuer": "CN=X", "serial": "01",
                                      "not_after": _iso(700), "pem": "not kept"})
    host = build(linux_host(), tok)
    assert host["token"]["client_cert_accepted"] is True and host["token"]["client_cert_sent"] == "AB" * 32
    assert host["token"]["login_certificate"]["sha256"] == "AB" * 32 and "pem" not in host["token"]["login_certificate"]
    rep = tr.build_report([{"name": "a", "data": linux_host(), "token": token_ok(checked_at=None)}], ca_set(), now=NOW)
    assert rep["summary"]["token_unknown"] == 1 and rep["summary"]["token_ok"] == 0
    assert rep["settings"]["token_max_age_hours"] == 168
    page = tr.render_html(rep, now=NOW)
    assert "unknown" in page and "no check time" in page
    with pytest.raises(tr.ReportError, match="token_max_age_hours must be at least 1"):
        tr.settings_with_defaults({"token_max_age_hours": 0})
