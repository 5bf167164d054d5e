"""The test login cannot be fooled and wastes no PIN try (issue 18, item 6 / Why 5): real servers on 127.0.0.1.

Before the PIN is presented, pkcs11_token_login makes a TLS handshake without the key: server reachable, trusted
and named as in the URL, a client certificate requested, the acceptable CA names of the CertificateRequest, and the
same request with NO client certificate (the negative control). The servers are the ones an admin meets:
`openssl s_server -Verify 1 -CAfile <another CA>` (asks, names another CA, accepts anything), `openssl s_server
-verify 1` (optional request), a plain HTTPS server, a refused port, a wrong host name, and a Python ssl server
scripted for a 302 or a malformed chunk. The PIN tries are read from the token (pin_guard's counters, a separate
process), never from our report. Each test here fails on f8c7a58 (before the pre-flight).

Run: .venv/bin/pytest tests/integration/test_token_login_preflight.py
"""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.support.token_lab import PIN, PUK, ca_set_fact, flags_of, run_inproc, run_module, write_pems

pytestmark = pytest.mark.skipif(shutil.which("softhsm2-util") is None or shutil.which("openssl") is None,
                                reason="softhsm2 / openssl not installed")
WRONG = "00000000"  # a wrong PIN: if it were presented, the token's counter would show it


@pytest.fixture(scope="module")
def pki():
    from lab.pki import certeurope_standin

    return certeurope_standin()


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    from lab.testpage import make_server_identity

    return make_server_identity(tmp_path_factory.mktemp("srv"))


@pytest.fixture()
def tok(pki, tmp_path):
    from lab.token import create_token

    return create_token(tmp_path / "token", pin=PIN, puk=PUK, pki=pki)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login(tok, pki, ident, url, pin=PIN, **over):
    """verify_token in a child process (NSS and the PKCS#11 module are per process)."""
    kwargs = {"module_path": str(tok.module), "pin": pin, "ca_set": ca_set_fact(pki), "url": url,
              "server_ca_pems": [ident["ca"].read_text()], "builtin_roots": False, "timeout": 5}
    kwargs.update(over)
    return run_inproc("verify_token", kwargs)


class SServer:
    """`openssl s_server -www` on a free 127.0.0.1 port with the given options; its output kept."""

    def __init__(self, ident, tmp_path, *opts):
        self.port = free_port()
        self.out = tmp_path / ("s_server-%d.log" % self.port)
        self.cmd = ["openssl", "s_server", "-accept", "127.0.0.1:%d" % self.port, "-cert", str(ident["cert"]),
                    "-key", str(ident["key"]), "-www", *opts]
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.out.open("wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("openssl s_server did not start: %s" % self.out.read_text())

    @property
    def url(self):
        return "https://127.0.0.1:%d/" % self.port

    def log(self):
        return self.out.read_text(errors="replace")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Scripted:
    """A Python ssl server that asks for a client certificate (optional, CAs of the CA set) and answers raw bytes:
    `with_cert` when the client sent one, `without` otherwise. Records (had_cert) per request."""

    def __init__(self, ident, cas, with_cert: bytes, without: bytes = b"HTTP/1.1 403 Forbidden\r\n"
                 b"Content-Length: 0\r\nConnection: close\r\n\r\n"):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(ident["cert"]), str(ident["key"]))
        for ca in cas:
            self.ctx.load_verify_locations(cafile=str(ca))
        self.ctx.verify_mode = ssl.CERT_OPTIONAL
        self.with_cert, self.without = with_cert, without
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.seen = []
        self._t = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self):
        return "https://127.0.0.1:%d/" % self.port

    def _serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(10)
                tls = self.ctx.wrap_socket(conn, server_side=True)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                had = tls.getpeercert(binary_form=True) is not None
                self.seen.append(had)
                tls.sendall(self.with_cert if had else self.without)
                tls.close()
            except (OSError, ssl.SSLError):
                conn.close()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()


