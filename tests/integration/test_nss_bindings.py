"""tokentrust_nss on real libnss3 and temporary databases, every result cross-checked with certutil / modutil."""
import os
import pwd
import shutil
import subprocess
import sys

import pytest
from ansible.module_utils.tokentrust_nss import (
    DatabaseLockedError,
    LegacyDatabaseError,
    NSSDatabase,
    NSSError,
    nss_version,
)

from lab.pki import certeurope_standin, make_ca
from tests.support.nsstools import certutil_der, certutil_list, modutil_modules, snapshot

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.fixture(scope="module")
def chain():
    return certeurope_standin()


@pytest.fixture
def db(tmp_path):
    d = tmp_path / "profile"
    d.mkdir()
    return str(d)


def populated(d, chain):
    with NSSDatabase(d, readonly=False) as db:
        for name, c in chain.items():
            db.add_certificate(c.pem, name, "C,," if c.cert.issuer == c.cert.subject else ",,")
    return d


def test_version():
    assert nss_version().startswith("3.")


def test_import_listed_by_certutil(db, chain):
    populated(db, chain)
    assert certutil_list(db) == {"Lab Root CA 2": "C,,", "Lab Advanced CA V3": ",,", "Lab Root CA": "C,,",
                                 "Lab Classe 3 Plus V2": ",,"}
    assert certutil_der(db, "Lab Root CA 2") == chain["Lab Root CA 2"].der
    with NSSDatabase(db) as ro:
        certs = {c.nickname: c for c in ro.certificates()}
    c = certs["Lab Root CA 2"]
    assert c.sha256 == chain["Lab Root CA 2"].sha256
    assert c.trust == "C,,"
    assert "CN=Lab Root CA 2" in c.subject and c.subject == c.issuer
    assert c.not_after == chain["Lab Root CA 2"].cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_reimport_changes_nothing(db, chain):
    populated(db, chain)
    before = snapshot(db)
    with NSSDatabase(db, readonly=False) as rw:
        for name, c in chain.items():
            want = "C,," if c.cert.issuer == c.cert.subject else ",,"
            assert rw.add_certificate(c.der, name, want) == "unchanged"
    assert snapshot(db) == before


def test_trust_change(db, chain):
    populated(db, chain)
    with NSSDatabase(db, readonly=False) as rw:
        assert rw.add_certificate(chain["Lab Root CA"].der, "Lab Root CA", "CT,C,") == "trust_changed"
        assert rw.set_trust(chain["Lab Root CA 2"].der, ",,") is True
        assert rw.set_trust(chain["Lab Root CA 2"].der, ",,") is False
    listed = certutil_list(db)
    assert listed["Lab Root CA"] == "CT,C,"
    assert listed["Lab Root CA 2"] == ",,"


def test_delete(db, chain):
    populated(db, chain)
    with NSSDatabase(db, readonly=False) as rw:
        assert rw.delete_certificate(nickname="Lab Advanced CA V3") is True
        assert rw.delete_certificate(der=chain["Lab Root CA"].der) is True
        assert rw.delete_certificate(nickname="Lab Advanced CA V3") is False
    assert set(certutil_list(db)) == {"Lab Root CA 2", "Lab Classe 3 Plus V2"}


def test_module_add_and_remove(db):
    with NSSDatabase(db, readonly=False) as rw:
        assert rw.add_module("gem", SOFTHSM) is True
        assert rw.add_module("gem", SOFTHSM) is False
    assert modutil_modules(db)["gem"] == SOFTHSM
    with NSSDatabase(db) as ro:
        gem = ro.find_module("gem")
        assert gem["library"] == SOFTHSM and gem["slots"], gem
        internal = [m for m in ro.modules() if m["internal"]][0]
        tokens = [s["token"] for s in internal["slots"]]
        assert "NSS Certificate DB" in tokens
    with NSSDatabase(db, readonly=False) as rw:
        assert rw.delete_module("gem") is True
        assert rw.delete_module("gem") is False
    assert "gem" not in modutil_modules(db)


def test_fifty_databases_one_process(tmp_path, chain):
    dirs = []
    for i in range(50):
        d = tmp_path / ("p%02d" % i)
        d.mkdir()
        dirs.append(str(d))
        with NSSDatabase(str(d), readonly=False) as rw:
            for name, c in chain.items():
                rw.add_certificate(c.der, name, "C,,")
            rw.add_module("gem", SOFTHSM)
    for d in dirs[::7] + [dirs[-1]]:
        assert set(certutil_list(d)) == set(chain)
        assert "gem" in modutil_modules(d)


# ----------------------------------------------------------------------------- bad input


