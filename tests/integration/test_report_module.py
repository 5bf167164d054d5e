"""Module fleet_report through `ansible localhost -m`: check run, real run, idempotent run, token files, refusals."""
import datetime as dt
import json

import pytest

from tests.support.ansible_run import run_module

LIB = "/usr/lib/pkcs11/libgclib.so"
FP = "AA" * 32


def ca_set():
    return [{"name": "Root CA", "sha256": FP, "nss_trust": "C,,", "role": "root", "not_after": "2099-01-01T00:00:00Z",
             "pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}]


def host(name, certs=(FP,)):
    path = "/home/%s/.mozilla/firefox/p.default" % name
    return {"name": name, "data": {
        "platform": "linux", "profiles": [{"name": "default", "path": path, "format": "sql"}],
        "databases": [{"path": path, "error": None, "certificates": [{"sha256": fp, "trust": "C,,"} for fp in certs],
                       "modules": [{"name": "gem", "library": LIB}]}],
        "module": {"name": "gem", "library": LIB}, "policies": {"checked": False}}}


def args(tmp_path, **over):
    a = {"hosts": [host("ws1"), host("ws2", certs=())], "ca_set": ca_set(), "dest": str(tmp_path / "reports"),
         "token_dir": str(tmp_path / "token"), "check_policies": False}
    a.update(over)
    return a


def test_check_real_idempotent(tmp_path):
    (tmp_path / "token").mkdir()
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # an undated or old "ok" is "unknown"
    (tmp_path / "token" / "ws1.json").write_text(json.dumps({"status": "ok", "holder": "JEAN DUPONT",
                                                             "http_status": 200, "certificates": [],
                                                             "checked_at": now}))
    r = run_module("fleet_report", args(tmp_path), check=True)
    assert r["changed"] is True and not r.get("failed"), r
    assert not (tmp_path / "reports").exists()  # check mode wrote nothing
    assert r["statuses"] == {"ws1": "ok", "ws2": "failed"}

    r = run_module("fleet_report", args(tmp_path), diff=True)
    assert r["changed"] is True, r
    doc = json.loads((tmp_path / "reports" / "fleet.json").read_text())
    assert doc["hosts"][1]["token"]["holder"] == "JEAN DUPONT"  # read from token_dir/ws1.json
    assert doc["hosts"][0]["token"]["status"] == "not run"
    assert r["reasons"]["ws2"] == ["profile default (/home/ws2/.mozilla/firefox/p.default) lacks CA Root CA"]
    assert "-----BEGIN" not in (tmp_path / "reports" / "fleet.json").read_text()  # no PEM copied
    html = (tmp_path / "reports" / "fleet.html").read_text()
    assert 'data-host="ws2" data-status="failed"' in html
    assert json.loads(r["diff"]["after"]) == {"ws1": "ok", "ws2": "failed"} and r["diff"]["before"] == "{}\n"

    stamp = (tmp_path / "reports" / "fleet.json").stat().st_mtime_ns
    r = run_module("fleet_report", args(tmp_path))
    assert r["changed"] is False, r
    assert (tmp_path / "reports" / "fleet.json").stat().st_mtime_ns == stamp

    # the fleet changes: the report does too, in check mode only said, then written
    fixed = args(tmp_path, hosts=[host("ws1"), host("ws2")])
    r = run_module("fleet_report", fixed, check=True)
    assert r["changed"] is True and r["statuses"]["ws2"] == "ok"
    assert json.loads((tmp_path / "reports" / "fleet.json").read_text())["summary"]["failed"] == 1
    r = run_module("fleet_report", fixed)
    assert r["changed"] is True
    assert json.loads((tmp_path / "reports" / "fleet.json").read_text())["summary"]["failed"] == 0


@pytest.mark.parametrize("over,msg", [
    ({"hosts": [{"name": "a"}, {"name": "a"}]}, "fleet_report: host a is listed twice"),
    ({"expiry_warning_days": 10, "expiry_critical_days": 20},
     "fleet_report: expiry_critical_days (20) must not exceed expiry_warning_days (10)"),
    ({"ca_set": [{"sha256": FP}]}, "fleet_report: every CA of the set needs a name"),
])
def test_bad_inputs(tmp_path, over, msg):
    r = run_module("fleet_report", args(tmp_path, **over))
    assert r.get("failed") and r["msg"].startswith(msg), r
    assert not (tmp_path / "reports").exists()


def test_bad_token_file_and_dest(tmp_path):
    (tmp_path / "token").mkdir()
    (tmp_path / "token" / "ws1.json").write_text("{not json")
    r = run_module("fleet_report", args(tmp_path))
    assert r.get("failed") and r["msg"].startswith(
        "fleet_report: cannot read the test-login result %s" % (tmp_path / "token" / "ws1.json")), r
    (tmp_path / "token" / "ws1.json").write_text('{"status": "perhaps"}')
    r = run_module("fleet_report", args(tmp_path))
    assert r["msg"].startswith("fleet_report: host ws1: token report status must be ok, failed or 'not run'"), r
    (tmp_path / "token" / "ws1.json").unlink()
    (tmp_path / "file").write_text("x")
    r = run_module("fleet_report", args(tmp_path, dest=str(tmp_path / "file")))
    assert r["msg"] == "fleet_report: dest %s exists and is not a directory" % (tmp_path / "file"), r
