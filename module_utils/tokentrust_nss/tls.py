# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""A TLS client-certificate login through NSS's libssl3 and NSPR sockets, in-process.

    result = https_get("https://services.certeurope.fr/", client_cert=cert_handle, timeout=20)
    result["status"], result["body_start"], result["tls_version"], result["client_cert_requested"]

Needs NSS open (a TokenSession): the server is verified by SSL_AuthCertificate against that database's trust
(the server CAs imported with trust C,, and, when loaded, NSS's built-in roots), host name included. The
client certificate is the one given (a CERTCertificate* from the token); its private key is found on the token
(PK11_FindKeyByAnyCert): the token must be logged in, since the password callback never presents a PIN again.
Errors are TLSError with a stable ``kind``: url, resolve, connect, timeout, server_untrusted,
client_cert_rejected, client_cert_required, handshake, http.
"""
from __future__ import annotations

import datetime
import hashlib
import html
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
from urllib.parse import urlsplit

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_nss._ffi import ffi, lib
from ansible.module_utils.tokentrust_nss.errors import kind_error_init, last_error

# ssl.h options
SSL_SECURITY = 1
SSL_HANDSHAKE_AS_CLIENT = 5
SSL_NO_CACHE = 9
SSL_ENABLE_SESSION_TICKETS = 18
SSL_ENABLE_POST_HANDSHAKE_AUTH = 39
# prnetdb.h
PR_AF_UNSPEC = 0
PR_AI_ADDRCONFIG = 0x20

TLS_VERSIONS = {0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
VERSION_NUMBERS = {"1.2": 0x0303, "1.3": 0x0304}

# alerts by which a server refuses the client certificate we sent
CLIENT_CERT_REJECTED = {
    "SSL_ERROR_BAD_CERT_ALERT": "the server found the client certificate bad",
    "SSL_ERROR_UNKNOWN_CA_ALERT": "the server does not know the CA of the client certificate",
    "SSL_ERROR_EXPIRED_CERT_ALERT": "the server says the client certificate has expired",
    "SSL_ERROR_REVOKED_CERT_ALERT": "the server says the client certificate is revoked",
    "SSL_ERROR_UNSUPPORTED_CERT_ALERT": "the server does not support the client certificate",
    "SSL_ERROR_CERTIFICATE_UNKNOWN_ALERT": "the server refused the client certificate (certificate unknown)",
    "SSL_ERROR_ACCESS_DENIED_ALERT": "the server denied access to this client certificate",
    "SSL_ERROR_DECRYPT_ERROR_ALERT": "the server could not verify the signature made with the token's key",
    "SSL_ERROR_HANDSHAKE_FAILURE_ALERT": "the server ended the handshake (handshake failure)",
}
CLIENT_CERT_REQUIRED = ("SSL_ERROR_RX_CERTIFICATE_REQUIRED_ALERT", "SSL_ERROR_NO_CERTIFICATE")
TIMEOUTS = ("PR_IO_TIMEOUT_ERROR",)


class TLSError(TokentrustError):
    """The TLS test login failed; kinds: server_untrusted, client_cert_rejected, client_cert_required, connect,
    timeout, handshake, ..."""

    __init__ = kind_error_init


class Deadline:
    """One deadline for a whole TLS step (every connection, handshake, request and answer of it): each NSPR call waits
    at most `timeout` seconds and never past the deadline. `extend()` gives back time spent outside TLS (waiting for
    the key's lock)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.clamped = False  # the last wait given out was cut to what was left of the deadline

    def hit(self):
        """A timeout that just came back is the deadline's: the wait was cut to the deadline (NSPR may wake a
        millisecond early, so the clock alone cannot tell), or the deadline has passed."""
        return self.clamped or self.left() <= 0

    def left(self):
        return self.at - time.monotonic()

    def extend(self, seconds):
        self.at += max(0.0, seconds)

    def error(self, where):
        return TLSError("timeout", "%s: the TLS step did not end within its deadline of %d s (connections, handshakes, "
                        "requests and answers together; option deadline): stopped there" % (where, self.seconds),
                        deadline=self.seconds)

    def interval(self, timeout, where):
        """The NSPR interval of the next call; TLSError('timeout') when the deadline has passed."""
        left = self.left()
        if left <= 0:
            raise self.error(where)
        self.clamped = left <= timeout
        return lib.nspr4.PR_MillisecondsToInterval(max(1, int(min(timeout, left) * 1000)))

    def seconds_for(self, timeout, where):
        left = self.left()
        if left <= 0:
            raise self.error(where)
        self.clamped = left <= timeout
        return min(timeout, left)


def _der_of(cert):
    return bytes(ffi.buffer(cert.derCert.data, cert.derCert.len))


def _cert_summary(der):
    try:
        from cryptography import x509

        c = x509.load_der_x509_certificate(der)
        after = getattr(c, "not_valid_after_utc", None) or c.not_valid_after.replace(tzinfo=datetime.timezone.utc)
        return {"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
                "not_after": after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "sha256": hashlib.sha256(der).hexdigest().upper()}
    except Exception:  # noqa: BLE001 - a summary is best effort
        return {"sha256": hashlib.sha256(der).hexdigest().upper()}


def parse_url(url):
    """(host, port, path) of an https URL; TLSError(kind='url') otherwise."""
    try:
        parts = urlsplit(url or "")  # an unclosed IPv6 literal raises here
    except (ValueError, TypeError) as exc:
        raise TLSError("url", "the test URL %r cannot be parsed (%s): give https://host[:port]/path, an IPv6 "
                       "address in brackets (https://[::1]:8443/)" % (url, exc)) from None
    if parts.scheme != "https" or not parts.hostname:
        raise TLSError("url", "the test URL %r is not an https:// URL with a host name" % url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = 443
    elif not 1 <= port <= 65535:
        raise TLSError("url", "the test URL %r has a bad port: a TCP port is a number from 1 to 65535" % url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


# "valid" wording of a test page, and the negations that turn it around ("n'est pas valide", "is not valid", ...)
_VALID = re.compile(r"\bvalide?\b")
_NOT_VALID = re.compile(
    r"n['\u2019 ]?\s*est\s+(?:pas|plus)\s+valide|\bnon[\s-]+valide|\binvalide?\b|\bnot\s+(?:\w+\s+)?valid\b"
    r"|\bisn['\u2019]t\s+valid\b|\bno\s+longer\s+valid\b|\bpas\s+valide\b|\bplus\s+valide\b")


def analyse_page(body, holder=None):
    """What a "TEST DE BON FONCTIONNEMENT" page says: holder found, "valid" wording (and not negated: "n'est pas
    valide", "not valid", "invalide" count as not valid), expiry date if shown."""
    text = re.sub(r"<[^>]+>", " ", body or "")
    text = html.unescape(text)
    text = re.sub(r"\s+", " ", text)
    low = text.lower()
    negated = bool(_NOT_VALID.search(low))
    out = {
        "holder_found": bool(holder) and holder.lower() in low,
        "says_valid": bool(_VALID.search(low)) and not negated,
        "says_not_valid": negated,
        "expiry": None,
    }
    m = re.search(r"expire[s]?\s+(?:le\s+|on\s+)?(\d{2}/\d{2}/\d{4}|\d{4}-\d{2}-\d{2})", low)
    if m:
        out["expiry"] = m.group(1)
    return out


MAX_HEAD = 64 * 1024  # status line + headers
MAX_PAGE = 1024 * 1024  # what is read of the page for the analysis (body_start returns less)


def _parse_head(head):
    """(status, reason, headers) of an HTTP/1.x answer head (bytes, without the blank line)."""
    lines = head.decode("iso-8859-1", "replace").split("\r\n")
    if len(lines) == 1:
        lines = lines[0].split("\n")
    lines = [ln.rstrip("\r") for ln in lines]
    if not lines or not lines[0]:
        raise TLSError("http", "the server closed the connection without an HTTP answer")
    m = re.match(r"^HTTP/(\d(?:\.\d)?)\s+(\d{3})(?:\s+(.*))?$", lines[0])
    if not m:
        raise TLSError("http", "not an HTTP answer: %r" % lines[0][:80])
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise TLSError("http", "malformed HTTP header line %r" % line[:80])
        k = k.strip().lower()
        headers[k] = (headers[k] + ", " + v.strip()) if k in headers else v.strip()
    return int(m.group(2)), m.group(3) or "", headers


def _decode_text(body, headers):
    enc = headers.get("content-encoding", "").lower()
    if enc in ("gzip", "x-gzip", "deflate"):
        import zlib

        try:
            body = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, MAX_PAGE)
        except zlib.error as exc:
            raise TLSError("http", "the page is %s-encoded but does not decompress: %s" % (enc, exc)) from None
    charset = "utf-8"
    cm = re.search(r"charset=\"?([\w-]+)", headers.get("content-type", ""), re.I)
    if cm:
        charset = cm.group(1)
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


class HTTPReader:
    """An HTTP/1.1 answer read from a byte source: ``recv()`` returns the next bytes, b"" at the end of the stream.

    The body is framed as RFC 9112 says: ``Transfer-Encoding: chunked`` (chunks decoded, extensions and trailers
    skipped), else ``Content-Length`` (exactly that many bytes, then stop: the server may keep the connection open),
    else until the server closes. 1xx answers are skipped; 204 and 304 have no body. At most ``limit`` body bytes
    are kept (the rest is not read)."""

    def __init__(self, recv, limit=MAX_PAGE):
        self._recv = recv
        self.limit = limit
        self.buf = bytearray()
        self.eof = False
        self.truncated = False
        self.framing = None

    def _fill(self):
        if self.eof:
            return False
        data = self._recv()
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self, what):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i]).rstrip(b"\r")
                del self.buf[:i + 1]
                return line
            if len(self.buf) > MAX_HEAD:
                raise TLSError("http", "%s line longer than %d bytes" % (what, MAX_HEAD))
            if not self._fill():
                raise TLSError("http", "the server closed the connection in the middle of the %s" % what)

    def _exact(self, n, what):
        while len(self.buf) < n:
            if not self._fill():
                raise TLSError("http", "the server closed the connection in the middle of the %s (%d of %d bytes)"
                               % (what, len(self.buf), n))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _head(self):
        while True:
            for sep in (b"\r\n\r\n", b"\n\n"):
                i = self.buf.find(sep)
                if i >= 0:
                    head = bytes(self.buf[:i])
                    del self.buf[:i + len(sep)]
                    return head
            if len(self.buf) > MAX_HEAD:
                raise TLSError("http", "HTTP answer head longer than %d bytes" % MAX_HEAD)
            if not self._fill():
                if not self.buf:
                    raise TLSError("http", "the server closed the connection without an HTTP answer")
                raise TLSError("http", "the server closed the connection in the middle of the HTTP headers")

    def read(self):
        """(status, reason, headers, body bytes)."""
        while True:
            status, reason, headers = _parse_head(self._head())
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue, 103 Early Hints: the real answer follows
            break
        te = [t.strip().lower() for t in headers.get("transfer-encoding", "").split(",") if t.strip()]
        if status in (204, 304) or 100 <= status < 200:
            self.framing = "none"
            return status, reason, headers, b""
        if te:
            if te[-1] != "chunked":
                self.framing = "close"
                return status, reason, headers, self._until_close()
            self.framing = "chunked"
            return status, reason, headers, self._chunked()
        if "content-length" in headers:
            values = {v.strip() for v in headers["content-length"].split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise TLSError("http", "bad Content-Length %r" % headers["content-length"])
            self.framing = "content-length"
            n = int(values.pop())
            if n > self.limit:
                self.truncated = True
                while len(self.buf) < self.limit and self._fill():
                    pass
                out = bytes(self.buf[:self.limit])
                return status, reason, headers, out
            return status, reason, headers, self._exact(n, "page")
        self.framing = "close"
        return status, reason, headers, self._until_close()

    def _until_close(self):
        while len(self.buf) < self.limit and self._fill():
            pass
        if len(self.buf) >= self.limit:
            self.truncated = True
        return bytes(self.buf[:self.limit])

    def _chunked(self):
        body = bytearray()
        while True:
            line = self._line("chunk size")
            size_txt = line.split(b";", 1)[0].strip()
            if not size_txt or not re.match(rb"^[0-9A-Fa-f]+$", size_txt):
                raise TLSError("http", "malformed chunk size %r in a chunked answer" % line[:40])
            size = int(size_txt, 16)
            if size == 0:
                while self._line("trailer"):  # trailers, up to the blank line
                    pass
                return bytes(body)
            if len(body) + size > self.limit:
                self.truncated = True
                keep = self.limit - len(body)
                body += self._exact(keep, "chunk") if keep else b""
                return bytes(body)
            body += self._exact(size, "chunk")
            if self._line("chunk end") != b"":
                raise TLSError("http", "a chunk of %d bytes is not followed by CRLF" % size)


def parse_http(raw, limit=MAX_PAGE):
    """(status, reason, headers, text) of a whole HTTP answer in `raw` (bytes): HTTPReader over a buffer."""
    chunks = [bytes(raw)]
    reader = HTTPReader(lambda: chunks.pop() if chunks else b"", limit)
    status, reason, headers, body = reader.read()
    return status, reason, headers, _decode_text(body, headers)


class _Hooks:
    """The two libssl3 callbacks of one connection, and what they saw.

    `on_request` (optional) is called when the server asks for a client certificate, before the certificate is
    offered: the test login presents the PIN there, so that a server that does not ask on this connection never gets
    it. An exception it raises ends the handshake (no certificate offered) and is raised again by the caller."""

    def __init__(self, client_cert, on_request=None):
        self.client_cert = client_cert
        self.on_request = on_request
        self.requested = False
        self.in_handshake = False  # a request came during the handshake (not only after it: TLS 1.3 post-handshake)
        self.handshake_done = False
        self.offered_der = None
        self.sent_der = None  # what libssl3 really sent (SSL_LocalCertificate), read by confirm_sent()
        self.key_missing = False
        self.callback_error = None
        self.server_error = None
        self.server_der = None
        self.ca_names = None  # DER names of the CertificateRequest's acceptable CAs (None: no request seen)
        self.client_cb = ffi.callback("SSLGetClientAuthData", self._client_auth, error=-1)
        self.auth_cb = ffi.callback("SSLAuthCertificate", self._auth_cert, error=-1)

    def _client_auth(self, arg, fd, ca_names, p_cert, p_key):
        self.requested = True
        self.in_handshake = self.in_handshake or not self.handshake_done
        if ca_names != ffi.NULL:
            self.ca_names = [bytes(ffi.buffer(ca_names.names[i].data, ca_names.names[i].len))
                             for i in range(max(int(ca_names.nnames), 0))]
        else:
            self.ca_names = []
        if self.client_cert is None:
            return -1  # no certificate to offer
        if self.on_request is not None:
            try:
                self.on_request()
            except Exception as exc:  # noqa: BLE001 - raised again by the caller, after the handshake
                self.callback_error = exc
                return -1
        key = lib.nss3.PK11_FindKeyByAnyCert(self.client_cert, ffi.NULL)
        if key == ffi.NULL:
            self.key_missing = True
            return -1
        p_cert[0] = lib.nss3.CERT_DupCertificate(self.client_cert)
        p_key[0] = key
        self.offered_der = _der_of(self.client_cert)
        return 0

    def confirm_sent(self, fd):
        """What was really sent: a certificate offered may still not go out (no signature scheme the server accepts
        for this key, a key that cannot sign)."""
        if self.offered_der is None:
            return
        local = lib.ssl3.SSL_LocalCertificate(fd)
        if local == ffi.NULL:
            self.sent_der = None
            return
        try:
            self.sent_der = _der_of(local)
        finally:
            lib.nss3.CERT_DestroyCertificate(local)

    def _auth_cert(self, arg, fd, check_sig, is_server):
        peer = lib.ssl3.SSL_PeerCertificate(fd)
        if peer != ffi.NULL:
            self.server_der = _der_of(peer)
            lib.nss3.CERT_DestroyCertificate(peer)
        db = ffi.cast("void *", lib.nss3.CERT_GetDefaultCertDB())
        rv = lib.ssl3.SSL_AuthCertificate(db, fd, check_sig, is_server)
        if rv != 0:
            code = lib.nspr4.PR_GetError()
            self.server_error = ffi.string(lib.nspr4.PR_ErrorToName(code)).decode()
            lib.nspr4.PR_SetError(code, 0)
        return rv


def _resolve(host, port):
    ai = lib.nspr4.PR_GetAddrInfoByName(host.encode("idna"), PR_AF_UNSPEC, PR_AI_ADDRCONFIG)
    if ai == ffi.NULL:
        err = last_error("resolve %s" % host)
        raise TLSError("resolve", "cannot resolve %s: %s" % (host, err.name), err.name)
    try:
        addr = ffi.new("PRNetAddr *")
        it = lib.nspr4.PR_EnumerateAddrInfo(ffi.NULL, ai, port, addr)
        if it == ffi.NULL:
            raise TLSError("resolve", "%s has no address" % host)
        return addr
    finally:
        lib.nspr4.PR_FreeAddrInfo(ai)


def _ok(rv, what, where):
    """Every SSL_* / PR_* setup call is checked: a failure here means a protection could silently not apply."""
    if rv != 0:
        err = last_error(what)
        raise TLSError("handshake", "%s failed for %s: %s (%s)" % (what, where, err.name, err.text), err.name)


# what a failed TCP connect means, in words (NSPR reports a refused connect, an RST in answer to the SYN, as
# PR_CONNECT_RESET_ERROR "reset by peer": at connect time that is a refusal, nothing was ever exchanged)
CONNECT_TEXTS = {
    "PR_CONNECT_REFUSED_ERROR": "connection refused: nothing listens on that port (or a firewall refuses it)",
    "PR_CONNECT_RESET_ERROR": "connection refused: nothing listens on that port (or a firewall refuses it)",
    "PR_NETWORK_UNREACHABLE_ERROR": "network unreachable from this host",
    "PR_HOST_UNREACHABLE_ERROR": "host unreachable from this host",
    "PR_IO_TIMEOUT_ERROR": "no answer in time (a firewall dropping the packets, or a wrong address)",
}


def dn_text(der):
    """A DER distinguished name as text (NSS's CERT_DerNameToAscii), its hex when NSS cannot read it."""
    buf = ffi.new("unsigned char[]", bytes(der))
    item = ffi.new("SECItem *", {"type": 0, "data": buf, "len": len(der)})
    p = lib.nss3.CERT_DerNameToAscii(item)
    if p == ffi.NULL:
        return "DER:" + bytes(der).hex()
    try:
        return ffi.string(p).decode("utf-8", "replace")
    finally:
        lib.nss3.PORT_Free(p)


def _open(url, hooks, timeout, tls_max, deadline=None, pha=False):
    """A TCP connection to `url` with the TLS handshake done, through `hooks`. Returns (fd, info, where, request);
    the caller closes fd. Raises TLSError (with the socket closed). `deadline` (Deadline) bounds the whole step;
    `pha` offers TLS 1.3 post-handshake authentication (the pre-flight only, to tell such a server apart)."""
    host, port, path = parse_url(url)
    deadline = deadline or Deadline(timeout)
    where = "%s:%d" % (host, port)
    addr = _resolve(host, port)
    family = ffi.cast("PRUint16 *", addr)[0]  # PRNetAddr starts with its family (PR_NetAddrFamily is a macro)
    tcp = lib.nspr4.PR_OpenTCPSocket(family)
    if tcp == ffi.NULL:
        err = last_error("open socket")
        raise TLSError("connect", "cannot open a socket: %s" % err.name, err.name)
    fd = lib.ssl3.SSL_ImportFD(ffi.NULL, tcp)
    if fd == ffi.NULL:
        err = last_error("SSL_ImportFD")
        lib.nspr4.PR_Close(tcp)
        raise TLSError("handshake", "cannot set up TLS on the socket: %s" % err.name, err.name)
    try:
        _setup(fd, hooks, host, where, tls_max, pha)
        if lib.nspr4.PR_Connect(fd, addr, deadline.interval(timeout, where)) != 0:
            err = last_error("connect")
            if err.name in TIMEOUTS and deadline.hit():
                raise deadline.error(where)
            kind = "timeout" if err.name in TIMEOUTS else "connect"
            text = CONNECT_TEXTS.get(err.name, err.text)
            raise TLSError(kind, "cannot connect to %s: %s (%s)" % (where, text, err.name), err.name)
        if lib.ssl3.SSL_ForceHandshakeWithTimeout(fd, deadline.interval(timeout, where)) != 0:
            err = last_error("TLS handshake")
            hooks.confirm_sent(fd)
            if err.name in TIMEOUTS and deadline.hit():
                raise deadline.error(where)
            raise _handshake_error(err, hooks, where)
        hooks.handshake_done = True
        hooks.confirm_sent(fd)
        info = ffi.new("SSLChannelInfo *")
        _ok(lib.ssl3.SSL_GetChannelInfo(fd, info, ffi.sizeof("SSLChannelInfo")), "SSL_GetChannelInfo", where)
    except BaseException:
        lib.nspr4.PR_Close(fd)
        raise
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tokentrust-token-login/1\r\nAccept: text/html,*/*\r\n"
               "Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
               % (path, host if port == 443 else where)).encode()
    return fd, info, where, request


def _setup(fd, hooks, host, where, tls_max, pha):
    """Every option of the connection, each checked."""
    for opt, val in ((SSL_SECURITY, 1), (SSL_HANDSHAKE_AS_CLIENT, 1), (SSL_NO_CACHE, 1),
                     (SSL_ENABLE_SESSION_TICKETS, 0)) + (((SSL_ENABLE_POST_HANDSHAKE_AUTH, 1),) if pha else ()):
        _ok(lib.ssl3.SSL_OptionSet(fd, opt, val), "SSL_OptionSet(%d)" % opt, where)
    if tls_max:
        vr = ffi.new("SSLVersionRange *", {"min": 0x0303, "max": VERSION_NUMBERS[tls_max]})
        _ok(lib.ssl3.SSL_VersionRangeSet(fd, vr), "SSL_VersionRangeSet", where)
    # the host name the server certificate must carry: without it NSS would not check the name at all
    _ok(lib.ssl3.SSL_SetURL(fd, host.encode("idna")), "SSL_SetURL (server host name check)", where)
    _ok(lib.ssl3.SSL_GetClientAuthDataHook(fd, hooks.client_cb, ffi.NULL), "SSL_GetClientAuthDataHook", where)
    _ok(lib.ssl3.SSL_AuthCertificateHook(fd, hooks.auth_cb, ffi.NULL), "SSL_AuthCertificateHook", where)


def _get(fd, hooks, where, request, timeout, limit, deadline=None):
    """Send `request` on the open connection and read the answer: (reader, status, reason, headers, body)."""
    deadline = deadline or Deadline(timeout)
    sent = lib.nspr4.PR_Send(fd, request, len(request), 0, deadline.interval(timeout, where))
    if sent != len(request):
        raise _io_error(last_error("send"), fd, hooks, where, deadline)
    buf = ffi.new("char[]", 16384)
    got_any = [False]

    def recv():
        n = lib.nspr4.PR_Recv(fd, buf, 16384, 0, deadline.interval(timeout, where))
        if n == 0:
            return b""
        if n < 0:
            err = last_error("receive")
            if got_any[0] and err.name in ("PR_CONNECT_RESET_ERROR", "SSL_ERROR_CLOSE_NOTIFY_ALERT",
                                           "PR_END_OF_FILE_ERROR"):
                return b""  # the server closed after its answer
            raise _io_error(err, fd, hooks, where, deadline)
        got_any[0] = True
        return ffi.buffer(buf, n)[:]

    reader = HTTPReader(recv, limit)
    status, reason, headers, body = reader.read()
    return reader, status, reason, headers, body


def _io_error(err, fd, hooks, where, deadline):
    hooks.confirm_sent(fd)
    if err.name in TIMEOUTS and deadline.hit():
        return deadline.error(where)
    return _handshake_error(err, hooks, where)


def _facts(hooks):
    return {"client_cert_requested": hooks.requested,
            "client_cert_sent": hashlib.sha256(hooks.sent_der).hexdigest().upper() if hooks.sent_der else None}


def https_get(url, client_cert=None, timeout=20, max_body=4096, holder=None, tls_max=None, deadline=None,
              on_request=None):
    """GET `url` over TLS with client authentication by `client_cert` (CERTCertificate* or None).

    Returns url, status, reason, location, content_type, body_start (at most `max_body` characters), http_framing,
    tls_version, cipher_suite, client_cert_requested, client_cert_sent (SHA-256 of what libssl3 really sent, or
    None), client_cert_accepted (sent, and the server answered over the authenticated connection),
    server_certificate, page (analyse_page). `deadline` (Deadline) bounds connect, handshake, request and answer
    together; `on_request` is called when the server asks for the certificate (see _Hooks).
    Raises TLSError, or what `on_request` raised; one raised after the handshake (a malformed answer) keeps what the
    handshake showed (client_cert_requested, client_cert_sent).
    """
    hooks = _Hooks(client_cert, on_request)
    try:
        fd, info, where, request = _open(url, hooks, timeout, tls_max, deadline)
    except TLSError:
        if hooks.callback_error is not None:
            raise hooks.callback_error from None
        raise
    try:
        reader, status, reason, headers, body = _get(fd, hooks, where, request, timeout, max(MAX_PAGE, max_body * 4),
                                                     deadline)
    except TLSError as exc:
        if hooks.callback_error is not None:
            raise hooks.callback_error from None
        for k, v in _facts(hooks).items():
            exc.details.setdefault(k, v)
        raise
    finally:
        lib.nspr4.PR_Close(fd)
    if hooks.callback_error is not None:  # the server answered without the certificate: what stopped it comes first
        raise hooks.callback_error
    text = _decode_text(body, headers)
    facts = _facts(hooks)
    return {
        "url": url,
        "status": status,
        "reason": reason,
        "location": headers.get("location"),
        "content_type": headers.get("content-type"),
        "body_start": text[:max_body],
        "http_framing": reader.framing,
        "tls_version": TLS_VERSIONS.get(info.protocolVersion, hex(info.protocolVersion)),
        "cipher_suite": "0x%04X" % info.cipherSuite,
        "client_cert_requested": facts["client_cert_requested"],
        "client_cert_sent": facts["client_cert_sent"],
        "client_cert_accepted": bool(facts["client_cert_sent"]),  # handshake done with it, the page answered
        "server_certificate": _cert_summary(hooks.server_der) if hooks.server_der else None,
        "page": analyse_page(text, holder),
    }


def preflight(url, timeout=20, tls_max=None, deadline=None):
    """The test login's pre-flight, without the key: connect, verify the server (trust and host name), see whether it
    asks for a client certificate (in the handshake, or only after it: TLS 1.3 post-handshake authentication is
    offered here to tell such a server apart) and which CAs it names, then send the same request with NO client
    certificate (the negative control). Raises TLSError for what stops any login (url, resolve, connect, timeout,
    server_untrusted, server_name_mismatch, handshake). Returns a dict:

    url, tls_version, server_certificate, client_cert_requested, post_handshake_only (asked only after the
    handshake), acceptable_cas (texts), acceptable_cas_der (DER names, hex), without_client_cert: {accepted (the
    server answered 2xx with no certificate), status, location, refused (the TLS error by which it refused, or
    None)}."""
    hooks = _Hooks(None)
    control = {"accepted": False, "status": None, "location": None, "refused": None}
    fd = None
    try:
        fd, info, where, request = _open(url, hooks, timeout, tls_max, deadline, pha=True)
    except TLSError as exc:
        if not (hooks.requested and exc.kind in ("client_cert_required", "handshake", "client_cert_rejected")):
            raise
        control["refused"] = exc.details.get("nss_error") or exc.kind  # refused in the handshake: good
        info = None
    if fd is not None:
        try:
            _reader, status, _reason, headers, _body = _get(fd, hooks, where, request, timeout, 64 * 1024, deadline)
            control.update(status=status, location=headers.get("location"), accepted=200 <= status < 300)
        except TLSError as exc:
            if exc.kind in ("client_cert_required", "client_cert_rejected", "handshake") and hooks.requested:
                control["refused"] = exc.details.get("nss_error") or exc.kind  # TLS 1.3: refused after it
            elif exc.kind != "http":
                raise
            else:
                control["refused"] = "http: %s" % exc
        finally:
            lib.nspr4.PR_Close(fd)
    names = hooks.ca_names or []
    return {
        "url": url,
        "tls_version": TLS_VERSIONS.get(info.protocolVersion, hex(info.protocolVersion)) if info is not None else None,
        "server_certificate": _cert_summary(hooks.server_der) if hooks.server_der else None,
        "client_cert_requested": hooks.requested,
        "post_handshake_only": hooks.requested and not hooks.in_handshake,
        "acceptable_cas": [dn_text(n) for n in names],
        "acceptable_cas_der": [n.hex() for n in names],
        "without_client_cert": control,
    }


def throwaway_get(url, cert_pem, key_pem, timeout=20, tls_max=None, deadline=None):
    """The second negative control: the same request with a throwaway client certificate (self-signed, made on the
    spot by the caller; no PIN, no token). Python's ssl module is enough here: the server was verified by the
    pre-flight, and nothing of value is sent. Returns {accepted (2xx), status, location, refused}."""
    host, port, path = parse_url(url)
    where = "%s:%d" % (host, port)
    deadline = deadline or Deadline(timeout)
    out = {"accepted": False, "status": None, "location": None, "refused": None}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's identity was checked by the pre-flight (NSS, the set's trust)
    if tls_max:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3 if tls_max == "1.3" else ssl.TLSVersion.TLSv1_2
    tmp = tempfile.mkdtemp(prefix="tokentrust-control-")
    try:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path_, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path_, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tokentrust-token-login/1\r\nAccept: text/html,*/*\r\n"
               "Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
               % (path, host if port == 443 else where)).encode()
    try:
        raw = socket.create_connection((host, port), timeout=deadline.seconds_for(timeout, where))
    except OSError as exc:
        out["refused"] = "connect: %s" % exc
        return out
    try:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(deadline.seconds_for(timeout, where))
            tls.sendall(request)

            def recv():
                tls.settimeout(deadline.seconds_for(timeout, where))
                return tls.recv(16384)

            status, _reason, headers, _body = HTTPReader(recv, 64 * 1024).read()
            out.update(status=status, location=headers.get("location"), accepted=200 <= status < 300)
    except (OSError, ssl.SSLError, TLSError) as exc:
        if isinstance(exc, TLSError) and exc.details.get("deadline"):
            raise
        out["refused"] = "%s: %s" % (type(exc).__name__, exc)
    finally:
        raw.close()
    return out


