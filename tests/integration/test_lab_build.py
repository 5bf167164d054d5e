"""The lab builder: create / re-create / destroy on a small lab in a temporary folder, real state checked."""
import hashlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from lab import build
from lab import testpage as tp
from lab.pki import Issued, make_leaf

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
needs_firefox = pytest.mark.skipif(not shutil.which("firefox-esr"), reason="needs firefox-esr")


@pytest.fixture
def dirs(tmp_path):
    run, inv = tmp_path / "run", tmp_path / "inventories" / "lab"
    yield run, inv
    build.destroy(run, inventory=inv)  # whatever happened: stop the daemon, remove the lab


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _page_get(m, tmp_path):
    """A client certificate made with the lab's own CA key (pki/private) against the lab's test page."""
    ca_entry = next(e for e in m["pki"]["cas"] if e["name"] == "Lab Advanced CA V3")
    ca = build._load_issued(ca_entry)
    leaf = make_leaf("JEAN DUPONT", issuer=ca, client=True)
    (tmp_path / "c.pem").write_bytes(leaf.pem)
    (tmp_path / "c.key").write_bytes(leaf.key_pem)
    tls_ca = next(e for e in m["pki"]["cas"] if e["name"] == "Lab TLS CA")
    ctx = ssl.create_default_context(cafile=tls_ca["path"])
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", m["testpage"]["port"], context=ctx, timeout=10)
    conn.request("GET", "/")
    r = conn.getresponse()
    return r.status, r.read().decode(), leaf


def _inventory(inv):
    out = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inv / "hosts.yml"), "--list"], check=True,
                         capture_output=True, text=True, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    return json.loads(out.stdout)


@needs_firefox
@pytest.mark.firefox
def test_create_twice_then_destroy(dirs, tmp_path):
    run, inv = dirs
    m = build.create(run, hosts=2, inventory=inv)
    assert set(m["actions"]) == {"pki", "token", "testpage", "home-01", "home-02", "inventory"}
    on_disk = json.loads((run / "lab.json").read_text())
    assert on_disk == {k: v for k, v in m.items() if k not in ("actions", "seconds")}
    assert oct((run / "lab.json").stat().st_mode & 0o777) == "0o600"

    # PKI: the pins are the SHA-256 of the certificates in the files
    names = [e["name"] for e in m["pki"]["cas"]]
    assert names == ["Lab Root CA 2", "Lab Advanced CA V3", "Lab Root CA", "Lab Classe 3 Plus V2", "Lab TLS CA"]
    for e in m["pki"]["cas"]:
        cert = x509.load_pem_x509_certificate(Path(e["path"]).read_bytes())
        from cryptography.hazmat.primitives.serialization import Encoding

        assert e["sha256"] == build._colon(hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest().upper())
        assert oct(Path(e["key"]).stat().st_mode & 0o777) == "0o600"

    # token: label and both certificates, through the pin_guard copy named in the manifest
    module = m["token"]["module"]
    assert module == str(run / "token" / "libpin_guard.so")
    out = subprocess.run(["pkcs11-tool", "--module", module, "-O"], capture_output=True, text=True, check=True).stdout
    assert out.count("Certificate Object") == 2 and "JEAN DUPONT (Lab Classe 3 Plus V2)" in out

    # test page: up, accepts the lab chain, logs
    pid, port = m["testpage"]["pid"], m["testpage"]["port"]
    assert _alive(pid)
    status, body, leaf = _page_get(m, tmp_path)
    assert status == 200 and "JEAN DUPONT" in body and "Votre certificat est valide" in body
    assert tp.read_log(m["testpage"]["log"])[-1]["serial"] == format(leaf.cert.serial_number, "X")

    # homes: profiles made by Firefox, of two kinds, readable by certutil
    h1, h2 = m["hosts"]
    assert (h1["kind"], h2["kind"]) == ("mozilla", "xdg")
    assert h1["profiles_root"] == str(run / "homes" / "home-01" / ".mozilla" / "firefox")
    assert h2["profiles_root"] == str(run / "homes" / "home-02" / ".config" / "mozilla" / "firefox")
    for h in m["hosts"]:
        root = Path(h["profiles_root"])
        assert (root / "profiles.ini").exists() and (root / "installs.ini").exists()
        with_db = [p for p in h["profiles"] if p["databases"]]
        assert [p["name"] for p in with_db] == ["default-esr"]
        assert not (Path(with_db[0]["path"]) / "lock").is_symlink()  # no stale lock left behind
        subprocess.run(["certutil", "-L", "-d", f"sql:{with_db[0]['path']}"], check=True, capture_output=True)

    # inventory, as Ansible reads it
    data = _inventory(inv)
    hv = data["_meta"]["hostvars"]
    assert sorted(data["workstations"]["hosts"]) == ["lab-ws-01", "lab-ws-02"]
    assert hv["lab-ws-01"]["tokentrust_home"] == str(run / "homes" / "home-01")
    assert hv["lab-ws-02"]["ansible_connection"] == "local"
    assert hv["lab-ws-02"]["ansible_python_interpreter"] == m["python"]
    assert [c["sha256"] for c in hv["lab-ws-01"]["ca_certificates_list"]] == [e["sha256"] for e in m["pki"]["cas"]]
    assert hv["lab-ws-01"]["tokentrust_token_module"] == module
    assert hv["lab-ws-01"]["tokentrust_test_url"] == f"https://127.0.0.1:{port}/"
    assert hv["lab-ws-01"]["tokentrust_lab_token_pin"] == m["token"]["lab_only_secrets"]["pin"]
    secrets = inv / "group_vars" / "all" / "lab_only_secrets.yml"
    assert "LAB ONLY" in secrets.read_text() and oct(secrets.stat().st_mode & 0o777) == "0o600"
    subprocess.run([str(BIN / "yamllint"), "-s", str(inv)], check=True, capture_output=True)

    # a second create: nothing to do, quick, same daemon, files untouched
    stamps = {p: p.stat().st_mtime_ns for p in [run / "lab.json", inv / "hosts.yml",
                                                 Path(h1["profiles_root"]) / "profiles.ini"]}
    m2 = build.create(run, hosts=2, inventory=inv)
    assert m2["actions"] == [] and m2["seconds"] < 3
    assert (m2["testpage"]["pid"], m2["testpage"]["port"]) == (pid, port)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # repair: a stopped test page comes back on the same port, a removed home is made again
    tp.stop_daemon(m["testpage"]["pidfile"])
    shutil.rmtree(run / "homes" / "home-02")
    m3 = build.create(run, hosts=2, inventory=inv)
    assert set(m3["actions"]) == {"testpage", "home-02"}
    assert m3["testpage"]["port"] == port and m3["testpage"]["pid"] != pid
    assert _page_get(m3, tmp_path)[0] == 200

    # fewer hosts: the extra home and its inventory entry go
    m4 = build.create(run, hosts=1, inventory=inv)
    assert "removed home-02" in m4["actions"] and not (run / "homes" / "home-02").exists()
    assert sorted(_inventory(inv)["workstations"]["hosts"]) == ["lab-ws-01"]

    # destroy: the daemon stops, everything the lab wrote goes
    pid4 = m4["testpage"]["pid"]
    gone = build.destroy(run, inventory=inv)
    assert "testpage (stopped)" in gone and not _alive(pid4)
    assert not run.exists()
    assert not inv.exists()  # made by the lab, removed with it
    assert build.destroy(run, inventory=inv) == []


