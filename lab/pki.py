"""Generated PKIs for the lab and the tests (no binary fixtures in git).

Everything here is built with `cryptography`; keys are EC P-256 by default (fast), RSA on demand.

    root = make_ca("Lab Root CA")
    inter = make_ca("Lab Advanced CA V3", issuer=root)
    leaf = make_leaf("JEAN DUPONT", issuer=inter, client=True)
    leaf.pem, leaf.der, leaf.key_pem
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = _dt.timezone.utc


@dataclass
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: object
    name: str
    children: list = field(default_factory=list)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def sha256(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex().upper()

    @property
    def sha256_colon(self) -> str:
        h = self.sha256
        return ":".join(h[i:i + 2] for i in range(0, len(h), 2))

    @property
    def sha1(self) -> str:
        return self.cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - Windows thumbprint


def _now() -> _dt.datetime:
    return _dt.datetime.now(UTC).replace(microsecond=0)


def _key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, org: str = "tokentrust lab", extra: Optional[Sequence] = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    attrs += list(extra or [])
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def make_ca(
    cn: str,
    issuer: Optional[Issued] = None,
    *,
    days: int = 3650,
    not_before: Optional[_dt.datetime] = None,
    not_after: Optional[_dt.datetime] = None,
    ca: bool = True,
    key_cert_sign: bool = True,
    key_type: str = "ec",
    org: str = "tokentrust lab",
    path_length: Optional[int] = None,
    ski: bool = True,
    aki: bool = True,
    sign_with=None,
) -> Issued:
    """A CA certificate (self-signed when `issuer` is None).

    `ca=False` or `key_cert_sign=False` make a deliberately broken "CA" for negative tests;
    `sign_with` signs with another key than the issuer's (a forged intermediate).
    """
    key = _key(key_type)
    nb = not_before or (_now() - _dt.timedelta(days=1))
    na = not_after or (nb + _dt.timedelta(days=days))
    subject = _name(cn, org)
    issuer_name = issuer.cert.subject if issuer else subject
    signer = sign_with or (issuer.key if issuer else key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign and ca,
                crl_sign=ca, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if aki:
        src = issuer.key.public_key() if issuer else key.public_key()
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(src), critical=False)
    cert = b.sign(signer, hashes.SHA256())
    out = Issued(cert=cert, key=key, name=cn)
    if issuer:
        issuer.children.append(out)
    return out


def make_leaf(
    cn: str,
    issuer: Issued,
    *,
    days: int = 1095,
    not_before: Optional[_dt.datetime] = None,
    not_after: Optional[_dt.datetime] = None,
    client: bool = False,
    server_names: Sequence[str] = (),
    key_type: str = "ec",
    org: str = "tokentrust lab",
    email: Optional[str] = None,
) -> Issued:
    """An end-entity certificate: a TLS server (`server_names`) or a holder's client certificate."""
    import ipaddress

    key = _key(key_type)
    nb = not_before or (_now() - _dt.timedelta(days=1))
    na = not_after or (nb + _dt.timedelta(days=days))
    extra = []
    if client:
        extra.append(x509.NameAttribute(NameOID.SURNAME, cn.split()[-1]))
        extra.append(x509.NameAttribute(NameOID.GIVEN_NAME, cn.split()[0]))
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org, extra))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    ekus = []
    if client:
        ekus += [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=key_type == "rsa",
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if server_names:
        ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
        sans = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if email:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    if ekus:
        b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    cert = b.sign(issuer.key, hashes.SHA256())
    return Issued(cert=cert, key=key, name=cn)


def certeurope_standin(key_type: str = "ec") -> dict:
    """The lab chain standing in for CertEurope: root, "Advanced CA V3", "Classe 3 Plus" (root + sub-CA).

    Returns a dict name -> Issued, in trust order (roots first).
    """
    org = "tokentrust lab (CertEurope stand-in)"
    root = make_ca("Lab Root CA 2", org=org, key_type=key_type, days=7300)
    adv = make_ca("Lab Advanced CA V3", issuer=root, org=org, key_type=key_type, days=3650)
    root1 = make_ca("Lab Root CA", org=org, key_type=key_type, days=7300)
    c3p = make_ca("Lab Classe 3 Plus V2", issuer=root1, org=org, key_type=key_type, days=3650)
    return {
        "Lab Root CA 2": root,
        "Lab Advanced CA V3": adv,
        "Lab Root CA": root1,
        "Lab Classe 3 Plus V2": c3p,
    }
