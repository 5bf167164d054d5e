# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pinned CA set: fetch, parse, pin-check, validate, classify (logic of the `ca_bundle` module).

Pure logic plus a small urllib downloader; the module glue only passes parameters in and writes the
files this code plans. Every refusal is a `CAError` whose message names the CA (and the URL or path)
and says what to do; `kind` lets callers and tests tell the outcomes apart.

    result = build_ca_set(cas, dest, Options())
    result.errors, result.warnings, result.cas, result.writes
"""
from __future__ import annotations

import datetime as _dt
import http.client
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_facts import ca_file_name, ca_file_stem, is_nss_trust
from ansible.module_utils.tokentrust_privsep import read_bounded

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import pkcs7
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - reported by the module with missing_required_lib
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = _exc

UTC = _dt.timezone.utc

DEFAULT_ROOT_NSS_TRUST = "C,,"
DEFAULT_INTERMEDIATE_NSS_TRUST = ",,"
DEFAULT_TIMEOUT = 20
DEFAULT_MAX_SIZE = 256 * 1024
DEFAULT_MAX_REDIRECTS = 5
USER_AGENT = "tokentrust-ca-bundle/1"

PIN_HELP = (
    "Obtain the certificate, compute its fingerprint with "
    "'openssl x509 -in FILE -noout -fingerprint -sha256', compare it with the value the CA publishes "
    "through a second channel (its website over HTTPS, its CPS, a signed letter), then set it as "
    "'sha256' of this CA (ca_certificates_pins: {'NAME': 'AA:BB:...'} or in ca_certificates_list)"
)
_REDIRECT_CODES = (301, 302, 303, 307, 308)


class CAError(TokentrustError):
    """A refusal: CAError(kind, message); `kind` is a stable keyword, `str()` the full message for the admin."""


class FetchError(CAError):
    """A transport or content problem with one source: the next source is tried."""


# --------------------------------------------------------------------------- fingerprints

def normalize_pin(value) -> str:
    """'sha256:aa:bb...', 'AA BB ...', 'SHA256 Fingerprint=AA:..' -> 64 upper-case hex digits.

    Raises ValueError with a readable reason.
    """
    if value is None:
        raise ValueError("empty pin")
    text = str(value).strip()
    if not text:
        raise ValueError("empty pin")
    low = text.lower()
    for prefix in ("sha256 fingerprint=", "sha2-256:", "sha-256:", "sha256:", "sha256=", "sha-256=", "sha256 "):
        if low.startswith(prefix):
            text = text[len(prefix):]
            break
    hexpart = re.sub(r"[\s:.\-]", "", text)
    if not re.fullmatch(r"[0-9A-Fa-f]*", hexpart):
        raise ValueError(f"not hexadecimal: {value!r}")
    if len(hexpart) != 64:
        hint = " (that is a SHA-1 length: a SHA-256 pin is required)" if len(hexpart) == 40 else ""
        raise ValueError(f"a SHA-256 fingerprint has 64 hex digits, got {len(hexpart)}{hint}: {value!r}")
    return hexpart.upper()


def colon(hexstr: str) -> str:
    """'AABB..' -> 'AA:BB:..' (the form openssl and browsers print)."""
    return ":".join(hexstr[i:i + 2] for i in range(0, len(hexstr), 2))


def fingerprint(cert, algo: str = "sha256") -> str:
    h = hashes.SHA256() if algo == "sha256" else hashes.SHA1()  # noqa: S303 - SHA-1 is the Windows thumbprint
    return cert.fingerprint(h).hex().upper()


def validate_nss_trust(value: str) -> bool:
    """certutil's trust string syntax: the one pattern of module_utils/tokentrust_facts.py."""
    return is_nss_trust(value)


# --------------------------------------------------------------------------- parsing

def looks_like_html(data: bytes, content_type: Optional[str] = None) -> bool:
    if content_type and content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in head


