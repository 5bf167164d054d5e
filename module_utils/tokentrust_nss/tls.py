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

import hashlib
import re
from urllib.parse import urlsplit

from ansible.module_utils.tokentrust_nss._ffi import ffi, lib
from ansible.module_utils.tokentrust_nss.errors import KindError, last_error

# ssl.h options
SSL_SECURITY = 1
SSL_HANDSHAKE_AS_CLIENT = 5
SSL_NO_CACHE = 9
SSL_ENABLE_SESSION_TICKETS = 18
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


class TLSError(KindError):
    """The TLS test login failed; kinds: server_untrusted, client_cert_rejected, client_cert_required, connect,
    timeout, handshake, ..."""


def _der_of(cert):
    return bytes(ffi.buffer(cert.derCert.data, cert.derCert.len))


def _cert_summary(der):
    try:
        from cryptography import x509

        c = x509.load_der_x509_certificate(der)
        return {"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
                "not_after": c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "sha256": hashlib.sha256(der).hexdigest().upper()}
    except Exception:  # noqa: BLE001 - a summary is best effort
        return {"sha256": hashlib.sha256(der).hexdigest().upper()}


def parse_url(url):
    """(host, port, path) of an https URL; TLSError(kind='url') otherwise."""
    parts = urlsplit(url or "")
    if parts.scheme != "https" or not parts.hostname:
        raise TLSError("url", "the test URL %r is not an https:// URL with a host name" % url)
    try:
        port = parts.port or 443
    except ValueError:
        raise TLSError("url", "the test URL %r has a bad port" % url) from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


def analyse_page(body, holder=None):
    """What a "TEST DE BON FONCTIONNEMENT" page says: holder found, "valid" wording, expiry date if shown."""
    text = re.sub(r"<[^>]+>", " ", body or "")
    text = re.sub(r"\s+", " ", text)
    low = text.lower()
    out = {
        "holder_found": bool(holder) and holder.lower() in low,
        "says_valid": bool(re.search(r"certificat (est )?valide|certificate is valid|\bvalid\b", low)),
        "expiry": None,
    }
    m = re.search(r"expire[s]?\s+(?:le\s+|on\s+)?(\d{2}/\d{2}/\d{4}|\d{4}-\d{2}-\d{2})", low)
    if m:
        out["expiry"] = m.group(1)
    return out


