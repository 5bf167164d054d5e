"""The lab's stand-in for the CA's test page ("TEST DE BON FONCTIONNEMENT").

A local HTTPS server on 127.0.0.1 that asks for a client certificate and answers like the CA's
page: the holder's name, "Votre certificat est valide / Your certificate is valid" and the expiry
date. What it refuses, and how:

- no client certificate: HTTP 403 page ("Aucun certificat / No client certificate"), status
  ``no-certificate`` in the log;
- a certificate that does not chain to the CA set, expired / not yet valid, or whose extended key
  usage excludes client authentication: the TLS handshake fails (OpenSSL alert: unknown CA,
  certificate expired, unsuitable certificate purpose), event ``tls-error`` in the log.

Every request and every refused handshake is one JSON line in the log (time, event, peer, path,
status, subject, issuer, serial, not_after, error): tests and the demo read it.

Library::

    with TestPage(cert, key, client_cas=[...], log_path=...) as page:
        page.url, page.entries()

CLI (the lab's daemon)::

    python -m lab.testpage --cert S.pem --key S.key --client-ca CA.pem ... --log L.jsonl \\
        --pidfile P.pid --state S.json [--port 0] [--daemon]
    python -m lab.testpage --pidfile P.pid --stop
"""
from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parent.parent
HANDSHAKE_TIMEOUT = 10.0


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attrs[0].value if attrs else name.rfc4514_string()


def describe_cert(der: bytes) -> dict:
    """What the page shows and logs about a client certificate."""
    cert = x509.load_der_x509_certificate(der)
    na = cert.not_valid_after_utc
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in eku
    except x509.ExtensionNotFound:
        client_auth = True  # no EKU = any usage
    return {
        "holder": _cn(cert.subject),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "issuer_cn": _cn(cert.issuer),
        "serial": format(cert.serial_number, "X"),
        "not_after": na.isoformat(),
        "days_left": (na - _dt.datetime.now(_dt.timezone.utc)).days,
        "sha256": cert.fingerprint(hashes.SHA256()).hex().upper(),
        "client_auth": client_auth,
    }


_PAGE = """<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8"><title>{title}</title></head>
<body>
<h1>TEST DE BON FONCTIONNEMENT</h1>
<p><small>tokentrust lab: stand-in for the CA's test page</small></p>
{body}
</body></html>
"""


def _ok_body(info: dict) -> str:
    d = _dt.datetime.fromisoformat(info["not_after"])
    return (
        f'<p id="holder">{html.escape(info["holder"])}</p>\n'
        '<p id="status" data-status="valid">Votre certificat est valide. / Your certificate is valid.</p>\n'
        f'<p id="expiry" data-not-after="{d.isoformat()}">Il expire le {d:%d/%m/%Y} '
        f'(it expires on {d:%Y-%m-%d}, in {info["days_left"]} days).</p>\n'
        f'<p id="issuer">{html.escape(info["issuer_cn"])}</p>\n'
        f'<p id="serial">{info["serial"]}</p>\n'
    )