def parse_certificates(data: bytes) -> Tuple[list, str]:
    """Bytes -> (certificates, format) for DER, PEM (one or many) and PKCS#7 in DER or PEM.

    Raises ValueError with a short reason when it is none of those.
    """
    if not data:
        raise ValueError("empty file")
    if looks_like_html(data):
        raise ValueError("an HTML page")
    stripped = data.lstrip()
    if stripped.startswith(b"-----BEGIN"):
        if b"-----BEGIN PKCS7-----" in data or b"-----BEGIN CMS-----" in data:
            try:
                certs = pkcs7.load_pem_pkcs7_certificates(data)
            except ValueError as exc:
                raise ValueError(f"PEM PKCS#7 block that does not parse: {exc}") from None
            if not certs:
                raise ValueError("PKCS#7 bundle without certificates")
            return list(certs), "pkcs7-pem"
        if b"-----BEGIN CERTIFICATE-----" not in data and b"-----BEGIN X509 CERTIFICATE-----" not in data:
            found = re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
            kinds = ", ".join(sorted(set(m.decode("ascii", "replace") for m in found)))
            raise ValueError(f"PEM without a CERTIFICATE block (found: {kinds})")
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ValueError(f"PEM CERTIFICATE block that does not parse: {exc}") from None
        return list(certs), "pem"
    if stripped[:1] == b"\x30":
        try:
            return [x509.load_der_x509_certificate(data)], "der"
        except ValueError:
            pass
        try:
            certs = pkcs7.load_der_pkcs7_certificates(data)
        except ValueError:
            certs = None
        if certs:
            return list(certs), "pkcs7-der"
        raise ValueError("DER data that is neither an X.509 certificate nor a PKCS#7 bundle")
    preview = data[:16].hex()
    raise ValueError(f"unknown content, first bytes {preview}")


def select_pinned(certs: list, pin: str, name: str, where: str):
    """The certificate whose SHA-256 is `pin`; a mismatch is fatal (CAError kind pin_mismatch)."""
    found = [(fingerprint(c), c) for c in certs]
    for fp, cert in found:
        if fp == pin:
            return cert
    if len(found) == 1:
        raise CAError(
            "pin_mismatch",
            f"CA '{name}': {where}: SHA-256 fingerprint mismatch: expected {colon(pin)}, got {colon(found[0][0])}. "
            "The certificate was tampered with or replaced, or the pin is wrong: nothing was trusted. "
            "Check the pin against the value the CA publishes through a second channel.",
        )
    listing = "; ".join(f"{c.subject.rfc4514_string()} ({colon(fp)})" for fp, c in found)
    raise CAError(
        "pin_mismatch",
        f"CA '{name}': {where}: the file holds {len(found)} certificates and none has the pinned SHA-256 "
        f"fingerprint: expected {colon(pin)}, found {listing}. Nothing was trusted.",
    )


# --------------------------------------------------------------------------- checks

def cert_dates(cert) -> Tuple[_dt.datetime, _dt.datetime]:
    try:
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    except AttributeError:  # cryptography < 42
        return cert.not_valid_before.replace(tzinfo=UTC), cert.not_valid_after.replace(tzinfo=UTC)


