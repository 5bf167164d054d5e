"""Real TLS servers on 127.0.0.1 for the test-login tests (issue 26): `openssl s_server` variants and small Python
ssl servers scripted for one behaviour each (trickling answers, TLS 1.3 post-handshake authentication only, a
client certificate asked for on the first connections only). Every server records what it saw per connection, so
that a test asserts what the server got, not what our report says."""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from tests.support.token_lab import PYTHON, ROOT

FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BODY = b"<html>TEST DE BON FONCTIONNEMENT: JEAN DUPONT</html>"
PAGE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(_BODY)) + _BODY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(func: str, kwargs: dict, env: dict | None = None) -> dict:
    """A test-login or PIN workflow function in a child Python process (NSS and the PKCS#11 module are per process):
    from module_utils/tokentrust_login.py or tokentrust_pin_action.py, or from tokentrust_nss/token.py where both
    lived before issue 26 (so that the same test runs on the code before and after)."""
    code = textwrap.dedent(f"""\
        import json, sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import conftest  # noqa: F401 - makes ansible.module_utils.tokentrust_* importable
        import importlib
        for name in ("tokentrust_login", "tokentrust_pin_action", "tokentrust_nss.token"):
            try:
                where = importlib.import_module("ansible.module_utils." + name)
            except ImportError:
                continue
            if hasattr(where, {func!r}):
                break
        kwargs = json.load(sys.stdin)
        print(json.dumps(getattr(where, {func!r})(**kwargs), default=str))
        """)
    proc = subprocess.run([PYTHON, "-c", code], input=json.dumps(kwargs), capture_output=True, text=True,
                          cwd=str(ROOT), timeout=180, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{func} crashed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class SServer:
    """`openssl s_server -www` on a free 127.0.0.1 port with the given options; its output kept."""

    def __init__(self, ident, tmp_path: Path, *opts):
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


class PyServer:
    """A Python ssl server in a thread. Per connection it records a dict: n (1, 2, ...), asked (a client certificate
    was requested), cert (the DER the client sent, or None), pha (asked after the handshake), error.

    mode: "optional" (CERT_OPTIONAL, the CA files trusted), "ask_first:N" (asks on the first N connections only, then
    no request at all), "pha" (TLS 1.3, asks only after the handshake, post-handshake authentication).
    answer(record) -> bytes, or a generator of bytes with a pause between them (trickle)."""

    def __init__(self, ident, cas, mode="optional", answer=None, trickle=None):
        self.ident, self.cas, self.mode = ident, [str(c) for c in cas], mode
        self.answer = answer or (lambda rec: PAGE if rec["cert"] else FORBIDDEN)
        self.trickle = trickle  # seconds between the bytes of the answer to a request made with a certificate
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.seen = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self):
        return "https://127.0.0.1:%d/" % self.port

    def _ctx(self, ask: bool, pha: bool = False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.ident["cert"]), str(self.ident["key"]))
        for ca in self.cas:
            ctx.load_verify_locations(cafile=ca)
        if pha:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.post_handshake_auth = True  # OpenSSL: SSL_VERIFY_POST_HANDSHAKE, no request in the handshake
        elif ask:
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            n = len(self.seen) + 1
            rec = {"n": n, "asked": False, "cert": None, "pha": False, "error": None}
            self.seen.append(rec)
            threading.Thread(target=self._one, args=(conn, rec), daemon=True).start()

    def _one(self, conn, rec):
        if self.mode.startswith("ask_first:"):
            ask = rec["n"] <= int(self.mode.split(":")[1])
            pha = False
        else:
            ask, pha = True, self.mode == "pha"
        rec["asked"] = ask and not pha
        try:
            conn.settimeout(30)
            tls = self._ctx(ask, pha).wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
            if pha:
                rec["pha"] = True
                try:
                    tls.verify_client_post_handshake()
                    rec["asked"] = True
                    tls.do_handshake()  # sends the CertificateRequest
                    tls.settimeout(3)
                    try:
                        tls.recv(1)  # reads the client's Certificate (an empty one fails here: certificate required)
                    except (TimeoutError, socket.timeout):
                        pass
                except ssl.SSLError as exc:  # the client did not offer post-handshake authentication, or sent none
                    rec["error"] = str(exc)
                    if rec["asked"]:
                        raise
            rec["cert"] = tls.getpeercert(binary_form=True)
            body = self.answer(rec)
            if self.trickle and rec["cert"]:
                for i in range(len(body)):
                    if self._stop.is_set():
                        break
                    tls.sendall(body[i:i + 1])
                    time.sleep(self.trickle)
            else:
                tls.sendall(body)
            tls.close()
        except (OSError, ssl.SSLError) as exc:
            rec["error"] = rec["error"] or str(exc)
            conn.close()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.sock.close()


def trickle_page(size=4000) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size + b"x" * size


def python_is(major, minor) -> bool:
    return sys.version_info >= (major, minor)
