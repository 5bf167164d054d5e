"""nss_certificate and nss_pkcs11_module run through ansible; the state is checked with certutil/modutil."""
import os

import pytest

from lab.pki import certeurope_standin, make_ca
from tests.support.ansible_run import run_module
from tests.support.nsstools import certutil_list, modutil_modules, snapshot

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.fixture(scope="module")
def chain():
    return certeurope_standin()


@pytest.fixture(scope="module")
def ca_set(chain):
    """Shaped like the tokentrust_ca_set fact of the ca_certificates role."""
    out = []
    for name, c in chain.items():
        root = c.cert.issuer == c.cert.subject
        out.append({"name": name, "pem": c.pem.decode(), "sha256": c.sha256, "nss_trust": "C,," if root else ",,",
                    "role": "root" if root else "intermediate"})
    return out


@pytest.fixture
def profiles(tmp_path):
    dirs = []
    for i in range(3):
        d = tmp_path / ("profile%d" % i)
        d.mkdir()
        dirs.append(str(d))
    return dirs


EXPECTED = {"Lab Root CA 2": "C,,", "Lab Advanced CA V3": ",,", "Lab Root CA": "C,,", "Lab Classe 3 Plus V2": ",,"}


def test_certificates_check_real_idempotent(profiles, ca_set):
    args = {"databases": profiles, "certificates": ca_set}
    r = run_module("nss_certificate", args, check=True, diff=True)
    assert r["changed"] is True, r
    assert all(not os.path.exists(os.path.join(d, "cert9.db")) for d in profiles), "check mode wrote something"
    assert "Lab Root CA 2" in r["diff"][0]["after"]
    r = run_module("nss_certificate", args, diff=True)
    assert r["changed"] is True and r["changed_databases"] == 3, r
    for d in profiles:
        assert certutil_list(d) == EXPECTED
    assert [a["action"] for a in r["databases"][0]["actions"]] == ["add"] * 4
    before = {d: snapshot(d) for d in profiles}
    r = run_module("nss_certificate", args)
    assert r["changed"] is False, r
    assert {d: snapshot(d) for d in profiles} == before
    r = run_module("nss_certificate", args, check=True)
    assert r["changed"] is False


def test_wrong_trust_corrected(profiles, ca_set):
    run_module("nss_certificate", {"databases": profiles[:1], "certificates": ca_set})
    wrong = [dict(c, nss_trust="CT,C,C") if c["name"] == "Lab Root CA" else c for c in ca_set]
    r = run_module("nss_certificate", {"databases": profiles[:1], "certificates": wrong}, diff=True)
    assert r["changed"] is True
    assert {a["name"]: a["action"] for a in r["databases"][0]["actions"]}["Lab Root CA"] == "trust"
    assert certutil_list(profiles[0])["Lab Root CA"] == "CT,C,C"
    assert "CT,C,C" in r["diff"][0]["after"] and "CT,C,C" not in r["diff"][0]["before"]


def test_nickname_taken_error_or_rename(profiles, ca_set):
    other = make_ca("Impostor")
    clash = [{"name": "Lab Root CA", "content": other.pem.decode(), "trust": "C,,"}]
    run_module("nss_certificate", {"databases": profiles[:1], "certificates": ca_set})
    before = snapshot(profiles[0])
    r = run_module("nss_certificate", {"databases": profiles[:1], "certificates": clash})
    assert r.get("failed") is True
    assert "nickname 'Lab Root CA' is already used by another certificate" in r["msg"]
    assert snapshot(profiles[0]) == before
    r = run_module("nss_certificate", {"databases": profiles[:1], "certificates": clash,
                                       "nickname_conflict": "rename"})
    assert r["changed"] is True
    assert "Lab Root CA (%s)" % other.sha256[:8] in certutil_list(profiles[0])