@needs_firefox
@pytest.mark.firefox
@pytest.mark.slow
def test_every_profile_kind_and_extra_profiles(dirs):
    run, inv = dirs
    m = build.create(run, hosts=4, profiles=2, inventory=inv)
    roots = {h["kind"]: Path(h["profiles_root"]).relative_to(h["home"]).as_posix() for h in m["hosts"]}
    assert roots == {"mozilla": ".mozilla/firefox", "xdg": ".config/mozilla/firefox",
                     "snap": "snap/firefox/common/.mozilla/firefox",
                     "flatpak": ".var/app/org.mozilla.firefox/.mozilla/firefox"}
    for h in m["hosts"]:
        ini = (Path(h["profiles_root"]) / "profiles.ini").read_text()
        assert "Name=work2" in ini and "Name=default-esr" in ini
        dbs = [p for p in h["profiles"] if p["databases"]]
        assert len(dbs) == 2
        for p in dbs:
            for f in ("cert9.db", "key4.db", "pkcs11.txt"):
                assert (Path(p["path"]) / f).exists()


def test_refuses_a_folder_it_did_not_make(tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    with pytest.raises(build.LabError, match="not a lab folder"):
        build.create(foreign, hosts=1, inventory=tmp_path / "inv")
    with pytest.raises(build.LabError, match="not a lab folder"):
        build.destroy(foreign, inventory=tmp_path / "inv")
    assert (foreign / "data.txt").read_text() == "keep me"


def test_cli_status_of_no_lab(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lab.build", "status", "--dir", str(tmp_path / "none")], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"dir": str(tmp_path / "none"), "exists": False}


def test_issued_roundtrip_from_pem(tmp_path):
    from lab.pki import make_ca

    ca = make_ca("Roundtrip CA")
    entry = build._save_issued(tmp_path, ca)
    back = build._load_issued(entry)
    assert isinstance(back, Issued) and back.sha256 == ca.sha256
    assert entry["sha256"] == ca.sha256_colon


@needs_firefox
@pytest.mark.firefox
def test_firefox_loads_the_lab_token_module_without_any_environment(dirs, tmp_path):
    """pin_guard is a drop-in module: registered in a Firefox-made profile, Firefox loads it and SoftHSM2."""
    import time

    run, inv = dirs
    m = build.create(run, hosts=1, inventory=inv)
    profile = next(p["path"] for p in m["hosts"][0]["profiles"] if p["databases"])
    module = m["token"]["module"]
    subprocess.run(["modutil", "-dbdir", f"sql:{profile}", "-add", "CERTEUROPE LAB", "-libfile", module, "-force"],
                   check=True, capture_output=True, input=b"\n")
    env = build._firefox_env(Path(m["hosts"][0]["home"]))
    env.pop("SOFTHSM2_CONF", None)
    ff = subprocess.Popen([shutil.which("firefox-esr"), "--headless", "--no-remote", "--profile", profile,
                           "about:blank"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    loaded = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(loaded) < 2:
            try:
                maps = Path(f"/proc/{ff.pid}/maps").read_text()
            except OSError:
                break
            loaded = {name for name in ("libpin_guard.so", "libsofthsm2.so") if name in maps}
            time.sleep(0.2)
    finally:
        ff.terminate()
        ff.wait(30)
    assert loaded == {"libpin_guard.so", "libsofthsm2.so"}
    assert json.loads(subprocess.run([sys.executable, "-m", "lab.token", "info", module], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout)[0]["pin_flags"] == []