def _parse_http(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    lines = head.decode("iso-8859-1", "replace").splitlines()
    if not lines:
        raise TLSError("http", "the server closed the connection without an HTTP answer")
    m = re.match(r"^HTTP/(\d(?:\.\d)?)\s+(\d{3})\s*(.*)$", lines[0])
    if not m:
        raise TLSError("http", "not an HTTP answer: %r" % lines[0][:80])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    charset = "utf-8"
    cm = re.search(r"charset=([\w-]+)", headers.get("content-type", ""), re.I)
    if cm:
        charset = cm.group(1)
    try:
        text = body.decode(charset, "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    return int(m.group(2)), m.group(3), headers, text


class _Hooks:
    """The two libssl3 callbacks of one connection, and what they saw."""

    def __init__(self, client_cert):
        self.client_cert = client_cert
        self.requested = False
        self.sent_der = None
        self.key_missing = False
        self.server_error = None
        self.server_der = None
        self.client_cb = ffi.callback("SSLGetClientAuthData", self._client_auth, error=-1)
        self.auth_cb = ffi.callback("SSLAuthCertificate", self._auth_cert, error=-1)

    def _client_auth(self, arg, fd, ca_names, p_cert, p_key):
        self.requested = True
        if self.client_cert is None:
            return -1  # no certificate to offer
        key = lib.nss3.PK11_FindKeyByAnyCert(self.client_cert, ffi.NULL)
        if key == ffi.NULL:
            self.key_missing = True
            return -1
        p_cert[0] = lib.nss3.CERT_DupCertificate(self.client_cert)
        p_key[0] = key
        self.sent_der = _der_of(self.client_cert)
        return 0

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


def https_get(url, client_cert=None, timeout=20, max_body=4096, holder=None, tls_max=None):
    """GET `url` over TLS with client authentication by `client_cert` (CERTCertificate* or None).

    Returns url, status, reason, content_type, body_start (at most `max_body` characters), tls_version,
    cipher_suite, client_cert_requested, client_cert_sent (SHA-256 or None), server_certificate, page
    (analyse_page). Raises TLSError.
    """
    host, port, path = parse_url(url)
    interval = lib.nspr4.PR_SecondsToInterval(int(timeout))
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
    hooks = _Hooks(client_cert)
    where = "%s:%d" % (host, port)
    try:
        for opt, val in ((SSL_SECURITY, 1), (SSL_HANDSHAKE_AS_CLIENT, 1), (SSL_NO_CACHE, 1),
                         (SSL_ENABLE_SESSION_TICKETS, 0)):
            if lib.ssl3.SSL_OptionSet(fd, opt, val) != 0:
                err = last_error("SSL_OptionSet")
                raise TLSError("handshake", "cannot set TLS option %d: %s" % (opt, err.name), err.name)
        if tls_max:
            vr = ffi.new("SSLVersionRange *", {"min": 0x0303, "max": VERSION_NUMBERS[tls_max]})
            lib.ssl3.SSL_VersionRangeSet(fd, vr)
        lib.ssl3.SSL_SetURL(fd, host.encode("idna"))
        lib.ssl3.SSL_GetClientAuthDataHook(fd, hooks.client_cb, ffi.NULL)
        lib.ssl3.SSL_AuthCertificateHook(fd, hooks.auth_cb, ffi.NULL)

        if lib.nspr4.PR_Connect(fd, addr, interval) != 0:
            err = last_error("connect")
            kind = "timeout" if err.name in TIMEOUTS else "connect"
            raise TLSError(kind, "cannot connect to %s: %s (%s)" % (where, err.name, err.text), err.name)
        if lib.ssl3.SSL_ForceHandshakeWithTimeout(fd, interval) != 0:
            raise _handshake_error(last_error("TLS handshake"), hooks, where)

        info = ffi.new("SSLChannelInfo *")
        lib.ssl3.SSL_GetChannelInfo(fd, info, ffi.sizeof("SSLChannelInfo"))
        request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tokentrust-token-login/1\r\nAccept: text/html,*/*\r\n"
                   "Connection: close\r\n\r\n" % (path, host if port == 443 else where)).encode()
        sent = lib.nspr4.PR_Send(fd, request, len(request), 0, interval)
        if sent != len(request):
            raise _handshake_error(last_error("send"), hooks, where)
        raw = bytearray()
        buf = ffi.new("char[]", 16384)
        limit = max_body + 16384  # headers + the start of the page
        while len(raw) < limit:
            n = lib.nspr4.PR_Recv(fd, buf, 16384, 0, interval)
            if n == 0:
                break
            if n < 0:
                err = last_error("receive")
                if raw and err.name in ("PR_CONNECT_RESET_ERROR", "SSL_ERROR_CLOSE_NOTIFY_ALERT"):
                    break
                raise _handshake_error(err, hooks, where)
            raw += ffi.buffer(buf, n)[:]
    finally:
        lib.nspr4.PR_Close(fd)
    status, reason, headers, text = _parse_http(bytes(raw))
    out = {
        "url": url,
        "status": status,
        "reason": reason,
        "content_type": headers.get("content-type"),
        "body_start": text[:max_body],
        "tls_version": TLS_VERSIONS.get(info.protocolVersion, hex(info.protocolVersion)),
        "cipher_suite": "0x%04X" % info.cipherSuite,
        "client_cert_requested": hooks.requested,
        "client_cert_sent": hashlib.sha256(hooks.sent_der).hexdigest().upper() if hooks.sent_der else None,
        "server_certificate": _cert_summary(hooks.server_der) if hooks.server_der else None,
        "page": analyse_page(text, holder),
    }
    return out


def _handshake_error(err, hooks, where):
    name = err.name
    server = _cert_summary(hooks.server_der) if hooks.server_der else None
    if hooks.server_error:
        return TLSError("server_untrusted", "the server %s is not trusted (%s): its certificate %s does not chain to "
                        "a trusted CA (give its CA in server_ca, or check the URL)"
                        % (where, hooks.server_error, (server or {}).get("subject", "?")), hooks.server_error,
                        server_certificate=server)
    if hooks.key_missing:
        return TLSError("client_cert_rejected", "the private key of the client certificate was not usable on the "
                        "token (not logged in?): no certificate could be sent", name, server_certificate=server)
    if name in CLIENT_CERT_REJECTED and hooks.sent_der is not None:
        return TLSError("client_cert_rejected", "%s refused the client certificate: %s (%s)"
                        % (where, CLIENT_CERT_REJECTED[name], name), name, server_certificate=server,
                        client_cert_sent=hashlib.sha256(hooks.sent_der).hexdigest().upper())
    if name in CLIENT_CERT_REQUIRED or (name in CLIENT_CERT_REJECTED and hooks.requested):
        return TLSError("client_cert_required", "%s requires a client certificate and none was sent (%s)"
                        % (where, name), name, server_certificate=server)
    if name in TIMEOUTS:
        return TLSError("timeout", "%s did not answer in time (%s)" % (where, name), name)
    return TLSError("handshake", "TLS with %s failed: %s (%s)" % (where, name, err.text), name,
                    server_certificate=server)
