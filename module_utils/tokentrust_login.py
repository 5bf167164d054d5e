# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The test login (playbooks/verify.yml, role token_verify, module pkcs11_token_login): what it proves, and the PIN
try it spends only on a login that can pass.

    rep = verify_token(library, pin, ca_set=fact, url="https://...", deadline=60)

What a passing login proves (docs/token.md has the table): the CA's server asked for a client certificate IN the
handshake, refused a request without one AND a request with a throwaway self-signed one (the negative controls,
made before the PIN), named (when it names any) a CA above the key's certificate, then answered HTTP 200 over the
connection on which the key's certificate was really sent and its private key signed, after the PIN was accepted.

Before the PIN (no try spent): the key must hold a certificate valid now, for client authentication, in the CA set,
under a CA the server names (the certificate is chosen among those, then by days left, and the result says which and
why); the server must be reachable, trusted, named as in the URL, ask for a certificate during the handshake, and
refuse both controls. The PIN itself is presented from inside the login's own handshake, when the server asks for
the certificate there: a server that asked in the pre-flight but not on the login's connection never gets it.
One deadline bounds the whole TLS step; the key's lock is never held past it.

Bindings come from tokentrust_nss (NSS, token, TLS primitives); texts of what to do from tokentrust_advice.
"""
from __future__ import annotations

import datetime
import re
import time

from ansible.module_utils.tokentrust_advice import card_state_of
from ansible.module_utils.tokentrust_ca import cert_dates, verify_signature
from ansible.module_utils.tokentrust_nss.database import der_from_bytes
from ansible.module_utils.tokentrust_nss.errors import NSSError
from ansible.module_utils.tokentrust_nss.tls import (
    VERSION_NUMBERS,
    Deadline,
    TLSError,
    dn_text,
    https_get,
    parse_url,
    preflight,
    throwaway_get,
)
from ansible.module_utils.tokentrust_nss.token import TokenError, TokenSession, uses_pcsc
from ansible.module_utils.tokentrust_pin import library_lock_info
from ansible.module_utils.tokentrust_pin_action import (
    kept_record,
    locked,
    now_iso,
    public_token,
    puk_locked_reason,
)

UTC = datetime.timezone.utc
NOTHING = "nothing was presented to the key (no PIN try spent)"
DEFAULT_DEADLINE = 60


# ---------------------------------------------------------------------------------------------- certificates
def _key_type(cert):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec:" + key.curve.name
    return type(key).__name__


def _cn(name):
    from cryptography.x509.oid import NameOID

    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attrs[0].value if attrs else name.rfc4514_string()


def _key_usage(cert):
    from cryptography import x509

    out = []
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        for attr in ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                     "key_agreement", "key_cert_sign", "crl_sign"):
            if getattr(ku, attr):
                out.append(attr)
    except x509.ExtensionNotFound:
        pass
    eku = []
    try:
        for oid in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value:
            eku.append(getattr(oid, "_name", None) or oid.dotted_string)
    except x509.ExtensionNotFound:
        eku = None
    return out, eku


def _load_ca_set(ca_set):
    """[(name, cryptography cert)] from the tokentrust_ca_set fact (dicts with name and pem) or bare PEMs."""
    from cryptography import x509

    out = []
    for i, ca in enumerate(ca_set or []):
        if isinstance(ca, dict):
            name, pem = ca.get("name") or ca.get("nickname") or "CA #%d" % (i + 1), ca.get("pem")
        else:
            name, pem = "CA #%d" % (i + 1), ca
        if not pem:
            raise TokenError("ca_set", "CA set entry %r has no 'pem': pass the tokentrust_ca_set fact of the "
                             "ca_certificates role (entries with name, pem, sha256, role)" % name)
        if not isinstance(pem, (str, bytes)):
            raise TokenError("ca_set", "ca_set[%d] (%s): expected a dict with name and pem (PEM text) or a PEM text, "
                             "got %s: pass the tokentrust_ca_set fact of the ca_certificates role"
                             % (i, name, type(pem).__name__))
        try:
            der = der_from_bytes(pem, "CA set entry %r" % name)
            out.append((name, x509.load_der_x509_certificate(der)))
        except ValueError as exc:
            raise TokenError("ca_set", str(exc)) from None
    return out


def check_chain(cert, cas, now=None):
    """Does `cert` chain to a root of the CA set `cas` ([(name, cert)])? Returns a dict:
    in_ca_set (bool), chain ([names], issuer first), problem (str or None)."""
    now = now or datetime.datetime.now(UTC)
    chain = []
    cur = cert
    for _depth in range(8):
        candidates = [(n, c) for n, c in cas if c.subject == cur.issuer]
        if not candidates:
            where = "its issuer" if cur is cert else "the issuer of %r" % chain[-1]
            return {"in_ca_set": False, "chain": chain,
                    "problem": "%s '%s' is not in the CA set" % (where, cur.issuer.rfc4514_string())}
        found = None
        for n, c in candidates:
            try:
                verify_signature(cur, c.public_key())
            except Exception:  # noqa: BLE001 - InvalidSignature, unsupported key: try the next candidate
                continue
            found = (n, c)
            break
        if found is None:
            return {"in_ca_set": False, "chain": chain,
                    "problem": "a CA of the set has the issuer's name (%s) but did not sign it: forged or "
                    "re-keyed CA" % ", ".join(c[0] for c in candidates)}
        name, ca = found
        ca_after = cert_dates(ca)[1]
        if ca_after < now:
            return {"in_ca_set": False, "chain": chain + [name],
                    "problem": "CA %r of the chain expired on %s" % (name, ca_after.isoformat())}
        chain.append(name)
        if ca.subject == ca.issuer:
            return {"in_ca_set": True, "chain": chain, "problem": None}
        cur = ca
    return {"in_ca_set": False, "chain": chain, "problem": "chain longer than 8 certificates"}


def describe_certificate(der, cas=None, now=None):
    """What the report says about one certificate of the token (pure: cryptography only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = now or datetime.datetime.now(UTC)
    cert = x509.load_der_x509_certificate(der)
    nb, na = cert_dates(cert)
    ku, eku = _key_usage(cert)
    serial = "%X" % cert.serial_number
    if len(serial) % 2:
        serial = "0" + serial
    out = {
        "holder": _cn(cert.subject),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial,
        "not_before": nb.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": na.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": (na - now).days,
        "expired": na < now,
        "not_yet_valid": nb > now,
        "key_usage": ku,
        "extended_key_usage": eku,
        "client_auth": eku is None or "clientAuth" in eku,
        "sha256": cert.fingerprint(hashes.SHA256()).hex().upper(),
        "key_type": _key_type(cert),
    }
    if cas is not None:
        out.update(check_chain(cert, cas, now))
    return out


def usable_for_login(desc):
    """None when a certificate can be used for the test login, else why not."""
    if desc["expired"]:
        return "expired on %s" % desc["not_after"]
    if desc["not_yet_valid"]:
        return "not valid before %s" % desc["not_before"]
    if not desc["client_auth"]:
        return "not for client authentication (extended key usage %s)" % ", ".join(desc["extended_key_usage"])
    if desc.get("in_ca_set") is False:
        return "does not chain to the CA set: %s" % desc["problem"]
    return None


def describe_raw(raw, cas=None, now=None):
    """describe_certificate() of one of Token.certificates()'s entries, with its label, key and issuer's DER name."""
    desc = describe_certificate(raw["der"], cas, now)
    desc["nickname"] = raw["nickname"]
    desc["has_key"] = raw["has_key"]
    desc["issuer_der"] = raw["issuer_der"].hex()
    return desc


def names_above(desc, cas):
    """The DER names of the CAs above a certificate: its issuer, and every CA of the set in its chain."""
    out = {bytes.fromhex(desc["issuer_der"])}
    for name in desc.get("chain") or []:
        out.update(c.subject.public_bytes() for n, c in cas or [] if n == name)
    return out


def _named(above, server_der):
    """Does the server's acceptable-CA list (DER names) name one of `above`? By DER, else by NSS's text form."""
    if any(d in above for d in server_der):
        return True
    ours = {dn_text(d).casefold() for d in above}
    return any(dn_text(d).casefold() in ours for d in server_der)


def _best(descs, cands):
    # the most days left; ties (a key often holds a signing and an authentication certificate of the same dates)
    # broken by the certificate itself, never by the token's object order, which can change between runs
    return max(cands, key=lambda i: (descs[i]["days_left"], descs[i].get("not_after") or "",
                                     descs[i].get("sha256") or ""))


def choose_for_login(descs, selector=None, above=None, server_der=None, server_texts=()):
    """(index, choice) of the certificate to log in with, or TokenError before the PIN when no login can pass:
    no_certificate, certificate_not_usable (the selector's one), no_usable_certificate, client_ca_not_accepted.
    `above[i]`: the DER names above descs[i]; `server_der`: the server's acceptable CAs (None/empty: it names none).
    choice: sha256, holder, issuer, why (in words), set_aside (the others, each with why)."""
    if not descs:
        raise TokenError("no_certificate", "the key holds no certificate (a private key alone cannot log in): no "
                         "login can pass; %s" % NOTHING)
    if selector:
        i = select_certificate(descs, selector)
        bad = usable_for_login(descs[i])
        if bad:
            raise TokenError("certificate_not_usable", "the chosen certificate %s (issuer %s) %s: a login with it "
                             "cannot pass; %s" % (descs[i]["holder"], descs[i]["issuer"], bad, NOTHING))
        cands, why = [i], ["chosen by the selector %r" % selector]
    else:
        cands = [i for i, d in enumerate(descs) if usable_for_login(d) is None]
        if not cands:
            raise TokenError("no_usable_certificate", "no certificate on the key can log in: %s; %s" % ("; ".join(
                "%s (issuer %s) %s" % (d["holder"], d["issuer"], _why_not(d)) for d in descs), NOTHING))
        why = ["valid now, for client authentication%s" % (" and in the CA set" if "in_ca_set" in descs[0] else "")]
    set_aside = ["%s (issuer %s): %s" % (d["holder"], d["issuer"], _why_not(d)) for i, d in enumerate(descs)
                 if i not in cands]
    if server_der:
        named = [i for i in cands if _named(above[i], server_der)]
        if not named:
            ours = sorted({dn_text(n) for i in cands for n in above[i]})
            raise TokenError("client_ca_not_accepted", "the server asks for a client certificate issued by %s only; "
                             "the key's usable certificates are issued under %s, which it does not name: it cannot "
                             "accept the key as a login, whatever it answers (wrong URL, or the server is not "
                             "configured for this CA); %s" % ("; ".join(server_texts), "; ".join(ours), NOTHING))
        set_aside += ["%s (issuer %s): its CA is not among those the server names" % (descs[i]["holder"],
                      descs[i]["issuer"]) for i in cands if i not in named]
        cands = named
        why.append("its CA is among the acceptable CAs the server names (%s)" % "; ".join(server_texts))
    else:
        why.append("the server names no acceptable CAs")
    best = _best(descs, cands)
    if len(cands) > 1:
        why.append("the one with the most days left of %d such certificates" % len(cands))
    d = descs[best]
    return best, {"sha256": d["sha256"], "holder": d["holder"], "issuer": d["issuer"], "why": "; ".join(why),
                  "set_aside": set_aside}


def _why_not(desc):
    return usable_for_login(desc) or "usable"


def throwaway_identity(key_type="rsa"):
    """A self-signed client certificate made on the spot (PEM certificate, PEM key), of the same key type as the
    key's certificate: the negative control a server that checks client certificates must refuse."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = (ec.generate_private_key(ec.SECP256R1()) if key_type.startswith("ec") else
           rsa.generate_private_key(public_exponent=65537, key_size=2048))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokentrust negative control (self-signed)")])
    now = datetime.datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


_HEX64 = re.compile(r"^[0-9A-Fa-f]{64}$")


def _selector_kind(selector):
    """('sha256', HEX) for a SHA-256 fingerprint (64 hex digits, colons allowed), else ('name', text)."""
    s = selector.strip()
    hexsel = s.replace(":", "").replace(" ", "")
    if _HEX64.match(hexsel):
        return "sha256", hexsel.upper()
    return "name", s


def check_selector(selector):
    """Raise TokenError('input') for a certificate selector that can match nothing; return it stripped."""
    if selector is None:
        return None
    if not isinstance(selector, str) or not selector.strip():
        raise TokenError("input", "certificate: an empty selector; give the SHA-256 fingerprint, the label on the key "
                         "or the holder's name, or leave it unset to use the best usable certificate")
    s = selector.strip()
    hexsel = s.replace(":", "")
    if ":" in s and re.match(r"^[0-9A-Fa-f:]+$", s) and len(hexsel) != 64:
        raise TokenError("input", "certificate: %r looks like a fingerprint but has %d hex digits; a SHA-256 "
                         "fingerprint has 64" % (s, len(hexsel)))
    return s


def _matches(desc, selector):
    """Exact match only: the whole SHA-256, the whole label (with or without the token name), the whole holder."""
    kind, s = _selector_kind(selector)
    if kind == "sha256":
        return s == desc["sha256"]
    nick = desc.get("nickname") or ""
    return s == nick or nick.endswith(":" + s) or s.casefold() == (desc.get("holder") or "").casefold()


def select_certificate(descs, selector):
    """Index of the one certificate `selector` names; TokenError certificate_not_found / certificate_ambiguous."""
    found = [i for i, d in enumerate(descs) if _matches(d, selector)]
    distinct = {descs[i]["sha256"]: i for i in found}
    if not distinct:
        raise TokenError("certificate_not_found", "no certificate on the key matches %r exactly (SHA-256, label or "
                         "holder); on the key: %s" % (selector, "; ".join(
                             "%s, label %r, SHA-256 %s" % (d["holder"], d.get("nickname"), d["sha256"])
                             for d in descs) or "none"))
    if len(distinct) > 1:
        raise TokenError("certificate_ambiguous", "%d certificates on the key match %r: %s. Choose one by its "
                         "SHA-256 fingerprint" % (len(distinct), selector, "; ".join(
                             "%s (issuer %s, expires %s), SHA-256 %s"
                             % (descs[i]["holder"], descs[i]["issuer"], descs[i]["not_after"], descs[i]["sha256"])
                             for i in distinct.values())), candidates=sorted(distinct))
    return next(iter(distinct.values()))


def choose_certificate(descs, selector=None):
    """(index, warning) of the certificate to log in with: `selector` (exact SHA-256, label or holder; several
    matches raise certificate_ambiguous) or the usable one with the most days left (ties: the highest SHA-256, so
    every run picks the same). (None, reason) when none."""
    if selector:
        i = select_certificate(descs, selector)
        why = usable_for_login(descs[i])
        return i, ("the chosen certificate %s is not usable (%s): trying it anyway" % (descs[i]["holder"], why)
                   if why else None)
    usable = [i for i, d in enumerate(descs) if usable_for_login(d) is None]
    if not usable:
        if not descs:
            return None, "the token holds no certificate with its private key"
        return None, "no certificate on the token is usable: " + "; ".join(
            "%s (%s): %s" % (d["holder"], d["issuer"], usable_for_login(d)) for d in descs)
    # the most days left; ties (a key often holds a signing and an authentication certificate of the same dates)
    # broken by the certificate itself, never by the token's object order, which can change between runs
    return max(usable, key=lambda i: (descs[i]["days_left"], descs[i].get("not_after") or "",
                                      descs[i].get("sha256") or "")), None


# ---------------------------------------------------------------------------------------------- checks
def validate_inputs(url=None, tls=True, certificate=None, timeout=20, body_bytes=1024, min_days_left=30,
                    tls_max=None, deadline=DEFAULT_DEADLINE):
    """Every input of the test login checked before the key is touched (no PIN is presented on a bad input).
    Raises TLSError('url') or TokenError('input')."""
    if tls and url:
        parse_url(url)
    check_selector(certificate)
    for name, value, low in (("timeout", timeout, 1), ("body_bytes", body_bytes, 0),
                             ("min_days_left", min_days_left, 0), ("deadline", deadline, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise TokenError("input", "%s must be a whole number >= %d, got %r" % (name, low, value))
    for name, value in (("timeout", timeout), ("deadline", deadline)):
        if value > 600:
            raise TokenError("input", "%s must be at most 600 seconds, got %d" % (name, value))
    if tls_max is not None and tls_max not in VERSION_NUMBERS:
        raise TokenError("input", "tls_max_version must be one of %s, got %r" % (", ".join(sorted(VERSION_NUMBERS)),
                                                                                 tls_max))


def _preflight_verdict(pre, url):
    """Why a login at `url` could not pass, from the pre-flight handshake without the key: (kind, message) or None."""
    if pre.get("post_handshake_only"):
        return ("post_handshake_auth_only", "the server %s asks for a client certificate only after the TLS 1.3 "
                "handshake (post-handshake authentication), which Firefox does not offer: the key cannot log in "
                "there as the browser would; %s" % (url, NOTHING))
    if not pre["client_cert_requested"]:
        return ("no_client_auth", "the server %s did not ask for a client certificate in a handshake made without "
                "the key: the key would not be used, so the login would prove nothing (wrong URL, a proxy that ends "
                "TLS, or not the CA's test page); %s" % (url, NOTHING))
    control = pre["without_client_cert"]
    if control["accepted"]:
        return ("client_cert_optional", "the server %s answered HTTP %d to the same request made with NO client "
                "certificate (negative control): it does not need the key, so a login there proves nothing (a "
                "server that only asks for a certificate, optionally); %s" % (url, control["status"], NOTHING))
    return None


def _tls_verdict(tls, chosen, url):
    """The login's own connection passes only when the server asked for a client certificate on it, ours was sent,
    and the page answered 200. Returns None or (kind, message)."""
    if not tls["client_cert_requested"]:
        return ("no_client_auth", "the server %s asked for a client certificate in the pre-flight but not on the "
                "login's connection (it changed its mind, or a balancer sent the login elsewhere): the key was not "
                "used, so the login proves nothing; %s; HTTP %d" % (url, NOTHING, tls["status"]))
    if tls["client_cert_sent"] != chosen["sha256"]:
        return ("client_cert_not_sent", "the server %s asked for a client certificate but %s was not sent (sent: %s; "
                "none was sent means the server accepts no signature this key can make)"
                % (url, chosen["sha256"], tls["client_cert_sent"] or "none"))
    if tls["status"] != 200:
        where = (" to %s" % tls["location"]) if tls.get("location") else " with no Location"
        moved = (" (a redirection%s: give the page it leads to as the URL if that is the test page)" % where
                 if 300 <= tls["status"] < 400 else "")
        return ("page_status", "the test page %s answered HTTP %d %s after the client certificate was sent: the "
                "server did not accept it%s" % (url, tls["status"], tls["reason"], moved))
    return None


_CARD_ANSWERS = ("wrong_pin", "pin_locked", "pin_final_try", "wrong_pin_this_run", "puk_locked")


# ---------------------------------------------------------------------------------------------- the test login
class _TestLogin:
    """One run of the test login on an open TokenSession: the decisions, in order (see the module's docstring)."""

    def __init__(self, rep, ts, cas, opts):
        self.rep, self.ts, self.tok, self.cas, self.o = rep, ts, ts.token, cas, opts
        self.lock = self.record = self.puk_locked = None
        self.deadline = None

    def public(self):
        """[(description, handle)] of the key's certificates (public objects: before the PIN, has_key is False)."""
        return [(describe_raw(r, self.cas, self.o["now"]), r["handle"]) for r in self.tok.certificates()]

    def run(self):
        o = self.o
        if o["certificate"]:  # the selector is resolved on the public certificates, before any PIN
            public = [p[0] for p in self.public()]
            if public:
                select_certificate(public, o["certificate"])
        if o["check_mode"]:
            self.rep["warnings"] += [w + " (check mode: no PIN presented)"
                                     for w in self.tok.guard("user", o["allow_final_try"])]
            return self.report_certificates(None)
        if not (o["tls"] and o["url"]):
            self.guarded(self.present_pin)
            return self.report_certificates(None)
        return self.tls_login()

    def tls_login(self):
        o, rep = self.o, self.rep
        pairs = self.public()
        descs = [p[0] for p in pairs]
        above = [names_above(d, self.cas) for d in descs]
        choose_for_login(descs, o["certificate"], above)  # no certificate can pass: stop before the network
        self.deadline = Deadline(o["deadline"])
        pre = rep["preflight"] = preflight(o["url"], timeout=o["timeout"], tls_max=o["tls_max"],
                                           deadline=self.deadline)
        rep["client_cert_requested"] = pre["client_cert_requested"]
        verdict = _preflight_verdict(pre, o["url"])
        if verdict:
            raise TokenError(verdict[0], verdict[1])
        idx, choice = choose_for_login(descs, o["certificate"], above,
                                       [bytes.fromhex(h) for h in pre["acceptable_cas_der"]], pre["acceptable_cas"])
        rep["certificate_choice"] = choice
        cert_pem, key_pem = throwaway_identity(descs[idx]["key_type"])
        control = pre["with_throwaway_certificate"] = throwaway_get(
            o["url"], cert_pem, key_pem, timeout=o["timeout"], tls_max=o["tls_max"], deadline=self.deadline)
        if control["accepted"]:
            raise TokenError("server_accepts_any_certificate", "the server %s answered HTTP %s to the same request "
                             "made with a throwaway self-signed client certificate (negative control): it accepts any "
                             "certificate, so a login there proves nothing about the key; %s"
                             % (o["url"], control["status"], NOTHING))
        chosen, handle = pairs[idx]
        _login_fields(rep, chosen)
        self.guarded(lambda: self.connect(chosen, handle))
        self.report_certificates(chosen["sha256"])

    def connect(self, chosen, handle):
        """The login's own connection; the PIN is presented from inside its handshake, when the server asks."""
        o, rep = self.o, self.rep
        rep["tls"] = res = https_get(o["url"], handle, timeout=o["timeout"], max_body=o["body_bytes"],
                                     holder=chosen["holder"], tls_max=o["tls_max"], deadline=self.deadline,
                                     on_request=self.present_pin)
        rep["client_cert_requested"] = res["client_cert_requested"]
        rep["client_cert_sent"] = res["client_cert_sent"]
        verdict = _tls_verdict(res, chosen, o["url"])
        if verdict:
            rep["client_cert_accepted"] = None if verdict[0] == "no_client_auth" else False
            raise TokenError(verdict[0], verdict[1], http_status=res["status"])
        rep["client_cert_accepted"] = True
        page = res["page"]
        if page["says_not_valid"]:
            rep["problems"].append("the test page says the certificate is NOT valid: %r" % res["body_start"][:200])
        elif not page["holder_found"]:
            rep["warnings"].append("the test page answered 200 but does not show the holder's name %r"
                                   % chosen["holder"])

    def guarded(self, body):
        """The token's lock from reading its counter to the end of `body` (the login; with TLS, its connection)."""
        tok, rep, o = self.tok, self.rep, self.o
        started = time.monotonic()
        lock = self.lock = locked(tok.info(), o["lock_timeout"])
        lock.__enter__()
        try:
            if self.deadline is not None:
                self.deadline.extend(time.monotonic() - started)  # waiting for the lock is not TLS time
            rep["lock_waited"] = round(o["liblock"].waited + lock.waited, 3)
            self.record = lock.read()
            info = tok.info()  # the counter, read under the lock
            rep["pin_state_before"], rep["token"] = info["user_pin"], public_token(info)
            if o["run_id"] and self.record.get("wrong_pin_run") == o["run_id"] and info["user_pin"] != "ok":
                raise TokenError("wrong_pin_this_run", "this run (%s) already had its PIN refused by token %r (%s): "
                                 "not presented again; check the PIN"
                                 % (o["run_id"], tok.label, self.record.get("wrong_pin_at")), token=info)
            self.puk_locked = puk_locked_reason(info, self.record)
            body()
            if self.record != kept_record(self.record):
                lock.write(kept_record(self.record))
            if self.puk_locked:
                rep["warnings"].append("the PUK of token %r is blocked (%s): a blocked PIN could not be unblocked any "
                                       "more; ask the CA for a new key before that happens"
                                       % (tok.label, self.puk_locked))
        except (TokenError, TLSError, NSSError) as exc:
            if getattr(exc, "kind", None) not in _CARD_ANSWERS and _card_gone(tok):
                raise TokenError("card_pulled", "the key %r was pulled out during the test login (%s)"
                                 % (tok.label, getattr(exc, "message", None) or exc), card_state="card_pulled",
                                 cause=getattr(exc, "kind", "nss")) from None
            raise
        finally:
            lock.__exit__(None, None, None)

    def present_pin(self):
        """The one PIN presentation (under the lock); a refused PIN is remembered for the run."""
        tok, rep = self.tok, self.rep
        try:
            rep["warnings"] += tok.login(self.o["pin"], self.o["allow_final_try"])
            rep["logged_in"] = tok.logged_in
        except TokenError as e:
            if e.kind == "pin_locked" and not tok.pin_presentations and self.puk_locked:
                raise TokenError("puk_locked", "the PIN and the PUK of token %r are both blocked (%s): no attempt was "
                                 "made" % (tok.label, self.puk_locked), token=tok.info()) from None
            if e.kind in ("wrong_pin", "pin_locked") and tok.pin_presentations:
                self.lock.write(dict(kept_record(self.record), wrong_pin_run=self.o["run_id"],
                                     wrong_pin_at=now_iso()))
            raise
        finally:
            rep["pin_attempts"] = tok.pin_presentations

    def report_certificates(self, used):
        """The key's certificates in the report. `used`: the SHA-256 of the one the TLS login used (it alone
        decides; other expired ones are warnings); None: the best usable one is reported (problems when none)."""
        rep, o = self.rep, self.o
        pairs = self.public()
        descs = [d for d, _h in pairs if d["has_key"] or o["check_mode"] or d["sha256"] == used]
        rep["other_certificates"] = len(pairs) - len(descs)
        for d in descs:
            d["usable"] = usable_for_login(d) is None
            if o["check_mode"]:
                d["has_key"] = None  # private keys are private objects: not visible without login
        rep["certificates"] = descs
        if used is None:
            idx, why = choose_certificate(descs, o["certificate"])
            (rep["problems"] if idx is None else rep["warnings"]).extend([why] if why else [])
        else:
            idx = next(i for i, d in enumerate(descs) if d["sha256"] == used)
        for i, d in enumerate(descs):
            if i != idx and (d["expired"] or d.get("in_ca_set") is False):
                rep["warnings"].append("certificate %s (issuer %s, SHA-256 %s) %s; it is not the one used: remove the "
                                       "old certificate from the key"
                                       % (d["holder"], d["issuer"], d["sha256"], usable_for_login(d)))
        if idx is None:
            return
        chosen = descs[idx]
        if o["min_days_left"] and 0 <= chosen["days_left"] < o["min_days_left"]:
            rep["warnings"].append("certificate %s (issuer %s) expires in %d days (%s): renew it"
                                   % (chosen["holder"], chosen["issuer"], chosen["days_left"], chosen["not_after"]))
        _login_fields(rep, chosen)


def _login_fields(rep, chosen):
    keys = ("holder", "subject", "issuer", "serial", "not_after", "days_left", "sha256", "nickname")
    rep["login_certificate"] = {k: chosen[k] for k in keys}
    rep["holder"], rep["not_after"], rep["days_left"] = chosen["holder"], chosen["not_after"], chosen["days_left"]


def _card_gone(tok):
    """After a failure in the middle of a login: True when the key is no longer in its reader (pulled out). NSS
    caches a slot's presence for one second: read it after that."""
    if uses_pcsc() is False:
        return False
    time.sleep(1.2)
    try:
        return not tok.present()
    except Exception:  # noqa: BLE001 - a question after a failure: never a second failure
        return False


def _new_report(module_path, url, tls, check_mode):
    return {"ok": False, "checked_at": now_iso(), "pkcs11_module": module_path, "url": url if tls else None,
            "token": None, "pin_state_before": None, "logged_in": False, "pin_attempts": 0, "certificates": [],
            "other_certificates": 0, "login_certificate": None, "certificate_choice": None, "holder": None,
            "not_after": None, "days_left": None, "client_cert_requested": None, "client_cert_sent": None,
            "client_cert_accepted": None, "tls": None, "preflight": None, "error": None, "problems": [],
            "warnings": [], "check_mode": bool(check_mode), "lock_waited": None}


def verify_token(module_path, pin, label=None, ca_set=None, url=None, server_ca_pems=(), builtin_roots=True,
                 allow_final_try=False, certificate=None, tls=True, timeout=20, body_bytes=1024, min_days_left=30,
                 check_mode=False, tls_max=None, now=None, run_id=None, lock_timeout=120, deadline=DEFAULT_DEADLINE):
    """The whole test login. Returns a report dict; never raises for token/TLS problems (see report['error'], with
    what to do in verify.yml) and never contains the PIN. report['ok'] is True only when everything passed (see the
    module's docstring for what that proves).

    Every input is checked before the key is touched; the token's cross-process lock (tokentrust_pin.TokenLock) is
    held from reading the PIN counter to the end of the login's connection, never past `deadline` seconds of TLS.
    With `run_id`, a run that already saw this PIN refused by this token does not present it again."""
    started = time.monotonic()
    rep = _new_report(module_path, url, tls, check_mode)
    try:
        validate_inputs(url, tls, certificate, timeout, body_bytes, min_days_left, tls_max, deadline)
        certificate = check_selector(certificate)
        cas = _load_ca_set(ca_set) if ca_set is not None else None
        # the set's own NSS trust (nss_trust, as the ca_certificates role gives it to Firefox: roots "C,,"), so the
        # test page is trusted exactly as the browser would trust it; bare PEMs: no trust (chain building only)
        pems = [(ca["pem"], ca.get("nss_trust") or ",,") if isinstance(ca, dict) else (ca, ",,")
                for ca in (ca_set or [])]
        liblock = locked(library_lock_info(module_path), lock_timeout)
        with liblock, TokenSession(module_path, label, ca_pems=pems, server_ca_pems=server_ca_pems,
                                   builtin_roots=builtin_roots and tls and not check_mode) as ts:
            _read_token(rep, ts)
            opts = dict(pin=pin, certificate=certificate, allow_final_try=allow_final_try, tls=tls, url=url,
                        timeout=timeout, body_bytes=body_bytes, min_days_left=min_days_left, check_mode=check_mode,
                        tls_max=tls_max, now=now or datetime.datetime.now(UTC), run_id=run_id,
                        lock_timeout=lock_timeout, deadline=deadline, liblock=liblock)
            _TestLogin(rep, ts, cas, opts).run()
            rep["token"] = public_token(ts.token.info())
    except (TokenError, TLSError, NSSError) as e:
        _keep_error(rep, e)
    card_state_of(rep["error"], "verify")
    rep["ok"] = rep["error"] is None and not rep["problems"] and not check_mode
    rep["seconds"] = round(time.monotonic() - started, 3)
    return rep


def _read_token(rep, ts):
    tok = ts.token
    info = tok.info()
    rep["pin_state_before"] = info["user_pin"]
    rep["token"] = public_token(info)
    rep["tokens_present"] = [{"label": t.label, "reader": t.slot_name} for t in ts.tokens]
    if len(ts.tokens) > 1:  # chosen by its label (else _select refused): say which one, never silently
        rep["warnings"].append("%d keys are plugged in (%s): the test login uses the one labelled %r in %s (token "
                               "label set)" % (len(ts.tokens), ", ".join("%r in %s" % (t.label, t.slot_name)
                                                                         for t in ts.tokens), tok.label,
                                               tok.slot_name))


def _keep_error(rep, e):
    if isinstance(e, NSSError):
        rep["error"] = {"kind": "nss", "message": str(e), "nss_error": e.name}
        return
    rep["error"] = e.to_dict()
    if isinstance(e, TokenError):
        rep["error"].pop("preflight", None)  # already in rep['preflight']
        if "token" in rep["error"]:
            rep["token"] = public_token(rep["error"].pop("token"))
        return
    for k in ("client_cert_requested", "client_cert_sent"):
        if k in rep["error"]:
            rep[k] = rep["error"][k]
    if rep["client_cert_sent"]:
        rep["client_cert_accepted"] = False