# ------------------------------------------------------------------------------------------ servers that fool
def test_server_naming_another_ca_is_refused_before_the_pin(tok, pki, ident, tmp_path):
    """s_server -Verify 1 -CAfile <another CA>: it asks for a certificate, names only another CA, and would answer
    200 to any certificate ("unable to verify the first certificate"). Not ok, and no PIN presented."""
    from lab.pki import make_ca

    other = write_pems(tmp_path / "other", [make_ca("Some Other CA", org="elsewhere")])[0]
    with SServer(ident, tmp_path, "-Verify", "1", "-CAfile", str(other)) as srv:
        res = login(tok, pki, ident, srv.url, pin=WRONG)
        assert res["ok"] is False and res["error"]["kind"] == "client_ca_not_accepted", res["error"]
        msg = res["error"]["message"]
        assert "Some Other CA" in msg and "Lab Root CA" in msg and "no PIN try spent" in msg
        pre = res["preflight"]
        assert pre["client_cert_requested"] is True and any("Some Other CA" in n for n in pre["acceptable_cas"])
        assert pre["without_client_cert"]["accepted"] is False and pre["without_client_cert"]["refused"]
        assert res["pin_attempts"] == 0 and res["logged_in"] is False and res["tls"] is None
        assert "unable to verify" not in srv.log()  # our certificate never reached it
        # the right PIN changes nothing: on f8c7a58 this was "Test login OK" (HTTP 200 from s_server)
        res = login(tok, pki, ident, srv.url)
        assert res["ok"] is False and res["error"]["kind"] == "client_ca_not_accepted" and res["pin_attempts"] == 0
    assert tok.counters() == (0, 0) and flags_of(tok) == []  # a wrong PIN would have shown here


def test_server_that_accepts_no_certificate_is_refused_before_the_pin(tok, pki, ident, tmp_path):
    """s_server -verify 1 (optional request) answers 200 without a certificate: the negative control fails."""
    with SServer(ident, tmp_path, "-verify", "1") as srv:
        res = login(tok, pki, ident, srv.url, pin=WRONG)
        assert res["ok"] is False and res["error"]["kind"] == "client_cert_optional", res["error"]
        assert "NO client certificate" in res["error"]["message"] and "HTTP 200" in res["error"]["message"]
        control = res["preflight"]["without_client_cert"]
        assert control == {"accepted": True, "status": 200, "location": None, "refused": None}
        assert res["pin_attempts"] == 0 and res["client_cert_requested"] is True
        res = login(tok, pki, ident, srv.url)  # the right PIN: on f8c7a58, "Test login OK"
        assert res["ok"] is False and res["error"]["kind"] == "client_cert_optional" and res["pin_attempts"] == 0
    assert tok.counters() == (0, 0) and flags_of(tok) == []


def test_python_server_with_optional_certificate_is_refused_too(tok, pki, ident, tmp_path):
    """A Python ssl server asking (CERT_OPTIONAL, our CAs) but answering the same page without a certificate."""
    page = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 9\r\nConnection: close\r\n\r\nwelcome !"
    with Scripted(ident, write_pems(tmp_path / "cas", pki.values()), page, without=page) as srv:
        res = login(tok, pki, ident, srv.url, pin=WRONG)
        assert res["error"]["kind"] == "client_cert_optional" and res["pin_attempts"] == 0
        assert srv.seen == [False]  # the pre-flight only: the key was never used
    assert tok.counters() == (0, 0)


