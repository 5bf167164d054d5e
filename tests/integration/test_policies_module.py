"""Integration: library/firefox_policies.py run for real through `ansible` (ad-hoc, local connection).

Every case asserts the file on disk (content, bytes, mode), and `changed` for check run, real run
and idempotent run.
"""
import json
import os
import stat
import sys

import pytest

from tests.support.ansible_run import run_module  # noqa: F401 - also used by the other policies tests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.fixture
def ca_files(tmp_path):
    from lab.pki import make_ca

    d = tmp_path / "ca"
    d.mkdir()
    paths = []
    for cn in ("Lab Root CA", "Lab Advanced CA V3"):
        p = d / (cn.lower().replace(" ", "-") + ".pem")
        p.write_bytes(make_ca(cn).pem)
        paths.append(str(p))
    return paths


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_create_check_real_idempotent(tmp_path, ca_files):
    path = tmp_path / "etc" / "firefox" / "policies" / "policies.json"
    args = {"path": str(path), "certificates": ca_files, "devices": {"gem": SOFTHSM}}

    r = run_module("firefox_policies", args, check=True, diff=True)
    assert r["changed"] is True, r
    assert not path.exists() and not path.parent.exists(), "check mode must not write"
    assert r["diff"]["before"] == ""
    assert json.loads(r["diff"]["after"])["policies"]["SecurityDevices"] == {"Add": {"gem": SOFTHSM}}

    r = run_module("firefox_policies", args, diff=True)
    assert r["changed"] is True and r["restart_required"] is True, r
    doc = json.loads(read(path).decode("utf-8"))
    assert doc == {"policies": {"Certificates": {"Install": ca_files}, "SecurityDevices": {"Add": {"gem": SOFTHSM}}}}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o755
    assert [e["value"] for e in r["added"]] == ca_files + [SOFTHSM]
    assert not [f for f in os.listdir(path.parent) if f != "policies.json"], "temp file left behind"

    mtime = os.stat(path).st_mtime_ns
    for check in (True, False):
        r = run_module("firefox_policies", args, check=check)
        assert r["changed"] is False and r["restart_required"] is False, r
        assert len(r["unchanged"]) == 3
    assert os.stat(path).st_mtime_ns == mtime, "idempotent run must not rewrite the file"