def iso(d: _dt.datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def days_left(cert, now: _dt.datetime) -> int:
    """Whole days until not_after, truncated toward zero (-3 = expired 3 full days ago)."""
    return int((cert_dates(cert)[1] - now).total_seconds() / 86400)


def check_is_ca(cert) -> Tuple[List[str], List[str]]:
    """(problems, warnings) for basicConstraints CA:TRUE and keyUsage keyCertSign."""
    problems, warns = [], []
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            problems.append("basicConstraints is CA:FALSE (an end-entity certificate, not a CA)")
    except x509.ExtensionNotFound:
        problems.append("no basicConstraints extension, so it is not a CA certificate")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            problems.append("keyUsage lacks keyCertSign (it may not sign certificates)")
    except x509.ExtensionNotFound:
        warns.append("no keyUsage extension (RFC 5280 requires keyCertSign on CA certificates)")
    return problems, warns


def check_validity(cert, now: _dt.datetime, allow_expired: bool, name: str) -> Tuple[List[str], List[str]]:
    nb, na = cert_dates(cert)
    problems, warns = [], []
    if now > na:
        ago = (now - na).days
        if allow_expired:
            warns.append(
                f"CA '{name}' EXPIRED on {na.date().isoformat()} ({ago} days ago) and is kept only because "
                "allow_expired is set: certificates it issued can still be recognised, but no new certificate can "
                "validly chain to it; remove it when no holder needs it any more."
            )
        else:
            problems.append(
                f"expired on {iso(na)} ({ago} days ago); set allow_expired: true for this CA only if holders "
                "still need it"
            )
    elif now < nb:
        if allow_expired:
            warns.append(f"CA '{name}' is NOT YET VALID (valid from {iso(nb)}), kept because allow_expired is set")
        else:
            problems.append(f"not yet valid: valid from {iso(nb)} (check the controller's clock)")
    return problems, warns


def _hash_name(cert) -> str:
    try:
        algo = cert.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - UnsupportedAlgorithm and friends: just "unknown"
        return "unknown"
    return algo.name if algo is not None else "none"


def _ski(cert) -> Optional[bytes]:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _aki(cert) -> Optional[bytes]:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def verify_signature(cert, issuer_public_key) -> None:
    """Check `cert`'s signature with a public key; raises InvalidSignature or ValueError (unsupported key).

    Done by hand rather than with `verify_directly_issued_by`, which refuses SHA-1 signatures: many
    long-lived CA certificates (CertEurope's among them) are sha1WithRSAEncryption.
    """
    sig, tbs = cert.signature, cert.tbs_certificate_bytes
    algo = cert.signature_hash_algorithm
    try:
        params = cert.signature_algorithm_parameters
    except AttributeError:  # cryptography < 41 (Debian 12's python3-cryptography is 38): PKCS#1 v1.5 / ECDSA
        from cryptography.hazmat.primitives.asymmetric import padding

        params = ec.ECDSA(algo) if isinstance(issuer_public_key, ec.EllipticCurvePublicKey) else padding.PKCS1v15()
    if isinstance(issuer_public_key, rsa.RSAPublicKey):
        issuer_public_key.verify(sig, tbs, params, algo)
    elif isinstance(issuer_public_key, ec.EllipticCurvePublicKey):
        issuer_public_key.verify(sig, tbs, params)
    elif isinstance(issuer_public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        issuer_public_key.verify(sig, tbs)
    elif isinstance(issuer_public_key, dsa.DSAPublicKey):
        issuer_public_key.verify(sig, tbs, algo)
    else:
        raise ValueError(f"unsupported issuer key type {type(issuer_public_key).__name__}")


def _signed_by(cert, issuer) -> Optional[str]:
    """None when `issuer` (name + key) issued `cert`, else the reason."""
    if cert.issuer != issuer.subject:
        return "issuer name differs from its subject"
    try:
        verify_signature(cert, issuer.public_key())
    except InvalidSignature:
        return "signature does not verify with its key"
    except (ValueError, TypeError) as exc:
        return f"signature cannot be checked: {exc}"
    return None


def classify_and_chain(entries: List[Tuple[str, object]]) -> Dict[str, dict]:
    """For each (name, cert): {'role': root|intermediate, 'issuer_ca': name|None, 'problem': str|None}.

    A root is self-issued with a signature that verifies with its own key. An intermediate must be
    issued by a CA of the set: issuer name = subject, AKI = SKI when both are present, signature verifies.
    """
    out = {}
    for name, cert in entries:
        info = {"role": "intermediate", "issuer_ca": None, "problem": None}
        out[name] = info
        if cert.issuer == cert.subject and _signed_by(cert, cert) is None:
            info["role"] = "root"
            info["issuer_ca"] = name
            continue
        candidates = [(n, c) for n, c in entries if n != name and c.subject == cert.issuer]
        if not candidates:
            if cert.issuer == cert.subject:
                info["problem"] = "self-issued but its signature does not verify with its own key (corrupt or forged)"
            else:
                info["problem"] = (
                    f"its issuer '{cert.issuer.rfc4514_string()}' is not among the validated CAs of the set: "
                    "add the issuer's certificate (pinned) to the set, or fix the error reported for it"
                )
            continue
        reasons = []
        aki = _aki(cert)
        for cand_name, cand in candidates:
            ski = _ski(cand)
            if aki is not None and ski is not None and aki != ski:
                reasons.append(
                    f"authorityKeyIdentifier {colon(aki.hex().upper())} does not match "
                    f"subjectKeyIdentifier {colon(ski.hex().upper())} of '{cand_name}'"
                )
                continue
            why = _signed_by(cert, cand)
            if why is None:
                info["issuer_ca"] = cand_name
                break
            reasons.append(f"'{cand_name}': {why}")
        else:
            info["problem"] = "not issued by any CA of the set with its issuer's name: " + "; ".join(reasons)
    return out


# --------------------------------------------------------------------------- download

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand redirects back to us so that we count them and detect loops ourselves."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _ssl_context(validate_certs: bool, ca_path: Optional[str]):
    if not validate_certs:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()


def fetch_url(
    url: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_size: int = DEFAULT_MAX_SIZE,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    validate_certs: bool = True,
    ca_path: Optional[str] = None,
) -> Tuple[bytes, str, str]:
    """GET `url` -> (body, content_type, final_url). Raises FetchError (message without the CA prefix)."""
    ctx = _ssl_context(validate_certs, ca_path)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), _NoRedirect())
    resp, current = _open_following_redirects(opener, url, timeout, max_redirects)
    body, ctype, announced = _read_body(resp, url, timeout, max_size)
    _check_body(body, ctype, announced, max_size)
    return body, ctype, current


