"""Real HTTP/HTTPS servers on 127.0.0.1 serving CA certificates, and the downloader tested against them.

The servers (fixtures `ca_http`, `ca_https`) are shared with test_ca_module.py. Every answer the CA
sites might give is served for real: good files in DER/PEM/PKCS#7, a tampered byte, a truncated body,
wrong formats, an HTML page, redirects (and a loop), a slow answer, a 404 and an oversized body.
"""
from __future__ import annotations

import datetime as dt
import http.server
import os
import ssl
import threading
import time

import pytest
from ansible.module_utils.tokentrust_ca import CAError, FetchError, Options, build_ca_set, fetch_url
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from lab.pki import make_ca, make_leaf

UTC = dt.timezone.utc
SLOW_SECONDS = 3


def _now():
    return dt.datetime.now(UTC).replace(microsecond=0)


class PKI:
    """The generated CA chains the servers hand out."""

    def __init__(self):
        self.root = make_ca("Test Root CA")
        self.inter = make_ca("Test Issuing CA", issuer=self.root)
        self.other_root = make_ca("Other Root CA")
        self.expired = make_ca("Test Expired CA", issuer=self.root,
                               not_before=_now() - dt.timedelta(days=400), not_after=_now() - dt.timedelta(days=30))
        self.future = make_ca("Test Future CA", issuer=self.root,
                              not_before=_now() + dt.timedelta(days=30), days=365)
        self.non_ca = make_ca("Test Not A CA", issuer=self.root, ca=False)
        self.forged = make_ca("Test Forged CA", issuer=self.root, sign_with=self.other_root.key)
        self.orphan = make_ca("Test Orphan CA", issuer=self.other_root)
        # TLS server for the HTTPS case, from a separate CA
        self.tls_ca = make_ca("Test TLS CA")
        self.tls_leaf = make_leaf("127.0.0.1", issuer=self.tls_ca, server_names=["127.0.0.1", "localhost"])


def _tamper(der: bytes) -> bytes:
    """Flip one bit of the last byte (inside the signature): still a parseable certificate, other fingerprint."""
    return der[:-1] + bytes([der[-1] ^ 0x01])


def build_routes(pki: PKI) -> dict:
    p7_der = pkcs7.serialize_certificates([pki.root.cert, pki.inter.cert], serialization.Encoding.DER)
    p7_pem = pkcs7.serialize_certificates([pki.root.cert, pki.inter.cert], serialization.Encoding.PEM)
    html = b"<!DOCTYPE html>\n<html><head><title>Page introuvable</title></head><body>Oops</body></html>\n"
    routes = {
        "/root.der": (200, "application/pkix-cert", pki.root.der),
        "/root.pem": (200, "application/x-pem-file", pki.root.pem),
        "/inter.cer": (200, "application/pkix-cert", pki.inter.der),
        "/inter.pem": (200, "application/x-x509-ca-cert", pki.inter.pem),
        "/bundle.p7b": (200, "application/x-pkcs7-certificates", p7_der),
        "/bundle.p7c": (200, "application/pkcs7-mime", p7_pem),
        "/chain.pem": (200, "application/x-pem-file", pki.root.pem + pki.inter.pem),
        "/tampered.der": (200, "application/pkix-cert", _tamper(pki.root.der)),
        "/wrong.txt": (200, "text/plain", b"this is not a certificate\n"),
        "/key.pem": (200, "application/x-pem-file", pki.root.key_pem),
        "/page.html": (200, "text/html; charset=utf-8", html),
        "/html-as-cert.crt": (200, "application/pkix-cert", html),
        "/expired.der": (200, "application/pkix-cert", pki.expired.der),
        "/future.der": (200, "application/pkix-cert", pki.future.der),
        "/nonca.der": (200, "application/pkix-cert", pki.non_ca.der),
        "/forged.der": (200, "application/pkix-cert", pki.forged.der),
        "/orphan.der": (200, "application/pkix-cert", pki.orphan.der),
        "/big.bin": (200, "application/octet-stream", b"\x30" * 300_000),
    }
    return routes


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: dict = {}
    log: list = []

    def log_message(self, fmt, *args):  # keep pytest output clean, but remember every request
        pass

    def _send(self, code, ctype, body, headers=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).log.append(self.path)
        path = self.path
        if path.startswith("/redirect/"):  # /redirect/N/target -> N hops then target
            _, _, n, target = path.split("/", 3)
            n = int(n)
            loc = f"/redirect/{n - 1}/{target}" if n > 1 else "/" + target
            self.send_response(302)
            self.send_header("Location", loc)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in ("/loop-a", "/loop-b"):
            self.send_response(301)
            self.send_header("Location", "/loop-b" if path == "/loop-a" else "/loop-a")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/slow.der":
            time.sleep(SLOW_SECONDS)
            self._send(200, "application/pkix-cert", type(self).routes["/root.der"][2])
            return
        if path == "/truncated.der":
            body = type(self).routes["/root.der"][2]
            self.send_response(200)
            self.send_header("Content-Type", "application/pkix-cert")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/big-nolength.bin":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"\x30" * 300_000)
            self.close_connection = True
            return
        if path in type(self).routes:
            self._send(*type(self).routes[path])
            return
        self._send(404, "text/plain", b"not found\n")