def test_missing_directory(tmp_path):
    d = str(tmp_path / "nope")
    with pytest.raises(NSSError, match="does not exist"):
        with NSSDatabase(d, readonly=False):
            pass
    assert not os.path.exists(d)


def test_read_only_directory(tmp_path, chain):
    d = tmp_path / "ro"
    d.mkdir()
    populated(str(d), chain)
    before = snapshot(str(d))
    if os.geteuid() == 0:
        # root ignores permission bits: make the file system itself read-only with a bind mount
        r = subprocess.run(["mount", "--bind", "-o", "ro", str(d), str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot make a read-only mount here: %s" % r.stderr)
        try:
            with pytest.raises(NSSError, match="not writable"):
                with NSSDatabase(str(d), readonly=False):
                    pass
        finally:
            subprocess.run(["umount", str(d)], check=True)
    else:
        os.chmod(d, 0o555)
        try:
            with pytest.raises(NSSError, match="not writable"):
                with NSSDatabase(str(d), readonly=False):
                    pass
        finally:
            os.chmod(d, 0o755)
    assert snapshot(str(d)) == before


@pytest.mark.parametrize("content,reason", [
    (b"", "is empty"),
    (b"this is not a database at all" * 10, "is not an SQLite database"),
    (None, "is truncated"),
])
def test_broken_cert9(db, chain, content, reason):
    populated(db, chain)
    p = os.path.join(db, "cert9.db")
    if content is None:
        with open(p, "rb") as f:
            content = f.read()[:8192]
    with open(p, "wb") as f:
        f.write(content)
    before = snapshot(db)
    for ro in (True, False):
        with pytest.raises(NSSError, match=reason) as ei:
            with NSSDatabase(db, readonly=ro):
                pass
        assert ei.value.name == "TT_BAD_DATABASE_FILE"
        assert p in str(ei.value)
    assert snapshot(db) == before


def test_legacy_dbm_profile(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    subprocess.run(["certutil", "-N", "-d", "dbm:%s" % d, "--empty-password"], check=True, capture_output=True)
    assert (d / "cert8.db").exists()
    before = snapshot(str(d))
    with pytest.raises(LegacyDatabaseError, match=r"legacy dbm database \(cert8.db"):
        with NSSDatabase(str(d), readonly=False):
            pass
    assert snapshot(str(d)) == before


def test_garbage_der(db, chain):
    populated(db, chain)
    before = snapshot(db)
    with NSSDatabase(db, readonly=False) as rw:
        with pytest.raises(NSSError, match="not a DER certificate") as ei:
            rw.add_certificate(b"\x01\x02garbage", "bad", "C,,")
        assert ei.value.name == "TT_BAD_INPUT"
        with pytest.raises(NSSError, match="DER length mismatch"):
            rw.add_certificate(chain["Lab Root CA"].der[:-10], "bad", "C,,")
        # structurally a SEQUENCE but not a certificate: NSS itself refuses it
        with pytest.raises(NSSError) as ei:
            rw.add_certificate(b"\x30\x03\x02\x01\x05", "bad", "C,,")
        assert ei.value.name.startswith("SEC_ERROR_")
        with pytest.raises(NSSError, match="not a certutil trust string"):
            rw.add_certificate(chain["Lab Root CA"].der, "x", "trusted")
    assert snapshot(db) == before
    assert "bad" not in certutil_list(db)


def test_pem_with_two_certificates(db, chain):
    populated(db, chain)
    before = snapshot(db)
    two = chain["Lab Root CA"].pem + chain["Lab Root CA 2"].pem
    with NSSDatabase(db, readonly=False) as rw:
        with pytest.raises(NSSError, match="holds 2 certificates"):
            rw.add_certificate(two, "two", "C,,")
    assert snapshot(db) == before


def test_nickname_taken(db, chain):
    populated(db, chain)
    before = snapshot(db)
    other = make_ca("Someone Else")
    with NSSDatabase(db, readonly=False) as rw:
        with pytest.raises(NSSError, match="already used by another certificate") as ei:
            rw.add_certificate(other.der, "Lab Root CA", "C,,")
        assert ei.value.name == "TT_NICKNAME_TAKEN"
        assert chain["Lab Root CA"].sha256 in str(ei.value)
    assert snapshot(db) == before


def test_module_library_missing(db, chain):
    populated(db, chain)
    before = snapshot(db)
    with NSSDatabase(db, readonly=False) as rw:
        with pytest.raises(NSSError, match="does not exist on this host") as ei:
            rw.add_module("gem", "/usr/lib/pkcs11/libgclib-missing.so")
        assert ei.value.name == "TT_NO_LIBRARY"
    assert snapshot(db) == before
    assert "gem" not in modutil_modules(db)


def test_database_held_by_another_process(db, chain):
    populated(db, chain)
    before = snapshot(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)", os.path.join(db, "cert9.db")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DatabaseLockedError, match="locked by another process"):
            with NSSDatabase(db, readonly=False) as rw:
                rw.add_certificate(make_ca("X").der, "x", "C,,")
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(db) == before


def test_failure_after_a_write_restores_the_files(db, chain):
    populated(db, chain)
    before = snapshot(db)
    with pytest.raises(RuntimeError):
        with NSSDatabase(db, readonly=False) as rw:
            rw.add_certificate(make_ca("Half").der, "half", "C,,")
            raise RuntimeError("simulated failure after a write")
    assert "half" not in certutil_list(db)
    assert snapshot(db) == before


def test_one_database_at_a_time(tmp_path, chain):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with NSSDatabase(str(a), readonly=False):
        with pytest.raises(NSSError, match="another NSS database is open"):
            with NSSDatabase(str(b), readonly=False):
                pass
    assert not (b / "cert9.db").exists()


def test_readonly_refuses_writes(db, chain):
    populated(db, chain)
    with NSSDatabase(db) as ro:
        with pytest.raises(NSSError, match="opened read-only"):
            ro.add_certificate(chain["Lab Root CA"].der, "x", "C,,")


# ----------------------------------------------------------------------------- ownership


@pytest.fixture
def other_user():
    if os.geteuid() != 0:
        pytest.skip("needs root to act on another user's profile")
    name = "tt_nss_user"
    subprocess.run(["userdel", "-r", name], capture_output=True)
    subprocess.run(["useradd", "-m", name], check=True)
    yield pwd.getpwnam(name)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


def test_root_keeps_profile_owner(other_user, chain):
    home = other_user.pw_dir
    prof = os.path.join(home, ".mozilla", "firefox", "abcd.default-esr")
    os.makedirs(prof)
    for p in (os.path.join(home, ".mozilla"), os.path.join(home, ".mozilla", "firefox"), prof):
        os.chown(p, other_user.pw_uid, other_user.pw_gid)
    # the user's own database, made by the user with NSS's tool; one file with a non-default mode
    subprocess.run(["runuser", "-u", other_user.pw_name, "--", "certutil", "-N", "-d", "sql:" + prof,
                    "--empty-password"], check=True, capture_output=True)
    os.chmod(os.path.join(prof, "pkcs11.txt"), 0o644)
    with NSSDatabase(prof, readonly=False) as rw:
        rw.add_certificate(chain["Lab Root CA"].der, "Lab Root CA", "C,,")
        rw.add_module("gem", SOFTHSM)
    # and a brand-new profile, created by us as root
    fresh = os.path.join(home, ".mozilla", "firefox", "new.profile")
    os.makedirs(fresh)
    os.chown(fresh, other_user.pw_uid, other_user.pw_gid)
    with NSSDatabase(fresh, readonly=False) as rw:
        rw.add_certificate(chain["Lab Root CA"].der, "Lab Root CA", "C,,")
    for d in (prof, fresh):
        for name in os.listdir(d):
            st = os.stat(os.path.join(d, name))
            assert (st.st_uid, st.st_gid) == (other_user.pw_uid, other_user.pw_gid), (d, name)
    assert oct(os.stat(os.path.join(prof, "pkcs11.txt")).st_mode & 0o777) == "0o644"
    assert oct(os.stat(os.path.join(fresh, "cert9.db")).st_mode & 0o777) == "0o600"
    # the user can still use it
    out = subprocess.run(["runuser", "-u", other_user.pw_name, "--", "certutil", "-L", "-d", "sql:" + prof],
                         capture_output=True, text=True, check=True).stdout
    assert "Lab Root CA" in out


@pytest.mark.firefox
def test_database_opens_in_firefox(tmp_path, chain):
    firefox = shutil.which("firefox-esr") or shutil.which("firefox")
    if not firefox:
        pytest.fail("firefox-esr is not installed (make setup installs it)")
    prof = tmp_path / "ffprofile"
    prof.mkdir()
    populated(str(prof), chain)
    with NSSDatabase(str(prof), readonly=False) as rw:
        rw.add_module("gem", SOFTHSM)
    env = dict(os.environ, MOZ_HEADLESS="1", HOME=str(tmp_path))
    r = subprocess.run([firefox, "--headless", "--no-remote", "-profile", str(prof), "--screenshot",
                        str(tmp_path / "shot.png"), "about:blank"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert (tmp_path / "shot.png").exists(), r.stderr[-2000:]
    # Firefox used the profile (it wrote its prefs) and kept our certificates and module
    assert (prof / "prefs.js").exists()
    assert certutil_list(str(prof))["Lab Root CA 2"] == "C,,"
    assert modutil_modules(str(prof))["gem"] == SOFTHSM