class _Handler(BaseHTTPRequestHandler):
    server_version = "tokentrust-lab-testpage/1"
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass  # the JSON-lines log is the record

    def setup(self):
        super().setup()
        # HTTP/1.1 for the chunked and keep-alive answers (how real servers answer), HTTP/1.0 otherwise
        self.protocol_version = "HTTP/1.1" if self.server.transfer in ("chunked", "keepalive") else "HTTP/1.0"

    def _send(self, status: int, ctype: str, body: str) -> None:
        data = body.encode("utf-8")
        transfer = self.server.transfer
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if transfer == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Lab-Trailer")
        elif transfer != "close":
            self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if transfer == "keepalive":
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        if self.command == "HEAD":
            return
        if transfer == "chunked":
            # small chunks, so that the holder's name and the status line are split across chunk boundaries; a chunk
            # extension and a trailer as RFC 9112 allows
            for i in range(0, len(data), 7):
                part = data[i:i + 7]
                ext = ";lab=1" if i == 7 else ""
                self.wfile.write(b"%X%s\r\n%s\r\n" % (len(part), ext.encode(), part))
            self.wfile.write(b"0\r\nX-Lab-Trailer: done\r\n\r\n")
        else:
            self.wfile.write(data)
        self.wfile.flush()
        if transfer == "keepalive":
            self.close_connection = False  # ignore the client's "Connection: close": it must stop at Content-Length

    def do_HEAD(self):  # noqa: N802 - http.server's names
        self.do_GET()

    def do_GET(self):  # noqa: N802
        der = self.connection.getpeercert(binary_form=True)
        entry = {"event": "request", "peer": f"{self.client_address[0]}:{self.client_address[1]}",
                 "path": self.path, "tls_version": self.connection.version()}
        want_json = self.path.split("?")[0] in ("/status.json", "/api/status")
        if self.path.split("?")[0] not in ("/", "/index.html", "/status.json", "/api/status"):
            entry.update(http_status=404, status="not-found")
            self.server.record(entry)
            self._send(404, "text/plain; charset=utf-8", "not found\n")
            return
        if not der:
            entry.update(http_status=403, status="no-certificate")
            self.server.record(entry)
            if want_json:
                self._send(403, "application/json", json.dumps({"status": "no-certificate"}) + "\n")
            else:
                self._send(403, "text/html; charset=utf-8", _PAGE.format(title="403", body=(
                    '<p id="status" data-status="no-certificate">Aucun certificat client présenté. / '
                    "No client certificate was presented.</p>\n")))
            return
        info = describe_cert(der)
        entry.update({k: info[k] for k in ("holder", "subject", "issuer", "serial", "not_after", "sha256")})
        entry.update(http_status=200, status="valid")
        self.server.record(entry)
        if want_json:
            self._send(200, "application/json", json.dumps(dict(info, status="valid")) + "\n")
        else:
            self._send(200, "text/html; charset=utf-8", _PAGE.format(title="Certificat valide", body=_ok_body(info)))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, ctx: ssl.SSLContext, log_path: Optional[Path], transfer: str = "length"):
        self.ctx = ctx
        self.log_path = log_path
        self.transfer = transfer
        self.entries: list = []
        self._lock = threading.Lock()
        super().__init__(addr, _Handler)

    def record(self, entry: dict) -> None:
        entry = dict(entry, time=_now_iso())
        with self._lock:
            self.entries.append(entry)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry, sort_keys=True) + "\n")

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the request's own thread, so a slow client blocks nobody.
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.record({"event": "tls-error", "peer": f"{client_address[0]}:{client_address[1]}",
                         "error": getattr(e, "reason", None) or str(e), "detail": str(e)})
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


def make_context(cert: Path, key: Path, client_cas: Sequence[Path]) -> ssl.SSLContext:
    """Server context: our certificate, client certificates requested and checked against `client_cas`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if not client_cas:
        raise ValueError("the test page needs at least one client CA (the CA set)")
    for ca in client_cas:
        ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # no certificate: a 403 page; a bad one: handshake refused
    return ctx


class TestPage:
    """The test page in a thread of this process (tests), or the engine of the CLI daemon."""

    __test__ = False  # not a pytest class

    TRANSFERS = ("length", "chunked", "close", "keepalive")

    def __init__(self, cert, key, client_cas: Sequence, *, host: str = "127.0.0.1", port: int = 0,
                 log_path=None, transfer: str = "length"):
        """transfer: how the answer is framed: "length" (HTTP/1.0 + Content-Length, the default), "chunked"
        (HTTP/1.1 Transfer-Encoding: chunked, 7-byte chunks, an extension and a trailer), "close" (no length: the
        end of the connection ends the page), "keepalive" (HTTP/1.1 + Content-Length, the connection left open)."""
        if transfer not in self.TRANSFERS:
            raise ValueError("transfer must be one of %s" % ", ".join(self.TRANSFERS))
        self.ctx = make_context(Path(cert), Path(key), [Path(c) for c in client_cas])
        self.log_path = Path(log_path) if log_path else None
        self.server = _Server((host, port), self.ctx, self.log_path, transfer)
        self.host, self.port = self.server.server_address[:2]
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/"

    def start(self) -> str:
        self._thread = threading.Thread(target=self.server.serve_forever, name="lab-testpage", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._thread:
            self.server.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server.server_close()

    def entries(self) -> list:
        with self.server._lock:
            return list(self.server.entries)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def read_log(path) -> list:
    """The JSON-lines log as a list of dicts (missing file: empty list)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def make_server_identity(directory, tls_ca=None, names: Sequence[str] = ("127.0.0.1", "localhost")) -> dict:
    """A TLS CA (default: a new "Lab TLS CA") and a server certificate for the page, as PEM files."""
    from lab.pki import make_ca, make_leaf

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tls_ca = tls_ca or make_ca("Lab TLS CA", org="tokentrust lab (test page)")
    leaf = make_leaf(names[0], issuer=tls_ca, server_names=names, org="tokentrust lab (test page)")
    paths = {"ca": d / "tls-ca.pem", "cert": d / "testpage.pem", "key": d / "testpage.key"}
    paths["ca"].write_bytes(tls_ca.pem)
    paths["cert"].write_bytes(leaf.pem)
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(leaf.key_pem)
    return dict(paths, tls_ca=tls_ca, leaf=leaf)