def test_one_broken_database_others_complete(profiles, ca_set):
    with open(os.path.join(profiles[1], "cert9.db"), "wb") as f:
        f.write(b"garbage" * 50)
    before = snapshot(profiles[1])
    r = run_module("nss_certificate", {"databases": profiles, "certificates": ca_set})
    assert r["failed"] is True
    assert r["failed_databases"] == [profiles[1]]
    assert profiles[1] in r["msg"] and "not an SQLite database" in r["msg"]
    assert certutil_list(profiles[0]) == EXPECTED and certutil_list(profiles[2]) == EXPECTED
    assert snapshot(profiles[1]) == before
    # fail_fast stops at the broken one: the third is not touched
    fresh = profiles[2] + "-ff"
    os.mkdir(fresh)
    r = run_module("nss_certificate", {"databases": [profiles[1], fresh], "certificates": ca_set, "fail_fast": True})
    assert r["failed"] is True and len(r["databases"]) == 1
    assert not os.path.exists(os.path.join(fresh, "cert9.db"))


def test_backup_and_absent(profiles, ca_set):
    run_module("nss_certificate", {"databases": profiles[:1], "certificates": ca_set})
    r = run_module("nss_certificate", {"databases": profiles[:1], "certificates": ca_set[:2], "state": "absent",
                                       "backup": True})
    assert r["changed"] is True
    backup = r["databases"][0]["backup"]
    assert backup and os.path.isfile(os.path.join(backup, "cert9.db"))
    assert certutil_list(backup) == EXPECTED  # the backup is a usable copy of the state before
    assert set(certutil_list(profiles[0])) == set(EXPECTED) - {ca_set[0]["name"], ca_set[1]["name"]}
    r = run_module("nss_certificate", {"databases": profiles[:1], "certificates": ca_set[:2], "state": "absent"})
    assert r["changed"] is False


@pytest.mark.parametrize("certs,msg", [
    ([{"name": "x"}], "give 'content'"),
    ([{"content": "x"}], "'name' is required"),
    ([{"name": "x", "content": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}], "not a DER"),
    ([{"name": "x", "path": "/nonexistent.pem"}], "cannot read /nonexistent.pem"),
])
def test_bad_certificate_input(profiles, certs, msg):
    r = run_module("nss_certificate", {"databases": profiles, "certificates": certs})
    assert r["failed"] is True and msg in r["msg"], r["msg"]
    assert all(not os.listdir(d) for d in profiles)


def test_pin_mismatch_in_input(profiles, ca_set):
    bad = [dict(ca_set[0], sha256="00" * 32)]
    r = run_module("nss_certificate", {"databases": profiles, "certificates": bad})
    assert r["failed"] is True and "but the entry says" in r["msg"]


def test_module_check_real_idempotent(profiles):
    args = {"databases": profiles, "name": "gem", "library": SOFTHSM}
    r = run_module("nss_pkcs11_module", args, check=True, diff=True)
    assert r["changed"] is True
    assert all(not os.path.exists(os.path.join(d, "pkcs11.txt")) for d in profiles)
    r = run_module("nss_pkcs11_module", args, diff=True)
    assert r["changed"] is True
    for d in profiles:
        assert modutil_modules(d)["gem"] == SOFTHSM
    assert "gem  %s" % SOFTHSM in r["diff"][0]["after"]
    r = run_module("nss_pkcs11_module", args)
    assert r["changed"] is False
    r = run_module("nss_pkcs11_module", dict(args, state="absent"))
    assert r["changed"] is True
    assert all("gem" not in modutil_modules(d) for d in profiles)


def test_module_same_library_other_name_not_duplicated(profiles):
    run_module("nss_pkcs11_module", {"databases": profiles[:1], "name": "SoftHSM", "library": SOFTHSM})
    r = run_module("nss_pkcs11_module", {"databases": profiles[:1], "name": "gem", "library": SOFTHSM})
    assert r["changed"] is False
    assert r["databases"][0]["action"] == "registered_under_other_name"
    assert r["databases"][0]["other_names"] == ["SoftHSM"]
    assert any("already registered under another name" in w for w in r.get("warnings", []))
    assert "gem" not in modutil_modules(profiles[0])


def test_module_missing_library(profiles):
    args = {"databases": profiles, "name": "gem", "library": "/usr/lib/pkcs11/libgclib.so"}
    r = run_module("nss_pkcs11_module", args)
    assert r["changed"] is False and "does not exist on this host" in " ".join(r["warnings"])
    r = run_module("nss_pkcs11_module", dict(args, missing_library="fail"))
    assert r["failed"] is True and "does not exist on this host" in r["msg"]
    assert all(not os.listdir(d) for d in profiles)