class Server:
    def __init__(self, routes, tls_context=None):
        handler = type("Handler", (_Handler,), {"routes": routes, "log": []})
        self.handler = handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return self.base + path

    @property
    def log(self):
        return self.handler.log

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def ca_pki():
    return PKI()


@pytest.fixture(scope="session")
def ca_http(ca_pki):
    srv = Server(build_routes(ca_pki))
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def ca_https(ca_pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "server.pem", d / "server.key"
    cert.write_bytes(ca_pki.tls_leaf.pem)
    key.write_bytes(ca_pki.tls_leaf.key_pem)
    (d / "tls-ca.pem").write_bytes(ca_pki.tls_ca.pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    srv = Server(build_routes(ca_pki), tls_context=ctx)
    srv.ca_file = str(d / "tls-ca.pem")
    yield srv
    srv.close()


# ----------------------------------------------------------------------------- fetch_url, one answer each

def test_fetch_good_der_is_byte_exact(ca_http, ca_pki):
    body, ctype, final = fetch_url(ca_http.url("/root.der"), timeout=5)
    assert body == ca_pki.root.der
    assert ctype == "application/pkix-cert"
    assert final == ca_http.url("/root.der")


@pytest.mark.parametrize(
    "path, kind, message",
    [
        ("/nothing-here.crt", "http_status", "HTTP 404 Not Found"),
        ("/truncated.der", "truncated", "truncated body: received {half} of {full} bytes announced by Content-Length"),
        ("/page.html", "html", "the server returned an HTML page (Content-Type: text/html; charset=utf-8), not a "
                               "certificate: the URL has probably moved; find the current one on the CA's website"),
        ("/html-as-cert.crt", "html", "the server returned an HTML page (Content-Type: application/pkix-cert), not a "
                                      "certificate: the URL has probably moved; find the current one on the CA's "
                                      "website"),
        ("/big.bin", "too_large", "Content-Length 300000 exceeds the 65536-byte cap"),
        ("/big-nolength.bin", "too_large", "body larger than the 65536-byte cap"),
        ("/loop-a", "redirect_loop", "redirect loop: {base}/loop-a -> {base}/loop-b -> {base}/loop-a"),
        ("/redirect/6/root.der", "too_many_redirects", "more than 5 redirects (last to {base}/root.der)"),
    ],
)
def test_fetch_errors(ca_http, ca_pki, path, kind, message):
    full = len(ca_pki.root.der)
    with pytest.raises(FetchError) as err:
        fetch_url(ca_http.url(path), timeout=5, max_size=65536, max_redirects=5)
    assert err.value.kind == kind
    assert str(err.value) == message.format(base=ca_http.base, half=full // 2, full=full)


def test_fetch_follows_bounded_redirects(ca_http, ca_pki):
    body, _ctype, final = fetch_url(ca_http.url("/redirect/5/root.der"), timeout=5, max_redirects=5)
    assert body == ca_pki.root.der
    assert final == ca_http.url("/root.der")


def test_fetch_timeout_is_bounded(ca_http):
    t0 = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch_url(ca_http.url("/slow.der"), timeout=1)
    elapsed = time.monotonic() - t0
    assert err.value.kind == "timeout"
    assert str(err.value) == "timed out after 1s"
    assert elapsed < SLOW_SECONDS - 0.5


def test_fetch_connection_refused():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(FetchError) as err:
        fetch_url(f"http://127.0.0.1:{port}/root.der", timeout=2)
    assert err.value.kind == "connect"
    assert str(err.value).startswith("cannot download: [Errno 111] Connection refused")


def test_https_verified_against_custom_bundle(ca_https, ca_pki):
    body, _c, _f = fetch_url(ca_https.url("/root.der"), timeout=5, ca_path=ca_https.ca_file)
    assert body == ca_pki.root.der


def test_https_unknown_issuer_is_refused_by_default(ca_https):
    with pytest.raises(FetchError) as err:
        fetch_url(ca_https.url("/root.der"), timeout=5)
    assert err.value.kind == "tls"
    assert str(err.value) == (
        "HTTPS certificate verification failed (unable to get local issuer certificate): give the bundle that signs "
        "this server in ca_path (role: ca_certificates_ca_path), or use an http:// URL, which the pin protects"
    )


def test_https_without_verification_still_needs_the_pin(ca_https, ca_pki, tmp_path):
    res = build_ca_set(
        [{"name": "Root", "sha256": ca_pki.other_root.sha256, "url": [ca_https.url("/root.der")]}],
        str(tmp_path), Options(validate_certs=False, timeout=5),
    )
    assert res.error_kinds == {"Root": "pin_mismatch"}
    assert "HTTPS certificate verification is disabled (validate_certs: false)" in res.warnings[0]


def test_unsupported_scheme():
    with pytest.raises(FetchError) as err:
        fetch_url("ftp://127.0.0.1/root.der")
    assert (err.value.kind, str(err.value)) == ("url", "unsupported URL scheme 'ftp' (only http and https)")


# ----------------------------------------------------------------------------- the whole set, over HTTP

def _one(ca_http, tmp_path, ca, **opts):
    opts.setdefault("timeout", 5)
    return build_ca_set([ca], str(tmp_path), Options(**opts))


@pytest.mark.parametrize("path", ["/root.der", "/root.pem", "/bundle.p7b", "/bundle.p7c", "/chain.pem"])
def test_every_format_gives_the_same_pinned_certificate(ca_http, ca_pki, tmp_path, path):
    pin = ca_pki.root.sha256_colon.lower()
    res = _one(ca_http, tmp_path, {"name": "Root", "sha256": pin, "url": ca_http.url(path)})
    assert res.errors == []
    assert [c["sha256"] for c in res.cas] == [ca_pki.root.sha256]
    assert res.writes[str(tmp_path / "root.der")] == ca_pki.root.der
    assert res.writes[str(tmp_path / "root.pem")] == ca_pki.root.pem


def test_bundle_selects_the_intermediate_by_pin(ca_http, ca_pki, tmp_path):
    res = build_ca_set(
        [{"name": "Root", "sha256": ca_pki.root.sha256, "url": ca_http.url("/root.der")},
         {"name": "Issuing", "sha256": ca_pki.inter.sha256, "url": ca_http.url("/bundle.p7b")}],
        str(tmp_path), Options(timeout=5))
    assert res.errors == []
    assert [(c["name"], c["role"], c["sha256"]) for c in res.cas] == [
        ("Root", "root", ca_pki.root.sha256), ("Issuing", "intermediate", ca_pki.inter.sha256)]


def test_bundle_without_the_pinned_certificate_is_refused(ca_http, ca_pki, tmp_path):
    res = _one(ca_http, tmp_path, {"name": "X", "sha256": ca_pki.other_root.sha256, "url": ca_http.url("/bundle.p7b")})
    assert res.error_kinds == {"X": "pin_mismatch"}
    assert res.errors == [
        f"CA 'X': {ca_http.url('/bundle.p7b')}: the file holds 2 certificates and none has the pinned SHA-256 "
        f"fingerprint: expected {ca_pki.other_root.sha256_colon}, found "
        f"{ca_pki.root.cert.subject.rfc4514_string()} ({ca_pki.root.sha256_colon}); "
        f"{ca_pki.inter.cert.subject.rfc4514_string()} ({ca_pki.inter.sha256_colon}). Nothing was trusted."
    ]


def test_tampered_byte_is_a_pin_mismatch_and_stops_at_once(ca_http, ca_pki, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    tampered = x509.load_der_x509_certificate(
        _tamper(ca_pki.root.der)).fingerprint(hashes.SHA256()).hex().upper()
    ca_http.log.clear()
    res = _one(ca_http, tmp_path, {"name": "Root", "sha256": ca_pki.root.sha256,
                                   "url": [ca_http.url("/tampered.der"), ca_http.url("/root.der")]})
    assert res.error_kinds == {"Root": "pin_mismatch"}
    colon = ":".join(tampered[i:i + 2] for i in range(0, 64, 2))
    assert res.errors == [
        f"CA 'Root': {ca_http.url('/tampered.der')}: SHA-256 fingerprint mismatch: "
        f"expected {ca_pki.root.sha256_colon}, got {colon}. The certificate was tampered with or replaced, "
        "or the pin is wrong: nothing was trusted. "
        "Check the pin against the value the CA publishes through a second channel."
    ]
    assert ca_http.log == ["/tampered.der"]  # the second URL was not tried
    assert res.writes == {} and res.cas == []


def test_urls_are_tried_in_order_until_one_works(ca_http, ca_pki, tmp_path):
    ca_http.log.clear()
    urls = [ca_http.url("/gone.crt"), ca_http.url("/page.html"), ca_http.url("/root.der"), ca_http.url("/inter.cer")]
    res = _one(ca_http, tmp_path, {"name": "Root", "sha256": ca_pki.root.sha256, "url": urls})
    assert res.errors == []
    assert res.sources == {"Root": ca_http.url("/root.der")}
    assert ca_http.log == ["/gone.crt", "/page.html", "/root.der"]
    assert res.cas[0]["warnings"][0] == f"CA 'Root': {urls[0]} failed (HTTP 404 Not Found); used {urls[2]}"


def test_every_url_failing_lists_each_failure(ca_http, ca_pki, tmp_path):
    urls = [ca_http.url("/gone.crt"), ca_http.url("/wrong.txt"), ca_http.url("/key.pem")]
    res = _one(ca_http, tmp_path, {"name": "Root", "sha256": ca_pki.root.sha256, "url": urls})
    assert res.errors == [
        f"CA 'Root': every source failed: {urls[0]}: HTTP 404 Not Found; {urls[1]}: not a certificate in DER, PEM or "
        f"PKCS#7 format: unknown content, first bytes {b'this is not a cer'[:16].hex()}; {urls[2]}: not a certificate "
        "in DER, PEM or PKCS#7 format: PEM without a CERTIFICATE block (found: PRIVATE KEY)"
    ]


@pytest.mark.parametrize(
    "path, kind, detail",
    [
        ("/gone.crt", "http_status", "HTTP 404 Not Found"),
        ("/truncated.der", "truncated", "truncated body: received {half} of {full} bytes announced by Content-Length"),
        ("/slow.der", "timeout", "timed out after 1s"),
        ("/loop-a", "redirect_loop", "redirect loop: {base}/loop-a -> {base}/loop-b -> {base}/loop-a"),
        ("/big.bin", "too_large", "Content-Length 300000 exceeds the 262144-byte cap"),
        ("/wrong.txt", "format", "not a certificate in DER, PEM or PKCS#7 format: unknown content, first bytes "
                                 "74686973206973206e6f742061206365"),
    ],
)
def test_each_failure_names_the_ca_and_the_url(ca_http, ca_pki, tmp_path, path, kind, detail):
    full = len(ca_pki.root.der)
    res = _one(ca_http, tmp_path, {"name": "Lab Root", "sha256": ca_pki.root.sha256, "url": ca_http.url(path)},
               timeout=1)
    assert res.error_kinds == {"Lab Root": kind}
    assert res.errors == [f"CA 'Lab Root': {ca_http.url(path)}: "
                          + detail.format(base=ca_http.base, half=full // 2, full=full)]


@pytest.mark.parametrize(
    "who, kind, detail",
    [
        ("expired", "expired", "expired on {na} ({ago} days ago); set allow_expired: true for this CA only if "
                               "holders still need it"),
        ("future", "not_yet_valid", "not yet valid: valid from {nb} (check the controller's clock)"),
        ("non_ca", "not_ca", "basicConstraints is CA:FALSE (an end-entity certificate, not a CA); keyUsage lacks "
                             "keyCertSign (it may not sign certificates)"),
    ],
)
def test_invalid_cas_are_refused(ca_http, ca_pki, tmp_path, who, kind, detail):
    issued = getattr(ca_pki, who)
    path = {"expired": "/expired.der", "future": "/future.der", "non_ca": "/nonca.der"}[who]
    res = build_ca_set(
        [{"name": "Root", "sha256": ca_pki.root.sha256, "url": ca_http.url("/root.der")},
         {"name": "Sub", "sha256": issued.sha256, "url": ca_http.url(path)}],
        str(tmp_path), Options(timeout=5))
    nb, na = issued.cert.not_valid_before_utc, issued.cert.not_valid_after_utc
    ago = (dt.datetime.now(UTC) - na).days
    assert res.error_kinds == {"Sub": kind}
    assert res.errors == [
        f"CA 'Sub' ({issued.cert.subject.rfc4514_string()}, from {ca_http.url(path)}) refused: "
        + detail.format(na=na.strftime("%Y-%m-%dT%H:%M:%SZ"), nb=nb.strftime("%Y-%m-%dT%H:%M:%SZ"), ago=ago)
    ]
    assert [c["name"] for c in res.cas] == ["Root"]


def test_expired_allowed_is_a_plain_warning(ca_http, ca_pki, tmp_path):
    res = build_ca_set(
        [{"name": "Root", "sha256": ca_pki.root.sha256, "url": ca_http.url("/root.der")},
         {"name": "Old", "sha256": ca_pki.expired.sha256, "url": ca_http.url("/expired.der"), "allow_expired": True,
          "note": "still needed by old tokens"}],
        str(tmp_path), Options(timeout=5))
    assert res.errors == []
    old = res.cas[1]
    assert old["expired"] is True and old["days_left"] == -30
    na = ca_pki.expired.cert.not_valid_after_utc.date().isoformat()
    assert old["warnings"] == [
        f"CA 'Old' EXPIRED on {na} (30 days ago) and is kept only because allow_expired is set: certificates it "
        "issued can still be recognised, but no new certificate can validly chain to it; remove it when no holder "
        "needs it any more.",
        "CA 'Old': note: still needed by old tokens",
    ]
    assert res.warnings == old["warnings"]


@pytest.mark.parametrize("who, detail", [
    ("forged", "not issued by any CA of the set with its issuer's name: "
               "'Root': signature does not verify with its key"),
    ("orphan", "its issuer 'CN=Other Root CA,O=tokentrust lab,C=FR' is not among the validated CAs of the set: add "
               "the issuer's certificate (pinned) to the set, or fix the error reported for it"),
])
def test_chain_problems_are_refused(ca_http, ca_pki, tmp_path, who, detail):
    issued = getattr(ca_pki, who)
    res = build_ca_set(
        [{"name": "Root", "sha256": ca_pki.root.sha256, "url": ca_http.url("/root.der")},
         {"name": "Sub", "sha256": issued.sha256, "url": ca_http.url(f"/{who}.der")}],
        str(tmp_path), Options(timeout=5))
    assert res.error_kinds == {"Sub": "chain"}
    assert res.errors == [f"CA 'Sub' ({issued.cert.subject.rfc4514_string()}) refused: {detail}"]


def test_cache_is_used_offline_and_a_stale_cache_is_ignored(ca_http, ca_pki, tmp_path):
    ca = {"name": "Root", "sha256": ca_pki.root.sha256, "url": ca_http.url("/root.der")}
    first = build_ca_set([ca], str(tmp_path), Options(timeout=5))
    for path, data in first.writes.items():
        with open(path, "wb") as fh:
            fh.write(data)
    ca_http.log.clear()
    second = build_ca_set([ca], str(tmp_path), Options(timeout=5, offline=True))
    assert second.errors == [] and second.writes == {} and ca_http.log == []
    assert second.sources == {"Root": "cache:" + str(tmp_path / "root.pem")}
    # the admin changes the pin: the cached copy no longer counts, the network is used again
    (tmp_path / "root.pem").write_bytes(ca_pki.other_root.pem)
    third = build_ca_set([ca], str(tmp_path), Options(timeout=5))
    assert third.errors == [] and ca_http.log == ["/root.der"]
    assert sorted(third.writes) == [str(tmp_path / "root.pem")]
    offline = build_ca_set([ca], str(tmp_path), Options(offline=True))
    assert offline.errors == [
        f"CA 'Root': offline and no cached copy matching the pin in {tmp_path} and no path: run once online, "
        "or give a local copy in 'path'"
    ]


def test_refresh_ignores_the_cache(ca_http, ca_pki, tmp_path):
    (tmp_path / "root.pem").write_bytes(ca_pki.root.pem)
    ca_http.log.clear()
    res = build_ca_set([{"name": "Root", "sha256": ca_pki.root.sha256, "url": ca_http.url("/root.der")}],
                       str(tmp_path), Options(timeout=5, refresh=True))
    assert res.errors == [] and ca_http.log == ["/root.der"]
    assert list(res.writes) == [str(tmp_path / "root.der")]  # the PEM was already identical


def test_no_network_when_path_given(ca_http, ca_pki, tmp_path):
    src = tmp_path / "src.p7b"
    src.write_bytes(pkcs7.serialize_certificates([ca_pki.root.cert], serialization.Encoding.DER))
    ca_http.log.clear()
    res = build_ca_set([{"name": "Root", "sha256": ca_pki.root.sha256, "path": str(src),
                         "url": ca_http.url("/root.der")}], str(tmp_path / "cache"), Options(timeout=5))
    assert res.errors == [] and ca_http.log == [] and res.sources == {"Root": str(src)}


def test_caerror_is_raised_only_inside(ca_pki, tmp_path):
    # build_ca_set never raises on bad input: errors are collected per CA
    res = build_ca_set([{"name": "Root", "sha256": ca_pki.root.sha256, "path": str(tmp_path / "nope.der")}],
                       str(tmp_path))
    assert res.errors == [f"CA 'Root': {tmp_path / 'nope.der'}: cannot read: No such file or directory"]
    assert issubclass(FetchError, CAError)
    assert os.listdir(tmp_path) == []