# ---------------------------------------------------------------------------------------------
# daemon


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _is_ours(pid: int) -> bool:
    """True when `pid` is alive and is a test page (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"lab.testpage" in cmdline or any(part.endswith(b"lab/testpage.py") for part in cmdline[:3])


def running_pid(pidfile) -> Optional[int]:
    """The pid of the daemon recorded in `pidfile` when it is still running, else None."""
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid) else None


def stop_daemon(pidfile, timeout: float = 5.0) -> bool:
    """Stop the daemon of `pidfile`; True when one was running."""
    pid = running_pid(pidfile)
    if pid is None:
        Path(pidfile).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _is_ours(pid):
        time.sleep(0.05)
    if _is_ours(pid):
        os.kill(pid, signal.SIGKILL)
    Path(pidfile).unlink(missing_ok=True)
    return True


def start_daemon(args: Sequence[str], state: Path, pidfile: Path, out_log: Path, timeout: float = 15.0) -> dict:
    """Start `python -m lab.testpage ARGS` detached (own session), wait until it listens, return its state."""
    state.unlink(missing_ok=True)
    with open(out_log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "lab.testpage", *args, "--state", str(state), "--pidfile", str(pidfile)],
            cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.exists():
            data = json.loads(state.read_text())
            if data.get("pid") == proc.pid:
                return data
        if proc.poll() is not None:
            raise RuntimeError(f"the test page exited with {proc.returncode}: see {out_log}")
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError(f"the test page did not start within {timeout}s: see {out_log}")


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.testpage", description=__doc__.split("\n")[0])
    ap.add_argument("--cert", help="server certificate (PEM)")
    ap.add_argument("--key", help="server private key (PEM)")
    ap.add_argument("--client-ca", action="append", default=[], help="a CA of the set (PEM), repeatable")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    ap.add_argument("--log", help="JSON-lines request log")
    ap.add_argument("--transfer", default="length", choices=TestPage.TRANSFERS, help="how answers are framed")
    ap.add_argument("--pidfile")
    ap.add_argument("--state", help="JSON written once listening: pid, port, url")
    ap.add_argument("--daemon", action="store_true", help="detach, print the URL once listening")
    ap.add_argument("--stop", action="store_true", help="stop the daemon of --pidfile")
    args = ap.parse_args(argv)

    if args.stop:
        if not args.pidfile:
            ap.error("--stop needs --pidfile")
        print("stopped" if stop_daemon(args.pidfile) else "not running")
        return 0
    if not (args.cert and args.key and args.client_ca):
        ap.error("--cert, --key and at least one --client-ca are required")
    if args.pidfile and running_pid(args.pidfile):
        print(f"error: a test page is already running (pid {running_pid(args.pidfile)}, {args.pidfile})",
              file=sys.stderr)
        return 1
    if args.daemon:
        if not (args.pidfile and args.state):
            ap.error("--daemon needs --pidfile and --state")
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--daemon"]
        rest = _drop_opts(rest, ("--state", "--pidfile"))
        data = start_daemon(rest, Path(args.state), Path(args.pidfile), Path(args.state).with_suffix(".out"))
        print(data["url"])
        return 0

    page = TestPage(args.cert, args.key, args.client_ca, host=args.host, port=args.port, log_path=args.log,
                    transfer=args.transfer)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    page.start()
    if args.pidfile:
        _write_json_pid(Path(args.pidfile))
    if args.state:
        _write_json_atomic(Path(args.state), {"pid": os.getpid(), "host": page.host, "port": page.port,
                                              "url": page.url, "log": args.log, "started": _now_iso()})
    else:
        print(page.url, flush=True)
    stop.wait()
    page.stop()
    if args.pidfile:
        Path(args.pidfile).unlink(missing_ok=True)
    return 0


def _write_json_pid(path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _drop_opts(argv: Sequence[str], names: Sequence[str]) -> list:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
