"""Unit tests: module_utils/tokentrust_profiles.py on generated homes (real files, no mocks)."""
import os
import subprocess
import sys
import textwrap

import pytest
from ansible.module_utils.tokentrust_profiles import (
    ProfilesError,
    db_format,
    find_profiles,
    lock_state,
    select_homes,
)


def write(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))


def make_root(root, profiles, installs=None, extra=""):
    """profiles: list of (section dict); creates the dirs of relative ones."""
    lines = ["[General]", "StartWithLastProfile=1", "Version=2", ""]
    for i, p in enumerate(profiles):
        lines.append(f"[Profile{i}]")
        lines += [f"{k}={v}" for k, v in p.items()]
        lines.append("")
        if p.get("IsRelative", "1") == "1":
            os.makedirs(os.path.join(root, p["Path"]), exist_ok=True)
        else:
            os.makedirs(p["Path"], exist_ok=True)
    write(os.path.join(root, "profiles.ini"), "\n".join(lines) + extra)
    if installs:
        write(os.path.join(root, "installs.ini"),
              "".join(f"[{h}]\nDefault={d}\nLocked=1\n\n" for h, d in installs.items()))


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home" / "alice"
    h.mkdir(parents=True)
    return str(h)


def by_path(res):
    return {p["path"]: p for p in res["profiles"]}


def test_legacy_root_relative_absolute_defaults_formats(home, tmp_path):
    root = os.path.join(home, ".mozilla/firefox")
    elsewhere = os.path.join(home, "elsewhere", "work")  # absolute, inside the home (outside: refused, see below)
    make_root(root, [
        {"Name": "default-esr", "IsRelative": "1", "Path": "abcd.default-esr", "Default": "1"},
        {"Name": "work", "IsRelative": "0", "Path": elsewhere},
        {"Name": "old", "IsRelative": "1", "Path": "old.profile"},
    ], installs={"4F96D1932A9F858E": elsewhere})
    write(os.path.join(root, "abcd.default-esr", "cert9.db"))
    write(os.path.join(elsewhere, "cert8.db"))
    res = find_profiles(homes=[home])
    ps = by_path(res)
    assert set(ps) == {os.path.join(root, "abcd.default-esr"), elsewhere, os.path.join(root, "old.profile")}
    a = ps[os.path.join(root, "abcd.default-esr")]
    assert (a["name"], a["kind"], a["relative"], a["default"], a["format"]) == (
        "default-esr", "firefox", True, True, "sql")
    assert a["nss_db"] == "sql:" + a["path"] and a["root"] == root
    w = ps[elsewhere]
    assert (w["relative"], w["default"], w["default_for_installs"], w["format"]) == (
        False, True, ["4F96D1932A9F858E"], "dbm")
    o = ps[os.path.join(root, "old.profile")]
    assert (o["default"], o["format"]) == (False, "none")
    st = os.stat(home)
    assert a["owner"]["uid"] == st.st_uid and a["owner"]["gid"] == st.st_gid
    assert res["roots"] == [{"path": root, "kind": "firefox", "user": a["owner"]["name"], "profiles": 3,
                             "error": None}]
    assert all(p["in_use"] is False for p in res["profiles"])


def test_install_section_inside_profiles_ini(home):
    root = os.path.join(home, ".mozilla/firefox")
    make_root(root, [{"Name": "a", "IsRelative": "1", "Path": "a.a"}, {"Name": "b", "IsRelative": "1", "Path": "b.b"}],
              extra="[InstallE7CF176E110C211B]\nDefault=b.b\nLocked=1\n")
    ps = {p["name"]: p for p in find_profiles(homes=[home])["profiles"]}
    assert ps["a"]["default"] is False
    assert ps["b"]["default"] is True and ps["b"]["default_for_installs"] == ["E7CF176E110C211B"]


@pytest.mark.parametrize("rel,kind", [
    (".mozilla/firefox", "firefox"),
    (".config/mozilla/firefox", "firefox"),
    ("snap/firefox/common/.mozilla/firefox", "firefox-snap"),
    (".var/app/org.mozilla.firefox/.mozilla/firefox", "firefox-flatpak"),
    (".var/app/org.mozilla.firefox/config/mozilla/firefox", "firefox-flatpak"),
    ("Library/Application Support/Firefox", "firefox"),
])
def test_every_firefox_root(home, rel, kind):
    root = os.path.join(home, rel)
    make_root(root, [{"Name": "p", "IsRelative": "1", "Path": "Profiles/x.default"}])
    res = find_profiles(homes=[home])
    assert [(p["path"], p["kind"]) for p in res["profiles"]] == [(os.path.join(root, "Profiles/x.default"), kind)]


def test_thunderbird_and_chromium_only_on_request(home):
    make_root(os.path.join(home, ".mozilla/firefox"), [{"Name": "f", "IsRelative": "1", "Path": "f.f"}])
    make_root(os.path.join(home, ".thunderbird"), [{"Name": "t", "IsRelative": "1", "Path": "t.t"}])
    make_root(os.path.join(home, ".var/app/org.mozilla.Thunderbird/.thunderbird"),
              [{"Name": "tf", "IsRelative": "1", "Path": "tf.tf"}])
    write(os.path.join(home, ".pki/nssdb/cert9.db"))
    assert [p["name"] for p in find_profiles(homes=[home])["profiles"]] == ["f"]
    res = find_profiles(homes=[home], include_thunderbird=True, include_chromium=True)
    assert sorted((p["name"], p["kind"]) for p in res["profiles"]) == [
        ("f", "firefox"), ("nssdb", "chromium"), ("t", "thunderbird"), ("tf", "thunderbird")]
    c = next(p for p in res["profiles"] if p["kind"] == "chromium")
    assert c["path"] == os.path.join(home, ".pki/nssdb") and c["format"] == "sql" and c["in_use"] is False


