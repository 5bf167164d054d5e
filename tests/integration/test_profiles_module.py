"""Integration: library/firefox_profiles_info.py through `ansible`, on profiles made by real Firefox ESR.

Firefox ESR 153 run with a fresh HOME creates its profiles under ~/.config/mozilla/firefox (the
Firefox 147+ XDG location); while it runs, the profile's `lock` symlink and `.parentlock` are held.
"""
import os
import shutil
import signal
import subprocess
import time

import pytest

from .test_policies_module import run_module

FIREFOX = shutil.which("firefox-esr")
needs_firefox = pytest.mark.skipif(not FIREFOX, reason="firefox-esr not installed")


def ff_env(home):
    env = dict(os.environ, HOME=home, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1", XDG_CONFIG_HOME="",
               XDG_CACHE_HOME="")
    for k in ("DISPLAY", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        env.pop(k, None)
    return env


@pytest.fixture
def ff_home(tmp_path):
    """A home with one Firefox profile created by Firefox itself (-CreateProfile)."""
    home = str(tmp_path / "home" / "alice")
    os.makedirs(home)
    subprocess.run([FIREFOX, "--headless", "-CreateProfile", "alpha"], env=ff_env(home), check=True,
                   capture_output=True, timeout=60)
    return home


def info(args, check=False):
    r = run_module("firefox_profiles_info", args, check=check)
    assert r.get("failed") is not True, r
    assert r["changed"] is False
    return r


@needs_firefox
@pytest.mark.firefox
def test_real_profile_found_and_lock_followed(ff_home):
    root = os.path.join(ff_home, ".config/mozilla/firefox")
    r = info({"homes": [ff_home]}, check=True)
    assert len(r["profiles"]) == 1, r
    p = r["profiles"][0]
    assert p["name"] == "alpha" and p["kind"] == "firefox" and p["root"] == root
    assert p["path"].startswith(root + "/") and p["path"].endswith(".alpha") and p["relative"] is True
    assert p["format"] == "none" and p["in_use"] is False
    assert p["nss_db"] == "sql:" + p["path"]
    assert r["roots"] == [{"path": root, "kind": "firefox", "user": p["owner"]["name"], "profiles": 1,
                           "error": None}]

    proc = subprocess.Popen([FIREFOX, "--headless", "--no-remote", "-profile", p["path"], "about:blank"],
                            env=ff_env(ff_home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not os.path.exists(os.path.join(p["path"], "cert9.db")):
            time.sleep(0.5)
        time.sleep(1)
        running = info({"homes": [ff_home]})["profiles"][0]
        assert running["in_use"] is True, running
        assert f"pid {proc.pid} is running" in running["lock"] or f"by pid {proc.pid}" in running["lock"], running
        assert running["format"] == "sql"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    after = info({"homes": [ff_home]})["profiles"][0]
    assert after["in_use"] is False, after


def test_malformed_root_warns_and_others_listed(tmp_path):
    home = tmp_path / "bob"
    (home / ".mozilla/firefox").mkdir(parents=True)
    (home / ".mozilla/firefox/profiles.ini").write_text("Path=nope\n")
    snap = home / "snap/firefox/common/.mozilla/firefox"
    (snap / "s.default").mkdir(parents=True)
    (snap / "profiles.ini").write_text("[Profile0]\nName=snappy\nIsRelative=1\nPath=s.default\nDefault=1\n")
    (snap / "s.default" / "cert8.db").write_text("")
    r = info({"homes": [str(home)], "include_thunderbird": True, "include_chromium": True})
    assert [(p["name"], p["kind"], p["default"], p["format"]) for p in r["profiles"]] == [
        ("snappy", "firefox-snap", True, "dbm")]
    assert any("malformed profiles.ini: MissingSectionHeaderError" in w for w in r.get("warnings", [])), r
    assert [x["error"] is None for x in r["roots"]] == [False, True]


def test_default_scan_runs_and_includes_root():
    r = info({})
    assert "/root" in [h["path"] for h in r["homes"]]


@pytest.mark.parametrize("args,msg", [
    ({"users": ["no-such-user-tt"]}, "user 'no-such-user-tt' does not exist on this host"),
    ({"users": ["root"], "homes": ["/root"]}, "parameters are mutually exclusive: users|homes"),
    ({"homes": ["/nonexistent/tt"]}, "home /nonexistent/tt: No such file or directory"),
])
def test_bad_inputs(args, msg):
    r = run_module("firefox_profiles_info", args)
    assert r.get("failed") is True and msg in r["msg"], r