def test_merge_keeps_other_policies_then_absent_restores(tmp_path, ca_files):
    path = tmp_path / "policies.json"
    other = {"policies": {
        "DisableTelemetry": True,
        "Homepage": {"URL": "https://intranet.example/é", "Locked": True},
        "Certificates": {"Install": ["/etc/pki/other.pem"]},
        "SecurityDevices": {"Add": {"opensc": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"}},
    }}
    path.write_text(json.dumps(other, ensure_ascii=False), encoding="utf-8")
    args = {"path": str(path), "certificates": ca_files, "devices": {"gem": SOFTHSM}, "backup": True}

    r = run_module("firefox_policies", args)
    assert r["changed"] is True
    doc = json.loads(read(path))
    assert doc["policies"]["DisableTelemetry"] is True
    assert doc["policies"]["Homepage"] == {"URL": "https://intranet.example/é", "Locked": True}
    assert doc["policies"]["Certificates"]["Install"] == ["/etc/pki/other.pem"] + ca_files
    assert doc["policies"]["SecurityDevices"]["Add"] == {
        "opensc": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "gem": SOFTHSM}
    assert "é" in read(path).decode("utf-8"), "UTF-8 kept, not \\u-escaped"
    assert json.loads(read(r["backup_file"])) == other

    args["state"] = "absent"
    args.pop("backup")
    r = run_module("firefox_policies", args, check=True)
    assert r["changed"] is True and json.loads(read(path)) == doc
    r = run_module("firefox_policies", args)
    assert r["changed"] is True
    assert json.loads(read(path)) == other
    r = run_module("firefox_policies", args)
    assert r["changed"] is False


def test_flat_security_devices_kept_and_reported(tmp_path):
    path = tmp_path / "policies.json"
    path.write_text(json.dumps({"policies": {"SecurityDevices": {"p11-kit-proxy": "/usr/lib/p11-kit-proxy.so"}}}))
    r = run_module("firefox_policies", {"path": str(path), "devices": {"gem": SOFTHSM}})
    assert r["changed"] is True
    assert json.loads(read(path))["policies"]["SecurityDevices"] == {
        "p11-kit-proxy": "/usr/lib/p11-kit-proxy.so", "gem": SOFTHSM}
    assert r["flat_security_devices"] == {"p11-kit-proxy": "/usr/lib/p11-kit-proxy.so", "gem": SOFTHSM}
    assert any("deprecated flat form (p11-kit-proxy)" in w for w in r.get("warnings", [])), r

    # the same library already registered (flat form) under another name: not duplicated
    path.write_text(json.dumps({"policies": {"SecurityDevices": {"SoftHSM": SOFTHSM}}}))
    before = read(path)
    r = run_module("firefox_policies", {"path": str(path), "devices": {"gem": SOFTHSM}})
    assert r["changed"] is False and read(path) == before
    assert any("already registered as SoftHSM" in w for w in r.get("warnings", [])), r


@pytest.mark.parametrize("content,msg", [
    (b'{"policies": {"DisableTelemetry": true,}}', "is not valid JSON at line 1 column 40: Expecting property name"),
    (b'{"policies": {"Certificates": {"Install": "/a.pem"}}}', '"policies.Certificates.Install" must be a list'),
    (b"\xff\xfe{}", "is not valid UTF-8"),
])
def test_malformed_file_left_unchanged(tmp_path, content, msg):
    path = tmp_path / "policies.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    r = run_module("firefox_policies", {"path": str(path), "devices": {"gem": SOFTHSM}, "backup": True})
    assert r.get("failed") is True, r
    assert msg in r["msg"] and str(path) in r["msg"] and "left unchanged" in r["msg"], r["msg"]
    assert read(path) == content
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["policies.json"], "no backup or temp file on failure"


@pytest.mark.parametrize("args,msg", [
    ({"devices": {"Add": SOFTHSM}}, "security device name 'Add' is reserved"),
    ({"location": "distribution", "install_dir": None, "path": None, "certificates": [""]},
     "certificate path '' is not a non-empty string"),
    ({"state": "latest"}, "value of state must be one of: present, absent"),
])
def test_bad_inputs(tmp_path, args, msg):
    args = dict({"path": str(tmp_path / "policies.json")}, **args)
    r = run_module("firefox_policies", args)
    assert r.get("failed") is True and msg in r["msg"], r
    assert not (tmp_path / "policies.json").exists()


def test_path_is_a_directory(tmp_path):
    r = run_module("firefox_policies", {"path": str(tmp_path), "devices": {"gem": SOFTHSM}})
    assert r.get("failed") is True and "is a directory" in r["msg"], r


def test_distribution_location_and_symlinked_dir(tmp_path):
    """Debian's /usr/lib/firefox-esr/distribution is a symlink to /usr/share/...: the file lands in the target."""
    install = tmp_path / "lib" / "firefox-esr"
    share = tmp_path / "share" / "firefox-esr" / "distribution"
    install.mkdir(parents=True)
    share.mkdir(parents=True)
    (install / "distribution").symlink_to(share)
    r = run_module("firefox_policies", {"location": "distribution", "install_dir": str(install),
                                        "devices": {"gem": SOFTHSM}})
    assert r["changed"] is True
    assert r["path"] == str(share / "policies.json")
    assert json.loads(read(share / "policies.json"))["policies"]["SecurityDevices"]["Add"] == {"gem": SOFTHSM}
    assert (install / "distribution").is_symlink(), "the distribution symlink must stay a symlink"


def test_missing_files_warn(tmp_path):
    r = run_module("firefox_policies", {"path": str(tmp_path / "p.json"), "certificates": ["/nonexistent/ca.pem"],
                                        "devices": {"gem": "/nonexistent/libgclib.so"}})
    assert r["changed"] is True
    w = " ".join(r.get("warnings", []))
    assert "certificate file /nonexistent/ca.pem does not exist" in w
    assert "library /nonexistent/libgclib.so of security device 'gem' does not exist" in w


def test_certificate_set_files_deployed_rewritten_removed(tmp_path):
    from lab.pki import make_ca

    a, b = make_ca("Files Root"), make_ca("Files Other CA")
    policies = tmp_path / "etc" / "policies.json"
    ca_dir = tmp_path / "share" / "ca"
    cas = [{"name": "Files Root", "nickname": "Files Root", "pem": a.pem.decode()},
           {"name": "Files Other CA", "nickname": "Files Other CA", "pem": b.pem.decode()}]
    args = {"path": str(policies), "certificate_set": cas, "certificate_dir": str(ca_dir),
            "device_name": "gem", "device_candidates": ["/nonexistent/libgclib.so", SOFTHSM]}
    r = run_module("firefox_policies", args, check=True)
    assert r["changed"] is True and not ca_dir.exists() and not policies.exists()
    r = run_module("firefox_policies", args)
    assert r["changed"] is True and r["device_library"] == SOFTHSM
    assert sorted(os.listdir(ca_dir)) == ["files_other_ca.pem", "files_root.pem"]
    assert (ca_dir / "files_root.pem").read_bytes() == a.pem
    doc = json.loads(policies.read_text())
    assert doc["policies"]["Certificates"]["Install"] == [str(ca_dir / "files_root.pem"),
                                                          str(ca_dir / "files_other_ca.pem")]
    assert doc["policies"]["SecurityDevices"]["Add"] == {"gem": SOFTHSM}
    assert run_module("firefox_policies", args)["changed"] is False
    # a tampered file is put back, and only it
    (ca_dir / "files_root.pem").write_text("tampered\n")
    r = run_module("firefox_policies", args)
    assert r["changed"] is True
    assert {f["path"].split("/")[-1]: f["action"] for f in r["certificate_files"]} == {
        "files_root.pem": "written", "files_other_ca.pem": "ok"}
    assert (ca_dir / "files_root.pem").read_bytes() == a.pem
    r = run_module("firefox_policies", dict(args, state="absent"))
    assert r["changed"] is True and os.listdir(ca_dir) == []
    assert "Certificates" not in json.loads(policies.read_text()).get("policies", {})