@pytest.mark.parametrize("bad,needle", [
    ("Name=x\nPath=y\n", "MissingSectionHeaderError"),
    ("[Profile0]\nName=a\nPath=a\n[Profile0]\nName=b\nPath=b\n", "DuplicateSectionError"),
    ("[Profile0]\nName=a\nName=b\nPath=a\n", "DuplicateOptionError"),
])
def test_malformed_root_reported_others_listed(home, tmp_path, bad, needle):
    write(os.path.join(home, ".mozilla/firefox/profiles.ini"), bad)
    good = os.path.join(home, ".config/mozilla/firefox")
    make_root(good, [{"Name": "ok", "IsRelative": "1", "Path": "ok.ok"}])
    res = find_profiles(homes=[home])
    assert [p["name"] for p in res["profiles"]] == ["ok"]
    bad_root = next(r for r in res["roots"] if r["path"].endswith(".mozilla/firefox"))
    assert needle in bad_root["error"] and bad_root["profiles"] == 0
    assert any("profiles.ini: malformed profiles.ini" in w and needle in w for w in res["warnings"])


def test_missing_dir_and_missing_path_skipped_with_warning(home):
    root = os.path.join(home, ".mozilla/firefox")
    write(os.path.join(root, "profiles.ini"), "[Profile0]\nName=gone\nIsRelative=1\nPath=gone.gone\n\n"
                                              "[Profile1]\nName=nopath\n")
    res = find_profiles(homes=[home])
    assert res["profiles"] == []
    assert any("gone.gone does not exist, skipped" in w for w in res["warnings"])
    assert any("[Profile1] has no Path, skipped" in w for w in res["warnings"])


def test_symlinked_root_listed_once(home):
    real = os.path.join(home, ".config/mozilla/firefox")
    make_root(real, [{"Name": "p", "IsRelative": "1", "Path": "p.p"}])
    os.makedirs(os.path.join(home, ".mozilla"))
    os.symlink(real, os.path.join(home, ".mozilla/firefox"))
    res = find_profiles(homes=[home])
    assert len(res["profiles"]) == 1 and len(res["roots"]) == 1


@pytest.mark.parametrize("files,fmt", [
    ((), "none"), (("cert9.db",), "sql"), (("pkcs11.txt",), "sql"), (("cert8.db", "secmod.db"), "dbm"),
    (("secmod.db",), "dbm"), (("cert8.db", "cert9.db"), "sql"), (("times.json",), "none"),
])
def test_db_format(tmp_path, files, fmt):
    for f in files:
        (tmp_path / f).write_text("")
    assert db_format(str(tmp_path)) == fmt


# ------------------------------------------------------------------ locks
LOCAL = {"127.0.0.1", "127.0.1.1"}


def test_lock_symlink_live_pid(tmp_path):
    os.symlink(f"127.0.1.1:+{os.getpid()}", tmp_path / "lock")
    in_use, how = lock_state(str(tmp_path), LOCAL)
    assert in_use is True and f"pid {os.getpid()} is running" in how


def test_lock_symlink_stale_pid(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    os.symlink(f"127.0.1.1:+{p.pid}", tmp_path / "lock")
    in_use, how = lock_state(str(tmp_path), LOCAL)
    assert in_use is False and "stale lock symlink" in how


def test_lock_symlink_other_host(tmp_path):
    os.symlink("192.0.2.40:+1234", tmp_path / "lock")
    in_use, how = lock_state(str(tmp_path), LOCAL)
    assert in_use is True and "another host (192.0.2.40)" in how


def test_parentlock_held_by_another_process(tmp_path):
    lockfile = tmp_path / ".parentlock"
    lockfile.write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX);"
         "print('locked', flush=True); time.sleep(60)", str(lockfile)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        in_use, how = lock_state(str(tmp_path), LOCAL)
        assert in_use is True and f"locked (fcntl) by pid {holder.pid}" in how
    finally:
        holder.kill()
        holder.wait()
    in_use, how = lock_state(str(tmp_path), LOCAL)
    assert in_use is False and "not locked" in how


def test_no_lock(tmp_path):
    assert lock_state(str(tmp_path), LOCAL) == (
        False, "no lock held (no live lock symlink, .parentlock not locked)")


# ------------------------------------------------------------------ homes / users
def test_select_homes_default_has_root_and_only_real_users():
    homes = select_homes()
    names = [o["name"] for _, o in homes]
    assert "root" in names
    assert all(o["uid"] == 0 or o["uid"] >= 1000 for _, o in homes)
    assert "nobody" not in names and "daemon" not in names


def test_select_users_unknown():
    with pytest.raises(ProfilesError, match="user 'no-such-user-tt' does not exist on this host"):
        select_homes(users=["no-such-user-tt"])


def test_select_homes_missing():
    with pytest.raises(ProfilesError, match="home /nonexistent/tt: No such file or directory"):
        select_homes(homes=["/nonexistent/tt"])


def test_users_root():
    homes = select_homes(users=["root"])
    assert homes == [("/root", {"name": "root", "uid": 0, "gid": 0})]
