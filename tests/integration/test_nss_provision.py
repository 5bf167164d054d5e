"""nss_provision: discovery + certificates + module in one call per host (through ansible), checked with
certutil/modutil; the token library is loaded only where the module must change (proved with pkcs11-spy)."""
import os

import pytest

from lab.pki import certeurope_standin
from tests.support.ansible_run import run_module
from tests.support.ca import standin_ca_set
from tests.support.firefox import create_profile
from tests.support.nsstools import certutil_list, modutil_modules, snapshot

OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
SPY = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so"


@pytest.fixture(scope="module")
def ca_set():
    return standin_ca_set()


@pytest.fixture
def home(tmp_path):
    h = str(tmp_path / "home")
    os.makedirs(h)
    a = create_profile(h, "alpha")
    b = create_profile(h, "beta", path=os.path.join(h, ".mozilla", "firefox", "beta.custom"))
    return h, [a, b]


def test_one_call_check_real_idempotent(home, ca_set):
    h, profiles = home
    args = {"homes": [h], "certificates": ca_set, "module_library": OPENSC}
    r = run_module("nss_provision", args, check=True, diff=True)
    assert r["changed"] is True and r["changed_databases"] == 2
    assert all(not os.path.exists(os.path.join(p, "cert9.db")) for p in profiles)
    assert sorted(p["path"] for p in r["profiles"]) == sorted(profiles)
    r = run_module("nss_provision", args, diff=True)
    assert r["changed"] is True, r
    for p in profiles:
        listed = certutil_list(p)
        assert listed["Lab Root CA 2"] == "C,," and listed["Lab Advanced CA V3"] == ",,"
        assert modutil_modules(p)["gem"] == OPENSC
    assert {d["module"]["action"] for d in r["databases"]} == {"add"}
    assert "modules:" in r["diff"][0]["after"] and "gem" in r["diff"][0]["after"]
    before = {p: snapshot(p) for p in profiles}
    r = run_module("nss_provision", args)
    assert r["changed"] is False
    assert {d["module"]["action"] for d in r["databases"]} == {"ok"}
    assert {p: snapshot(p) for p in profiles} == before
    r = run_module("nss_provision", dict(args, state="absent"))
    assert r["changed"] is True
    for p in profiles:
        assert certutil_list(p) == {} and "gem" not in modutil_modules(p)


def test_token_library_never_loaded_even_to_register(ca_set, tmp_path, monkeypatch):
    """Issue 22: the module is registered by editing pkcs11.txt as text; the token library is never loaded."""
    if not os.path.exists(SPY):
        pytest.skip("pkcs11-spy (opensc) not installed")
    # one profile: pkcs11-spy itself does not survive being loaded twice in one process
    h = str(tmp_path / "spyhome")
    os.makedirs(h)
    create_profile(h, "alpha")
    log = tmp_path / "spy.log"
    monkeypatch.setenv("PKCS11SPY", OPENSC)
    monkeypatch.setenv("PKCS11SPY_OUTPUT", str(log))
    args = {"homes": [h], "certificates": ca_set, "module_library": SPY}
    r = run_module("nss_provision", args)
    assert r["changed"] is True, r.get("msg")
    assert not log.exists(), "registering the module loaded it"
    # a new certificate only: the module is already registered, so the library must not be loaded
    extra = certeurope_standin()
    more = ca_set + [{"name": "Another CA", "pem": extra["Lab Root CA"].pem.decode(), "nss_trust": "C,,"}]
    r = run_module("nss_provision", dict(args, certificates=more))
    assert r["changed"] is True
    actions = {c["name"]: c["action"] for c in r["databases"][0]["certificates"]}
    assert actions["Another CA"] == "add" and r["databases"][0]["module"]["action"] == "ok"
    assert not log.exists(), "the token library was loaded although the module did not change"


def test_legacy_profile_skipped_and_broken_one_reported(home, ca_set):
    h, profiles = home
    with open(os.path.join(profiles[1], "cert8.db"), "wb") as f:
        f.write(b"\0" * 100)
    args = {"homes": [h], "certificates": ca_set, "module_library": OPENSC}
    r = run_module("nss_provision", args)
    assert r["changed"] is True and not r.get("failed")
    skipped = [d for d in r["databases"] if d.get("skipped")]
    assert [d["path"] for d in skipped] == [profiles[1]]
    assert any("legacy dbm" in w for w in r["warnings"])
    assert os.listdir(profiles[1]) == ["cert8.db"] or "cert9.db" not in os.listdir(profiles[1])
    # a broken database fails alone, with its path; the other one is fine
    os.unlink(os.path.join(profiles[1], "cert8.db"))
    with open(os.path.join(profiles[1], "cert9.db"), "wb") as f:
        f.write(b"junk" * 40)
    r = run_module("nss_provision", args)
    assert r["failed"] is True and r["failed_databases"] == [profiles[1]]
    assert "not an SQLite database" in r["msg"] and profiles[1] in r["msg"]


def test_missing_library_warn_or_fail(home, ca_set):
    h, profiles = home
    args = {"homes": [h], "certificates": ca_set, "module_library": "/nonexistent/libgclib.so"}
    r = run_module("nss_provision", args)
    assert r["changed"] is True and any("does not exist on this host" in w for w in r["warnings"])
    assert {d["module"]["action"] for d in r["databases"]} == {"skipped_missing_library"}
    assert "gem" not in modutil_modules(profiles[0])
    r = run_module("nss_provision", dict(args, missing_library="fail"))
    assert r["failed"] is True and "does not exist on this host" in r["msg"]


@pytest.fixture
def real_user():
    import pwd
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to provision another user's profiles")
    name = "tt_prov_user"
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
    subprocess.run(["useradd", "-m", name], check=True)
    yield pwd.getpwnam(name)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