# ------------------------------------------------------------------------------------------ servers that cannot pass
def test_unreachable_untrusted_misnamed_or_not_asking_cost_no_try(tok, pki, ident, tmp_path):
    """Each with a WRONG PIN: on f8c7a58 the PIN was presented first, and the token counted a try."""
    from lab.testpage import make_server_identity

    port = free_port()  # nothing listens there
    res = login(tok, pki, ident, "https://127.0.0.1:%d/" % port, pin=WRONG)
    assert res["error"]["kind"] == "connect" and res["pin_attempts"] == 0
    assert "connection refused" in res["error"]["message"] and "reset by peer" not in res["error"]["message"]

    with SServer(ident, tmp_path) as plain:  # no client certificate asked
        res = login(tok, pki, ident, plain.url, pin=WRONG)
        assert res["error"]["kind"] == "no_client_auth" and res["pin_attempts"] == 0
        assert "no PIN try spent" in res["error"]["message"]
        res = login(tok, pki, ident, plain.url, pin=WRONG, server_ca_pems=[])  # server CA not given
        assert res["error"]["kind"] == "server_untrusted" and res["pin_attempts"] == 0

    other = make_server_identity(tmp_path / "other-name", tls_ca=ident["tls_ca"], names=("not-this-host.test",))
    with SServer(other, tmp_path, "-Verify", "1") as misnamed:
        res = login(tok, pki, ident, misnamed.url, pin=WRONG)
        assert res["error"]["kind"] == "server_name_mismatch" and res["pin_attempts"] == 0
        assert "not valid for that host name" in res["error"]["message"]
    assert tok.counters() == (0, 0) and flags_of(tok) == []


@pytest.mark.parametrize("url", ["https://127.0.0.1:0/", "https://127.0.0.1:65536/", "https://127.0.0.1:-1/"])
def test_bad_ports_refused_before_the_key(tok, pki, ident, url):
    res = login(tok, pki, ident, url, pin=WRONG)
    assert res["error"]["kind"] == "url" and "bad port" in res["error"]["message"]
    assert res["pin_attempts"] == 0 and res["token"] is None  # refused before the token was even opened
    assert tok.counters() == (0, 0)


# ------------------------------------------------------------------------------------------ texts
def test_redirect_gives_its_location(tok, pki, ident, tmp_path):
    moved = (b"HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1/elsewhere/test.html\r\nContent-Length: 0\r\n"
             b"Connection: close\r\n\r\n")
    with Scripted(ident, write_pems(tmp_path / "cas", pki.values()), moved) as srv:
        res = login(tok, pki, ident, srv.url)
        assert res["error"]["kind"] == "page_status", res["error"]
        assert "HTTP 302" in res["error"]["message"]
        assert "https://127.0.0.1/elsewhere/test.html" in res["error"]["message"]
        assert res["tls"]["status"] == 302 and res["tls"]["location"] == "https://127.0.0.1/elsewhere/test.html"
        assert res["client_cert_sent"] and srv.seen == [False, True]
    assert tok.counters() == (0, 0)


def test_malformed_chunk_keeps_the_handshake_facts(tok, pki, ident, tmp_path):
    bad = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n")
    with Scripted(ident, write_pems(tmp_path / "cas", pki.values()), bad) as srv:
        res = login(tok, pki, ident, srv.url)
        assert res["error"]["kind"] == "http" and "malformed chunk size" in res["error"]["message"]
        assert res["client_cert_requested"] is True and res["logged_in"] is True
        assert res["client_cert_sent"] == res["login_certificate"]["sha256"]
        assert res["client_cert_accepted"] is False and srv.seen == [False, True]


# ------------------------------------------------------------------------------------------ through Ansible
def test_module_reports_the_preflight(tok, pki, ident, tmp_path):
    """The module (ansible-playbook): the fooling server is a failure with its own kind, fail_on_error=false keeps
    the report, and the PIN from the vault variable is not presented."""
    from lab.pki import make_ca

    other = write_pems(tmp_path / "other", [make_ca("Some Other CA", org="elsewhere")])[0]
    with SServer(ident, tmp_path, "-Verify", "1", "-CAfile", str(other)) as srv:
        args = {"module": str(tok.module), "pin": "{{ tt_pin }}", "ca_set": ca_set_fact(pki), "url": srv.url,
                "server_ca": [str(ident["ca"])], "builtin_roots": False, "fail_on_error": False}
        res, _ = run_module(tmp_path, "pkcs11_token_login", args, {"tt_pin": WRONG})
    assert res.get("failed") is not True and res["ok"] is False and res["changed"] is False
    assert res["error"]["kind"] == "client_ca_not_accepted" and res["pin_attempts"] == 0
    assert res["preflight"]["acceptable_cas"] and WRONG not in str(res)
    assert tok.counters() == (0, 0)
