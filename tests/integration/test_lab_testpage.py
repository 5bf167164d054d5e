"""The CA's test page stand-in, driven by Python ssl clients with PEM keys (in-thread and as a daemon)."""
import datetime as dt
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import testpage as tp
from lab.pki import certeurope_standin, make_ca, make_leaf

ROOT = Path(__file__).resolve().parents[2]
SET = ("Lab Root CA 2", "Lab Advanced CA V3", "Lab Root CA", "Lab Classe 3 Plus V2")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("testpage")
    pki = certeurope_standin()
    cas = []
    for name in SET:
        p = d / f"{name}.pem"
        p.write_bytes(pki[name].pem)
        cas.append(p)
    ident = tp.make_server_identity(d / "server")
    return {"dir": d, "pki": pki, "cas": cas, "ident": ident}


@pytest.fixture
def page(lab, tmp_path):
    with tp.TestPage(lab["ident"]["cert"], lab["ident"]["key"], lab["cas"], log_path=tmp_path / "log.jsonl") as p:
        yield p


def pem_pair(tmp_path, issued, name):
    c, k = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    c.write_bytes(issued.pem)
    k.write_bytes(issued.key_pem)
    return c, k


def get(lab, port, pair=None, path="/"):
    ctx = ssl.create_default_context(cafile=str(lab["ident"]["ca"]))
    if pair:
        ctx.load_cert_chain(str(pair[0]), str(pair[1]))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8")
    finally:
        conn.close()


def wait_entries(page, n):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(page.entries()) < n:
        time.sleep(0.02)
    return page.entries()


@pytest.mark.parametrize("ca", ["Lab Advanced CA V3", "Lab Classe 3 Plus V2"])
def test_holder_certificate_from_the_set_is_shown_valid_with_its_expiry(lab, page, tmp_path, ca):
    leaf = make_leaf("JEAN DUPONT", issuer=lab["pki"][ca], client=True, key_type="rsa")
    status, body = get(lab, page.port, pem_pair(tmp_path, leaf, "holder"))
    na = leaf.cert.not_valid_after_utc
    assert status == 200
    assert '<p id="holder">JEAN DUPONT</p>' in body
    assert "Votre certificat est valide" in body and "Your certificate is valid" in body
    assert f"Il expire le {na:%d/%m/%Y}" in body and f"expires on {na:%Y-%m-%d}" in body
    assert f'<p id="issuer">{ca}</p>' in body
    (entry,) = wait_entries(page, 1)
    assert entry["event"] == "request" and entry["status"] == "valid" and entry["http_status"] == 200
    assert entry["serial"] == format(leaf.cert.serial_number, "X")
    assert entry["subject"] == leaf.cert.subject.rfc4514_string()
    assert tp.read_log(page.log_path) == [entry]  # the JSON-lines log holds the same record


def test_status_json_for_programs(lab, page, tmp_path):
    leaf = make_leaf("JEAN DUPONT", issuer=lab["pki"]["Lab Advanced CA V3"], client=True)
    status, body = get(lab, page.port, pem_pair(tmp_path, leaf, "holder"), "/status.json")
    data = json.loads(body)
    assert status == 200 and data["status"] == "valid" and data["holder"] == "JEAN DUPONT"
    assert data["not_after"] == leaf.cert.not_valid_after_utc.isoformat() and data["days_left"] >= 1093


def test_no_certificate_gets_a_403_page(lab, page):
    status, body = get(lab, page.port)
    assert status == 403 and "Aucun certificat" in body and "No client certificate" in body
    assert "valide" not in body.replace("Aucun", "")
    (entry,) = wait_entries(page, 1)
    assert entry["status"] == "no-certificate" and entry["http_status"] == 403 and "serial" not in entry


def test_certificate_of_another_ca_is_refused_in_the_handshake(lab, page, tmp_path):
    other = make_leaf("JEAN DUPONT", issuer=make_ca("Some Other CA"), client=True)
    # TLS 1.3: the client learns it on its first read, as an alert or a bare EOF (timing); the server log says why
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(lab, page.port, pem_pair(tmp_path, other, "other"))
    (entry,) = wait_entries(page, 1)
    assert entry["event"] == "tls-error" and entry["error"] == "CERTIFICATE_VERIFY_FAILED"
    assert "unable to get local issuer certificate" in entry["detail"]


def test_expired_certificate_from_the_set_is_refused(lab, page, tmp_path):
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
    old = make_leaf("JEAN DUPONT", issuer=lab["pki"]["Lab Classe 3 Plus V2"], client=True,
                    not_before=past, not_after=past + dt.timedelta(days=30))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(lab, page.port, pem_pair(tmp_path, old, "old"))
    (entry,) = wait_entries(page, 1)
    assert entry["event"] == "tls-error" and "certificate has expired" in entry["detail"]


def test_certificate_without_client_auth_usage_is_refused(lab, page, tmp_path):
    server_only = make_leaf("www.example.test", issuer=lab["pki"]["Lab Advanced CA V3"],
                            server_names=["www.example.test"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(lab, page.port, pem_pair(tmp_path, server_only, "srv"))
    (entry,) = wait_entries(page, 1)
    assert entry["event"] == "tls-error" and "unsuitable certificate purpose" in entry["detail"]


def test_unknown_path_is_404(lab, page):
    status, _ = get(lab, page.port, None, "/nope")
    assert status == 404


def test_daemon_cli_start_log_and_stop(lab, tmp_path):
    d = tmp_path / "daemon"
    d.mkdir()
    pidfile, state, log = d / "tp.pid", d / "tp.json", d / "requests.jsonl"
    args = [sys.executable, "-m", "lab.testpage", "--cert", str(lab["ident"]["cert"]),
            "--key", str(lab["ident"]["key"]), "--log", str(log), "--pidfile", str(pidfile), "--state", str(state)]
    for ca in lab["cas"]:
        args += ["--client-ca", str(ca)]
    out = subprocess.run([*args, "--daemon"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    url = out.stdout.strip()
    st = json.loads(state.read_text())
    try:
        assert url == st["url"] == f"https://127.0.0.1:{st['port']}/"
        pid = int(pidfile.read_text())
        assert pid == st["pid"] and tp.running_pid(pidfile) == pid
        # a second start is refused while it runs
        again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "already running" in again.stderr
        leaf = make_leaf("JEAN DUPONT", issuer=lab["pki"]["Lab Advanced CA V3"], client=True)
        status, body = get(lab, st["port"], pem_pair(tmp_path, leaf, "holder"))
        assert status == 200 and "JEAN DUPONT" in body
        assert [e["serial"] for e in tp.read_log(log)] == [format(leaf.cert.serial_number, "X")]
    finally:
        stop = subprocess.run([sys.executable, "-m", "lab.testpage", "--pidfile", str(pidfile), "--stop"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    assert stop.stdout.strip() == "stopped"
    assert not pidfile.exists()
    assert not tp.running_pid(pidfile) and not _alive(pid)
    stop = subprocess.run([sys.executable, "-m", "lab.testpage", "--pidfile", str(pidfile), "--stop"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert stop.stdout.strip() == "not running"


def _alive(pid):
    """Running (a zombie waiting for its reaper does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_ignores_a_pidfile_of_another_process(tmp_path):
    pidfile = tmp_path / "tp.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # pytest itself: not a test page, must not be killed
    assert tp.stop_daemon(pidfile) is False
    assert not pidfile.exists()
    assert _alive(os.getpid())
