"""The modules that write files on the host (firefox_policies, ca_bundle, fleet_report) honour the common file
options (add_file_common_args: mode, owner, group...) through the one atomic write (tokentrust_files): checked with
os.stat on the real written files, in check mode (reported, not done), real run, and a second run unchanged."""
import grp
import os
import pwd
import stat

import pytest

from tests.integration.test_report_module import args as report_args
from tests.support.ansible_run import run_module

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


def _user_and_group():
    if os.geteuid() != 0:
        pytest.skip("setting an owner needs root")
    user = pwd.getpwnam("nobody")
    return user, grp.getgrgid(user.pw_gid)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_policies_json_mode_owner_group(tmp_path):
    user, group = _user_and_group()
    path = tmp_path / "policies" / "policies.json"
    args = {"path": str(path), "devices": {"gem": SOFTHSM}, "mode": "0640", "owner": user.pw_name,
            "group": group.gr_name}
    r = run_module("firefox_policies", args, check=True, diff=True)
    assert r["changed"] is True and not path.exists(), r
    r = run_module("firefox_policies", args, diff=True)
    assert r["changed"] is True, r
    st = os.stat(path)
    assert (mode_of(path), st.st_uid, st.st_gid) == (0o640, user.pw_uid, group.gr_gid)
    assert sorted(os.listdir(path.parent)) == ["policies.json"], "temp file left behind"
    r = run_module("firefox_policies", args, diff=True)
    assert r["changed"] is False, r
    # only the mode differs: check mode reports it (with its diff) and changes nothing, the real run changes it
    r = run_module("firefox_policies", dict(args, mode="0600"), check=True, diff=True)
    assert r["changed"] is True and mode_of(path) == 0o640, r
    attrs = [d for d in r["diff"] if d.get("before_header", "").endswith("(attributes)")]
    assert attrs and attrs[0]["before"]["mode"] == "0640" and attrs[0]["after"]["mode"] == "0600", r["diff"]
    r = run_module("firefox_policies", dict(args, mode="0600"))
    assert r["changed"] is True and mode_of(path) == 0o600
    assert run_module("firefox_policies", dict(args, mode="0600"))["changed"] is False


def test_policies_json_rewrite_keeps_the_files_mode_and_owner(tmp_path):
    """No mode given: a new file is 0644, an existing one keeps its mode and owner when its content is replaced."""
    user, group = _user_and_group()
    path = tmp_path / "policies.json"
    assert run_module("firefox_policies", {"path": str(path), "devices": {"gem": SOFTHSM}})["changed"] is True
    assert mode_of(path) == 0o644
    os.chmod(path, 0o600)
    os.chown(path, user.pw_uid, group.gr_gid)
    r = run_module("firefox_policies", {"path": str(path), "devices": {"gem": SOFTHSM, "other": OPENSC}})
    assert r["changed"] is True and "other" in path.read_text()
    st = os.stat(path)
    assert (mode_of(path), st.st_uid, st.st_gid) == (0o600, user.pw_uid, group.gr_gid)


def test_fleet_report_files_mode_and_group(tmp_path):
    user, group = _user_and_group()
    (tmp_path / "token").mkdir()
    args = report_args(tmp_path, mode="0600", group=group.gr_name)
    dest = tmp_path / "reports"
    r = run_module("fleet_report", args, check=True)
    assert r["changed"] is True and not dest.exists()
    r = run_module("fleet_report", args)
    assert r["changed"] is True, r
    for name in ("fleet.json", "fleet.html"):
        assert (mode_of(dest / name), os.stat(dest / name).st_gid) == (0o600, group.gr_gid)
    r = run_module("fleet_report", args)
    assert r["changed"] is False, r
    r = run_module("fleet_report", dict(args, mode="0644"))
    assert r["changed"] is True and all(mode_of(dest / n) == 0o644 for n in ("fleet.json", "fleet.html"))


def test_ca_bundle_files_mode_and_owner(tmp_path):
    from lab.pki import make_ca
    from tests.integration.test_ca_module import run_module as run_ca_bundle

    user, group = _user_and_group()
    root = make_ca("Attr Root CA")
    src = tmp_path / "root.pem"
    src.write_bytes(root.pem)
    dest = tmp_path / "cache"
    args = {"cas": [{"name": "Attr Root", "sha256": root.sha256, "path": str(src)}], "dest": str(dest),
            "mode": "0600", "owner": user.pw_name}
    r = run_ca_bundle(args, "--check")
    assert r["changed"] is True and not dest.exists(), r
    r = run_ca_bundle(args)
    assert r["changed"] is True, r
    files = sorted(os.listdir(dest))
    assert files == ["attr_root.der", "attr_root.pem"]
    for f in files:
        assert (mode_of(dest / f), os.stat(dest / f).st_uid) == (0o600, user.pw_uid)
    assert run_ca_bundle(args)["changed"] is False
    # the content is cached and unchanged; a new mode applies to every file of the set
    r = run_ca_bundle(dict(args, mode="0644"))
    assert r["changed"] is True and r["written"] == [] and all(mode_of(dest / f) == 0o644 for f in files), r