def test_nss_info_reads_and_compares(profiles, ca_set):
    run_module("nss_certificate", {"databases": profiles[:1], "certificates": ca_set})
    run_module("nss_pkcs11_module", {"databases": profiles[:1], "name": "gem", "library": SOFTHSM})
    with open(os.path.join(profiles[1], "cert9.db"), "wb") as f:
        f.write(b"")
    before = snapshot(profiles[0])
    r = run_module("nss_info", {"databases": profiles[:2], "expected_certificates": ca_set,
                                "expected_module": {"name": "gem", "library": SOFTHSM}}, check=True)
    assert r["changed"] is False
    good, bad = r["databases"]
    assert good["compliant"] is True and good["module_ok"] is True
    assert {c["nickname"]: c["trust"] for c in good["certificates"]} == EXPECTED
    assert [m["name"] for m in good["modules"]] == ["gem"]
    assert bad["compliant"] is False and "is empty" in bad["error"]
    assert snapshot(profiles[0]) == before
    # a wrong trust and a missing certificate are named
    run_module("nss_certificate", {"databases": profiles[:1], "certificates": ca_set[:1], "state": "absent"})
    wrong = [dict(c, nss_trust="CT,C,C") if c["name"] == "Lab Root CA" else c for c in ca_set]
    r = run_module("nss_info", {"databases": profiles[:1], "expected_certificates": wrong})
    db = r["databases"][0]
    assert db["missing"] == [ca_set[0]["name"]] and db["wrong_trust"] == ["Lab Root CA"]
    assert db["compliant"] is False


OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
SPY = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so"


def test_single_purpose_modules_share_the_provision_path(profiles, ca_set, tmp_path, monkeypatch):
    """nss_certificate and nss_pkcs11_module apply through tokentrust_provision.provision(), as nss_provision does:
    certificates are imported with the module database closed, and the token library is never loaded, not even to
    register it (issue 22: pkcs11.txt is edited as text). pkcs11-spy logs each load; the old single-purpose paths
    opened every database with its modules and loaded the library each time, f8c7a58 loaded it to register it."""
    if not os.path.exists(SPY):
        pytest.skip("pkcs11-spy (opensc) not installed")
    log = tmp_path / "spy.log"
    monkeypatch.setenv("PKCS11SPY", OPENSC)
    monkeypatch.setenv("PKCS11SPY_OUTPUT", str(log))
    db = profiles[:1]  # one database: pkcs11-spy does not survive being loaded twice in one process
    args = {"databases": db, "name": "gem", "library": SPY}
    r = run_module("nss_pkcs11_module", args)
    with open(os.path.join(db[0], "pkcs11.txt")) as f:  # not modutil: it crashes on pkcs11-spy
        assert r["changed"] is True and "library=%s" % SPY in f.read(), r
    assert not log.exists(), "registering the module loaded it"
    for check in (True, False):
        r = run_module("nss_pkcs11_module", args, check=check)
        assert r["changed"] is False and r["databases"][0]["action"] == "ok", r
        assert not log.exists(), "the token library was loaded although the module did not change (check=%s)" % check
    r = run_module("nss_certificate", {"databases": db, "certificates": ca_set}, diff=True)
    assert r["changed"] is True and [a["action"] for a in r["databases"][0]["actions"]] == ["add"] * 4, r
    assert not log.exists(), "importing certificates loaded the registered token library"
    # the same database through nss_provision: same certificate actions, nothing left to do
    p = run_module("nss_provision", {"databases": db, "certificates": ca_set, "module_library": SPY})
    assert p["changed"] is False and [c["action"] for c in p["databases"][0]["certificates"]] == ["ok"] * 4, p
    assert p["databases"][0]["module"]["action"] == "ok" and not log.exists()
    # certutil checks a copy without pkcs11.txt (it crashes loading pkcs11-spy)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("cert9.db", "key4.db"):
        (copy / name).write_bytes((tmp_path / "profile0" / name).read_bytes())
    assert certutil_list(str(copy)) == EXPECTED