def _handshake_error(err, hooks, where):
    name = err.name
    server = _cert_summary(hooks.server_der) if hooks.server_der else None
    facts = _facts(hooks)
    if hooks.server_error == "SSL_ERROR_BAD_CERT_DOMAIN":
        return TLSError("server_name_mismatch", "the server %s is not who the URL names: its certificate %s is not "
                        "valid for that host name (check the URL)" % (where, (server or {}).get("subject", "?")),
                        hooks.server_error, server_certificate=server, **facts)
    if hooks.server_error:
        return TLSError("server_untrusted", "the server %s is not trusted (%s): its certificate %s does not chain to "
                        "a trusted CA (give its CA in server_ca, or check the URL)"
                        % (where, hooks.server_error, (server or {}).get("subject", "?")), hooks.server_error,
                        server_certificate=server, **facts)
    if hooks.key_missing:
        return TLSError("client_cert_rejected", "the private key of the client certificate was not usable on the "
                        "token (not logged in?): no certificate could be sent", name, server_certificate=server,
                        **facts)
    if name in CLIENT_CERT_REJECTED and hooks.sent_der is not None:
        return TLSError("client_cert_rejected", "%s refused the client certificate: %s (%s)"
                        % (where, CLIENT_CERT_REJECTED[name], name), name, server_certificate=server, **facts)
    if hooks.offered_der is not None and hooks.sent_der is None and (
            name in CLIENT_CERT_REQUIRED or name in CLIENT_CERT_REJECTED):
        return TLSError("client_cert_not_sent", "%s asked for a client certificate; the key's certificate was offered "
                        "but none was sent (%s): the server accepts no signature algorithm that this key can make"
                        % (where, name), name, server_certificate=server, **facts)
    if name in CLIENT_CERT_REQUIRED or (name in CLIENT_CERT_REJECTED and hooks.requested):
        return TLSError("client_cert_required", "%s requires a client certificate and none was sent (%s)"
                        % (where, name), name, server_certificate=server, **facts)
    if name in TIMEOUTS:
        return TLSError("timeout", "%s did not answer in time (%s)" % (where, name), name, **facts)
    return TLSError("handshake", "TLS with %s failed: %s (%s)" % (where, name, err.text), name,
                    server_certificate=server, **facts)