def test_root_on_real_users_profiles_leaves_nothing_owned_by_root(real_user, ca_set):
    import subprocess

    home = real_user.pw_dir
    prof = create_profile(home, "work", user=real_user.pw_name)
    # the user starts Firefox once, so the profile has the user's own databases
    from tests.support.firefox import start_once

    start_once(prof, user=real_user.pw_name, home=home)
    fresh = create_profile(home, "fresh", user=real_user.pw_name)  # never started: no database yet
    r = run_module("nss_provision", {"users": [real_user.pw_name], "certificates": ca_set, "module_library": OPENSC})
    assert r["changed"] is True and r["changed_databases"] == 2, r
    for d in (prof, fresh):
        for root, dirs, files in os.walk(d):
            for name in dirs + files:
                st = os.lstat(os.path.join(root, name))
                assert (st.st_uid, st.st_gid) == (real_user.pw_uid, real_user.pw_gid), os.path.join(root, name)
        assert "Lab Root CA 2" in certutil_list(d)
    # the user can read what we wrote with NSS's own tool
    out = subprocess.run(["runuser", "-u", real_user.pw_name, "--", "certutil", "-L", "-d", "sql:" + fresh],
                         capture_output=True, text=True, env=dict(os.environ, LD_LIBRARY_PATH=_libdir()))
    assert "Lab Root CA 2" in out.stdout, out.stderr


def _libdir():
    from ansible.module_utils.tokentrust_nss._ffi import nss_libdir

    return nss_libdir() or ""


def test_profile_in_use_is_reported_with_a_restart_message(home, ca_set):
    h, profiles = home
    # a live lock as Firefox leaves it: "<address>:+<pid>" of a running process on this host
    os.symlink("127.0.0.1:+%d" % os.getpid(), os.path.join(profiles[0], "lock"))
    r = run_module("nss_provision", {"homes": [h], "certificates": ca_set, "module_library": OPENSC})
    by_path = {d["path"]: d for d in r["databases"]}
    assert by_path[profiles[0]]["restart_needed"] is True and by_path[profiles[1]]["restart_needed"] is False
    assert r["restart_needed"] is True
    msg = [w for w in r["warnings"] if "ask the user to restart Firefox" in w]
    assert msg and profiles[0] in msg[0] and profiles[1] not in msg[0]
    assert "Lab Root CA 2" in certutil_list(profiles[0])  # written all the same: SQLite locking keeps it safe


def _policies(tmp_path, ca_set, **over):
    return dict({"path": str(tmp_path / "etc" / "policies.json"), "certificate_set": ca_set,
                 "certificate_dir": str(tmp_path / "share" / "ca"), "devices": {"gem": OPENSC}, "backup": False},
                **over)


def test_policies_in_the_same_call(home, ca_set, tmp_path):
    """Issue 21: the policies (CA files + policies.json) in nss_provision's one call, as module firefox_policies
    writes them: check mode writes nothing anywhere, a real run writes both, a second run changes nothing."""
    import json

    h, profiles = home
    pol = _policies(tmp_path, ca_set)
    args = {"homes": [h], "certificates": ca_set, "module_library": OPENSC, "policies": pol}
    r = run_module("nss_provision", args, check=True, diff=True)
    assert r["changed"] is True and r["policies_result"]["changed"] is True
    assert not os.path.exists(pol["path"]) and not os.path.exists(pol["certificate_dir"])
    assert all(not os.path.exists(os.path.join(p, "cert9.db")) for p in profiles)
    assert any(d["after_header"] == pol["path"] for d in r["diff"]), [d["after_header"] for d in r["diff"]]
    r = run_module("nss_provision", args, diff=True)
    assert r["changed"] is True, r.get("msg")
    with open(pol["path"]) as f:
        written = json.load(f)["policies"]
    assert written["SecurityDevices"]["Add"] == {"gem": OPENSC}
    installed = written["Certificates"]["Install"]
    roots = [c for c in ca_set if c.get("nss_trust", "C,,").split(",")[0].count("C")]
    assert len(installed) == len(roots) and all(os.path.isfile(p) for p in installed)
    assert sorted(os.listdir(pol["certificate_dir"])) == sorted(os.path.basename(f["path"])
                                                               for f in r["policies_result"]["certificate_files"])
    for p in profiles:
        assert certutil_list(p)["Lab Root CA 2"] == "C,," and modutil_modules(p)["gem"] == OPENSC
    again = run_module("nss_provision", args)
    assert again["changed"] is False and again["policies_result"]["changed"] is False
    # the module of its own gives the same file: nothing to change
    alone = run_module("firefox_policies", pol)
    assert alone["changed"] is False, alone


@pytest.mark.parametrize("bad, says", [
    ({"location": "nowhere"}, "location"),
    ({"no_such_option": 1}, "no_such_option"),
    ({"certificate_set": [{"name": "x", "pem": "not a certificate"}]}, "certificate_set[0]"),
])
def test_bad_policies_fail_before_any_profile(home, ca_set, tmp_path, bad, says):
    """Bad policies input fails the call with a message naming it, and nothing was written: no profile database,
    no CA file, no policies.json (checked before the first profile)."""
    h, profiles = home
    pol = dict(_policies(tmp_path, ca_set), **bad)
    r = run_module("nss_provision", {"homes": [h], "certificates": ca_set, "module_library": OPENSC,
                                     "policies": pol})
    assert r.get("failed") is True and says in r["msg"], r["msg"]
    assert all(not os.path.exists(os.path.join(p, "cert9.db")) for p in profiles)
    assert not os.path.exists(pol["path"]) and not os.path.exists(str(tmp_path / "share"))