def _open_following_redirects(opener, url, timeout, max_redirects):
    """Open `url`, following redirects by hand (bounded, no loop) -> (response, final_url)."""
    chain = [url]
    current = url
    while True:
        scheme = urllib.parse.urlsplit(current).scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError("url", f"unsupported URL scheme '{scheme}' (only http and https)")
        req = urllib.request.Request(current, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        try:
            resp = opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in _REDIRECT_CODES:
                location = exc.headers.get("Location")
                exc.close()
                if not location:
                    raise FetchError("http_status", f"HTTP {exc.code} redirect without a Location header") from None
                nxt = urllib.parse.urljoin(current, location)
                if nxt in chain:
                    raise FetchError("redirect_loop", "redirect loop: {}".format(" -> ".join(chain + [nxt]))) from None
                if len(chain) > max_redirects:
                    raise FetchError(
                        "too_many_redirects", f"more than {max_redirects} redirects (last to {nxt})"
                    ) from None
                chain.append(nxt)
                current = nxt
                continue
            reason = exc.reason if isinstance(exc.reason, str) else str(exc.reason)
            exc.close()
            raise FetchError("http_status", f"HTTP {exc.code} {reason}") from None
        except urllib.error.URLError as exc:
            raise _transport_error(exc.reason, timeout, url) from None
        except (socket.timeout, TimeoutError) as exc:
            raise _transport_error(exc, timeout, url) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _transport_error(exc, timeout, url) from None
        return resp, current


def _read_body(resp, url, timeout, max_size):
    """Read at most max_size + 1 bytes of `resp` (closed after) -> (body, content_type, announced length or None)."""
    with resp:
        ctype = resp.headers.get("Content-Type", "") or ""
        clen = resp.headers.get("Content-Length")
        announced = None
        if clen is not None:
            try:
                announced = int(clen)
            except ValueError:
                announced = None
        if announced is not None and announced > max_size:
            raise FetchError("too_large", f"Content-Length {announced} exceeds the {max_size}-byte cap")
        try:
            body = resp.read(max_size + 1)
        except http.client.IncompleteRead as exc:
            got = len(exc.partial)
            raise FetchError(
                "truncated",
                f"truncated body: received {got} of {announced or 'the'} bytes announced by Content-Length",
            ) from None
        except (socket.timeout, TimeoutError) as exc:
            raise _transport_error(exc, timeout, url) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _transport_error(exc, timeout, url) from None
    return body, ctype, announced


def _check_body(body, ctype, announced, max_size):
    """Refuse a body over the cap, shorter than announced, or an HTML page."""
    if len(body) > max_size:
        raise FetchError("too_large", f"body larger than the {max_size}-byte cap")
    if announced is not None and len(body) != announced:
        raise FetchError(
            "truncated", f"truncated body: received {len(body)} of {announced} bytes announced by Content-Length"
        )
    if looks_like_html(body, ctype):
        raise FetchError(
            "html",
            "the server returned an HTML page (Content-Type: %s), not a certificate: the URL has probably moved; "
            "find the current one on the CA's website" % (ctype or "none"),
        )


def _transport_error(reason, timeout, url) -> FetchError:
    if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
        return FetchError("timeout", f"timed out after {timeout:g}s")
    if isinstance(reason, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(reason):
        detail = getattr(reason, "verify_message", None) or str(reason)
        return FetchError(
            "tls",
            f"HTTPS certificate verification failed ({detail}): give the bundle that signs this server in ca_path "
            "(role: ca_certificates_ca_path), or use an http:// URL, which the pin protects",
        )
    if isinstance(reason, ssl.SSLError):
        return FetchError("tls", f"TLS error: {reason}")
    return FetchError("connect", f"cannot download: {reason}")


# --------------------------------------------------------------------------- the set

@dataclass
class Options:
    root_nss_trust: str = DEFAULT_ROOT_NSS_TRUST
    intermediate_nss_trust: str = DEFAULT_INTERMEDIATE_NSS_TRUST
    timeout: float = DEFAULT_TIMEOUT
    max_size: int = DEFAULT_MAX_SIZE
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    validate_certs: bool = True
    ca_path: Optional[str] = None
    offline: bool = False
    refresh: bool = False
    now: Optional[_dt.datetime] = None


@dataclass
class Result:
    cas: List[dict] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    error_kinds: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    sources: Dict[str, str] = field(default_factory=dict)
    writes: Dict[str, bytes] = field(default_factory=dict)  # path -> bytes to write (differs from disk)

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def _as_list(value) -> List[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)]


def _read_file(path: str) -> bytes:
    """A local certificate file: a regular file of at most 1 MiB (not /dev/zero, a FIFO, a directory)."""
    try:
        return read_bounded(path, "CA file")
    except ValueError as exc:
        raise OSError(str(exc)) from None


def _acquire(ca: dict, name: str, pin: str, dest: str, opts: Options, fetch: Callable) -> Tuple[object, str, list]:
    """Find the pinned certificate: cache, then path, then each URL. -> (cert, source, warnings)."""
    pem_path = os.path.join(dest, ca_file_name(name))
    warns = []
    if not opts.refresh and os.path.isfile(pem_path):
        try:
            certs, _fmt = parse_certificates(_read_file(pem_path))
            for c in certs:
                if fingerprint(c) == pin:
                    return c, "cache:" + pem_path, warns
        except (OSError, ValueError):
            pass  # unreadable or stale cache: fetch again, it will be rewritten
    failures = []
    sources = []
    if ca.get("path"):
        sources.append(("path", str(ca["path"])))
    urls = _as_list(ca.get("url"))
    if not opts.offline:
        sources += [("url", u) for u in urls]
    if not sources:
        if opts.offline and urls:
            raise CAError(
                "offline",
                f"CA '{name}': offline and no cached copy matching the pin in {dest} and no path: run once online, "
                "or give a local copy in 'path'",
            )
        raise CAError("no_source", f"CA '{name}': no 'url' or 'path' to get the certificate from")
    for kind, where in sources:
        try:
            if kind == "path":
                try:
                    data = _read_file(os.path.expanduser(where))
                except OSError as exc:
                    raise FetchError("read", "cannot read: %s" % (exc.strerror or exc)) from None
            else:
                data = fetch(where)
            try:
                certs, _fmt = parse_certificates(data)
            except ValueError as exc:
                raise FetchError("format", f"not a certificate in DER, PEM or PKCS#7 format: {exc}") from None
        except FetchError as exc:
            failures.append((where, exc))
            continue
        cert = select_pinned(certs, pin, name, where)  # mismatch: fatal, no further source
        for f_where, f_exc in failures:
            warns.append(f"CA '{name}': {f_where} failed ({f_exc}); used {where}")
        return cert, where, warns
    if len(failures) == 1:
        where, exc = failures[0]
        raise CAError(exc.kind, f"CA '{name}': {where}: {exc}")
    detail = "; ".join(f"{w}: {e}" for w, e in failures)
    raise CAError(failures[-1][1].kind, f"CA '{name}': every source failed: {detail}")


def describe(cert, name: str, role: str, nss_trust: str, pem_path: str, der_path: str,
             now: _dt.datetime, warns: List[str]) -> dict:
    nb, na = cert_dates(cert)
    serial = f"{cert.serial_number:X}"
    if len(serial) % 2:
        serial = "0" + serial
    return {
        "name": name,
        "nickname": name,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial,
        "not_before": iso(nb),
        "not_after": iso(na),
        "days_left": days_left(cert, now),
        "expired": now > na,
        "sha1": fingerprint(cert, "sha1"),
        "sha256": fingerprint(cert),
        "role": role,
        "nss_trust": nss_trust,
        "windows_store": "Root" if role == "root" else "CA",
        "pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "pem_path": pem_path,
        "der_path": der_path,
        "warnings": list(warns),
    }


def build_ca_set(
    cas: List[dict], dest: str, opts: Optional[Options] = None, fetch: Optional[Callable] = None
) -> Result:
    """Resolve, check and describe every CA. Nothing is written: `Result.writes` is the plan."""
    opts = opts or Options()
    now = opts.now or _dt.datetime.now(UTC)
    if fetch is None:
        def fetch(url):
            return fetch_url(
                url, timeout=opts.timeout, max_size=opts.max_size, max_redirects=opts.max_redirects,
                validate_certs=opts.validate_certs, ca_path=opts.ca_path,
            )[0]
    res = Result()
    if not cas:
        _fail(res, "", "empty", "the CA set is empty: give at least one CA (name, sha256, url or path)")
        return res
    _check_options(res, opts)
    seen = {}
    resolved: List[Tuple[str, object]] = []
    per_ca = {}
    for index, ca in enumerate(cas):
        got = _resolve_ca(res, index, ca, seen, dest, opts, fetch, now)
        if got is None:
            continue
        name, cert, warns = got
        resolved.append((name, cert))
        per_ca[name] = (ca, cert, warns)
    chain = classify_and_chain(resolved)
    for name, cert in resolved:
        ca, _cert, warns = per_ca[name]
        _plan_ca(res, name, cert, chain[name], ca, warns, dest, opts, now)
    return res


def _fail(res, name, exc_or_kind, message=None):
    """Record one CA's refusal in `res`: a CAError, or a kind and a message."""
    kind, msg = (exc_or_kind.kind, str(exc_or_kind)) if message is None else (exc_or_kind, message)
    res.errors.append(msg)
    res.error_kinds.setdefault(name, kind)


def _check_options(res, opts):
    """The set-wide options: the two default NSS trust strings, and a warning when HTTPS is not verified."""
    for bad, label in (
        (opts.root_nss_trust, "root_nss_trust"),
        (opts.intermediate_nss_trust, "intermediate_nss_trust"),
    ):
        if not validate_nss_trust(bad):
            _fail(res, "", "bad_option", f"{label} '{bad}' is not an NSS trust string like 'C,,' or 'CT,C,C'")
    if not opts.validate_certs:
        res.warnings.append("HTTPS certificate verification is disabled (validate_certs: false); only the pins protect "
                            "the downloads")


def _resolve_ca(res, index, ca, seen, dest, opts, fetch, now):
    """Check one entry, acquire its certificate against its pin and check it is a valid CA.

    Returns (name, cert, warnings), or None when it was refused (recorded in `res`)."""
    if not isinstance(ca, dict):
        _fail(res, f"#{index + 1}", "bad_entry", f"CA entry #{index + 1} is not a dict: {ca!r}")
        return None
    name = str(ca.get("name") or "").strip()
    if not name:
        _fail(res, f"#{index + 1}", "bad_entry", f"CA entry #{index + 1} has no name")
        return None
    slug = ca_file_stem(name)
    if slug in seen:
        _fail(res, name, "duplicate",
              f"CA '{name}': duplicate of CA '{seen[slug]}' (same name or same cache file {slug}.pem)")
        return None
    seen[slug] = name
    raw_pin = ca.get("sha256")
    if raw_pin in (None, ""):
        _fail(res, name, "pin_missing", f"CA '{name}' has no sha256 pin: an unpinned certificate is never trusted. "
              + PIN_HELP.replace("NAME", name) + ".")
        return None
    try:
        pin = normalize_pin(raw_pin)
    except ValueError as exc:
        _fail(res, name, "pin_invalid", f"CA '{name}': invalid sha256 pin: {exc}")
        return None
    trust = ca.get("nss_trust")
    if trust not in (None, "") and not validate_nss_trust(str(trust)):
        _fail(res, name, "bad_entry", f"CA '{name}': nss_trust '{trust}' is not an NSS trust string like 'C,,'")
        return None
    try:
        cert, source, warns = _acquire(ca, name, pin, dest, opts, fetch)
    except CAError as exc:
        _fail(res, name, exc)
        return None
    problems, ca_warns = check_is_ca(cert)
    v_problems, v_warns = check_validity(cert, now, bool(ca.get("allow_expired")), name)
    if problems or v_problems:
        kind = "not_ca" if problems else ("expired" if v_problems[0].startswith("expired") else "not_yet_valid")
        _fail(res, name, kind, f"CA '{name}' ({cert.subject.rfc4514_string()}, from {source}) refused: "
              + "; ".join(problems + v_problems))
        return None
    warns = warns + [f"CA '{name}': {w}" for w in ca_warns] + v_warns
    if ca.get("note") and (v_warns or ca_warns):
        warns.append("CA '{}': note: {}".format(name, ca["note"]))
    res.sources[name] = source
    return name, cert, warns


def _plan_ca(res, name, cert, info, ca, warns, dest, opts, now):
    """One chained CA: refuse a chain problem, else plan its .pem/.der writes and describe it in `res`."""
    if info["problem"]:
        _fail(res, name, "chain",
              "CA '{}' ({}) refused: {}".format(name, cert.subject.rfc4514_string(), info["problem"]))
        return
    role = info["role"]
    if role == "intermediate" and _hash_name(cert) in ("sha1", "md5"):
        warns = warns + [f"CA '{name}' is signed with {_hash_name(cert).upper()}, a broken hash: current browsers "
                         "may refuse chains through it"]
    trust = ca.get("nss_trust") or (opts.root_nss_trust if role == "root" else opts.intermediate_nss_trust)
    slug = ca_file_stem(name)
    pem_path = os.path.join(dest, slug + ".pem")
    der_path = os.path.join(dest, slug + ".der")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    der = cert.public_bytes(serialization.Encoding.DER)
    for path, data in ((pem_path, pem), (der_path, der)):
        try:
            current = _read_file(path)
        except OSError:
            current = None
        if current != data:
            res.writes[path] = data
    res.warnings.extend(warns)
    res.cas.append(describe(cert, name, role, trust, pem_path, der_path, now, warns))
