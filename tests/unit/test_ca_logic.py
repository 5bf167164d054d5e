"""Pure logic of the pinned CA set (module_utils/tokentrust_ca.py): tables, no network."""
from __future__ import annotations

import datetime as dt
import os

import pytest
import yaml
from ansible.module_utils.tokentrust_ca import (
    CAError,
    Options,
    build_ca_set,
    check_is_ca,
    check_validity,
    classify_and_chain,
    colon,
    looks_like_html,
    normalize_pin,
    parse_certificates,
    select_pinned,
    validate_nss_trust,
)
from ansible.module_utils.tokentrust_facts import ca_file_stem
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from lab.pki import make_ca, make_leaf

UTC = dt.timezone.utc
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEX = "42143A511A3AFCDD80D555DEBB4191EC6BB285EE66E62EC657ED20ADF7D55FAA"
FACT_KEYS = {
    "name", "nickname", "subject", "issuer", "serial", "not_before", "not_after", "days_left", "expired", "sha1",
    "sha256", "role", "nss_trust", "windows_store", "pem", "pem_path", "der_path", "warnings",
}


@pytest.fixture(scope="module")
def pki():
    root = make_ca("Unit Root CA")
    inter = make_ca("Unit Issuing CA", issuer=root)
    twin = make_ca("Unit Root CA")  # same subject as root, another key
    return {
        "root": root, "inter": inter, "twin": twin,
        "rsa_root": make_ca("Unit RSA Root", key_type="rsa"),
        "leaf": make_leaf("JEAN DUPONT", issuer=inter, client=True),
        "no_ku": make_ca("Unit No KeyCertSign", issuer=root, key_cert_sign=False),
        "forged": make_ca("Unit Forged", issuer=root, sign_with=twin.key),
        "twin_child": make_ca("Unit Twin Child", issuer=twin),
    }


# ----------------------------------------------------------------------------- pins

@pytest.mark.parametrize("raw", [
    HEX,
    HEX.lower(),
    colon(HEX),
    colon(HEX).lower(),
    "sha256:" + HEX.lower(),
    "SHA256:" + colon(HEX),
    "sha256 Fingerprint=" + colon(HEX),
    "SHA-256:" + HEX,
    "  " + " ".join(HEX[i:i + 2] for i in range(0, 64, 2)) + "\n",
])
def test_pin_formats_normalise(raw):
    assert normalize_pin(raw) == HEX


@pytest.mark.parametrize("raw, message", [
    ("", "empty pin"),
    (None, "empty pin"),
    ("zz" * 32, "not hexadecimal: '" + "zz" * 32 + "'"),
    (HEX[:40], "a SHA-256 fingerprint has 64 hex digits, got 40 (that is a SHA-1 length: a SHA-256 pin is "
               "required): '" + HEX[:40] + "'"),
    (HEX + "00", "a SHA-256 fingerprint has 64 hex digits, got 66: '" + HEX + "00'"),
])
def test_bad_pins(raw, message):
    with pytest.raises(ValueError) as err:
        normalize_pin(raw)
    assert str(err.value) == message


@pytest.mark.parametrize("name, slug", [
    ("Certeurope Root CA 2", "certeurope_root_ca_2"),
    ("AC CertEurope Classe 3 Plus V2", "ac_certeurope_classe_3_plus_v2"),
    ("  ../../etc/passwd ", "etc_passwd"),
    ("Élan/CA", "lan_ca"),
    ("!!!", "ca"),
])
def test_ca_file_stem(name, slug):
    assert ca_file_stem(name) == slug


@pytest.mark.parametrize("value, ok", [
    ("C,,", True), (",,", True), ("CT,C,C", True), ("CTu,Cu,Cu", True), ("C,", False), ("X,,", False), ("", False),
])
def test_nss_trust_strings(value, ok):
    assert validate_nss_trust(value) is ok


# ----------------------------------------------------------------------------- parsing

def _formats(pki):
    root, inter = pki["root"], pki["inter"]
    return {
        "der": root.der,
        "pem": root.pem,
        "pem-crlf-leading-space": b"\r\n  " + root.pem.replace(b"\n", b"\r\n"),
        "pem-two": root.pem + inter.pem,
        "pkcs7-der": pkcs7.serialize_certificates([root.cert, inter.cert], serialization.Encoding.DER),
        "pkcs7-pem": pkcs7.serialize_certificates([root.cert, inter.cert], serialization.Encoding.PEM),
    }


@pytest.mark.parametrize("kind, fmt, count", [
    ("der", "der", 1), ("pem", "pem", 1), ("pem-crlf-leading-space", "pem", 1), ("pem-two", "pem", 2),
    ("pkcs7-der", "pkcs7-der", 2), ("pkcs7-pem", "pkcs7-pem", 2),
])
def test_parse_formats(pki, kind, fmt, count):
    certs, got_fmt = parse_certificates(_formats(pki)[kind])
    assert (got_fmt, len(certs)) == (fmt, count)
    assert certs[0] == pki["root"].cert


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "an HTML page"),
    (b"\n\n<html lang=fr>", "an HTML page"),
    (b"hello", "unknown content, first bytes 68656c6c6f"),
    (b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
     "PEM without a CERTIFICATE block (found: EC PRIVATE KEY)"),
    (b"\x30\x03\x02\x01\x00", "DER data that is neither an X.509 certificate nor a PKCS#7 bundle"),
])
def test_parse_refusals(data, message):
    with pytest.raises(ValueError) as err:
        parse_certificates(data)
    assert str(err.value) == message


def test_parse_truncated_der_and_pem(pki):
    with pytest.raises(ValueError) as err:
        parse_certificates(pki["root"].der[:200])
    assert str(err.value) == "DER data that is neither an X.509 certificate nor a PKCS#7 bundle"
    with pytest.raises(ValueError) as err:
        parse_certificates(pki["root"].pem[:200])
    assert str(err.value).startswith("PEM CERTIFICATE block that does not parse")


@pytest.mark.parametrize("ctype, body, html", [
    ("text/html", b"\x30\x82", True),
    ("text/html; charset=UTF-8", b"", True),
    ("application/pkix-cert", b"<HTML><BODY>", True),
    ("application/pkix-cert", b"\x30\x82\x01", False),
    (None, b"-----BEGIN CERTIFICATE-----", False),
])
def test_looks_like_html(ctype, body, html):
    assert looks_like_html(body, ctype) is html


# ----------------------------------------------------------------------------- pin selection

def test_select_single_match_and_mismatch(pki):
    root, inter = pki["root"], pki["inter"]
    assert select_pinned([root.cert], root.sha256, "R", "f") is root.cert
    with pytest.raises(CAError) as err:
        select_pinned([inter.cert], root.sha256, "R", "/tmp/f.der")
    assert err.value.kind == "pin_mismatch"
    assert str(err.value) == (
        f"CA 'R': /tmp/f.der: SHA-256 fingerprint mismatch: expected {root.sha256_colon}, got {inter.sha256_colon}. "
        "The certificate was tampered with or replaced, or the pin is wrong: nothing was trusted. Check the pin "
        "against the value the CA publishes through a second channel."
    )


def test_select_in_bundle(pki):
    root, inter, twin = pki["root"], pki["inter"], pki["twin"]
    assert select_pinned([root.cert, inter.cert], inter.sha256, "I", "b") is inter.cert
    with pytest.raises(CAError) as err:
        select_pinned([root.cert, inter.cert], twin.sha256, "I", "b")
    assert "the file holds 2 certificates and none has the pinned SHA-256 fingerprint" in str(err.value)


# ----------------------------------------------------------------------------- CA-ness, validity

@pytest.mark.parametrize("who, problems", [
    ("root", []),
    ("inter", []),
    ("leaf", ["basicConstraints is CA:FALSE (an end-entity certificate, not a CA)",
              "keyUsage lacks keyCertSign (it may not sign certificates)"]),
    ("no_ku", ["keyUsage lacks keyCertSign (it may not sign certificates)"]),
])
def test_is_ca(pki, who, problems):
    assert check_is_ca(pki[who].cert) == (problems, [])


NOW = dt.datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize("nb, na, allow, problems, warnings", [
    ("2020-01-01", "2030-01-01", False, [], []),
    ("2010-08-25", "2020-08-25", False,
     ["expired on 2020-08-25T00:00:00Z (2106 days ago); set allow_expired: true for this CA only if holders still "
      "need it"], []),
    ("2010-08-25", "2020-08-25", True, [],
     ["CA 'X' EXPIRED on 2020-08-25 (2106 days ago) and is kept only because allow_expired is set: certificates it "
      "issued can still be recognised, but no new certificate can validly chain to it; remove it when no holder "
      "needs it any more."]),
    ("2027-01-01", "2037-01-01", False, ["not yet valid: valid from 2027-01-01T00:00:00Z (check the controller's "
                                         "clock)"], []),
    ("2027-01-01", "2037-01-01", True, [],
     ["CA 'X' is NOT YET VALID (valid from 2027-01-01T00:00:00Z), kept because allow_expired is set"]),
])
def test_validity_table(nb, na, allow, problems, warnings):
    ca = make_ca("X", not_before=dt.datetime.fromisoformat(nb).replace(tzinfo=UTC),
                 not_after=dt.datetime.fromisoformat(na).replace(tzinfo=UTC))
    assert check_validity(ca.cert, NOW, allow, "X") == (problems, warnings)


# ----------------------------------------------------------------------------- chain

@pytest.mark.parametrize("members, expect", [
    (["root"], {"root": ("root", "root", None)}),
    (["root", "inter"], {"root": ("root", "root", None), "inter": ("intermediate", "root", None)}),
    (["inter", "root"], {"root": ("root", "root", None), "inter": ("intermediate", "root", None)}),
    (["inter"], {"inter": ("intermediate", None, "its issuer 'CN=Unit Root CA,O=tokentrust lab,C=FR' is not among "
                                                 "the validated CAs of the set: add the issuer's certificate (pinned) "
                                                 "to the set, or fix the error reported for it")}),
    (["root", "forged"], {"root": ("root", "root", None),
                          "forged": ("intermediate", None, "not issued by any CA of the set with its issuer's name: "
                                                           "'root': signature does not verify with its key")}),
    # twin has root's subject but another key: the AKI of inter points at root's SKI, not twin's
    (["twin", "inter"], {"twin": ("root", "twin", None),
                         "inter": ("intermediate", None, "AKI")}),
    # both twins present: the right one is found by AKI/signature
    (["twin", "root", "inter", "twin_child"], {
        "twin": ("root", "twin", None), "root": ("root", "root", None),
        "inter": ("intermediate", "root", None), "twin_child": ("intermediate", "twin", None)}),
])
def test_chain_table(pki, members, expect):
    got = classify_and_chain([(m, pki[m].cert) for m in members])
    for name, (role, issuer_ca, problem) in expect.items():
        assert got[name]["role"] == role
        assert got[name]["issuer_ca"] == issuer_ca
        if problem == "AKI":
            assert got[name]["problem"].startswith(
                "not issued by any CA of the set with its issuer's name: authorityKeyIdentifier ")
            assert "does not match subjectKeyIdentifier" in got[name]["problem"] and "of 'twin'" in got[name]["problem"]
        else:
            assert got[name]["problem"] == problem


def _resign_sha1(child, issuer):
    """`child` re-signed by `issuer` (RSA-2048) with sha1WithRSAEncryption.

    cryptography no longer signs certificates with SHA-1, but CertEurope's real chain is sha1WithRSA, so
    the DER is patched: the sha256WithRSA OID becomes sha1WithRSA (same length, both places), then the TBS
    is signed again with the low-level RSA primitive.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    oid256, oid1 = bytes.fromhex("2a864886f70d01010b"), bytes.fromhex("2a864886f70d010105")
    der = child.der
    assert der.count(oid256) == 2
    patched = x509.load_der_x509_certificate(der.replace(oid256, oid1))
    sig = issuer.key.sign(patched.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    assert len(sig) == 256
    return x509.load_der_x509_certificate(der.replace(oid256, oid1)[:-256] + sig)


def test_sha1_rsa_signatures_verify():
    """cryptography's verify_directly_issued_by refuses SHA-1: our own verification must not."""
    root = make_ca("SHA1 Root", key_type="rsa")
    sub = _resign_sha1(make_ca("SHA1 Sub", issuer=root), root)
    assert sub.signature_hash_algorithm.name == "sha1"
    got = classify_and_chain([("r", root.cert), ("s", sub)])
    assert got["s"] == {"role": "intermediate", "issuer_ca": "r", "problem": None}
    # and a SHA-1 signature by another key is still refused
    other = make_ca("SHA1 Root", key_type="rsa", aki=False, ski=False)
    got = classify_and_chain([("o", other.cert), ("s", sub)])
    assert got["s"]["problem"] == ("not issued by any CA of the set with its issuer's name: 'o': signature does not "
                                   "verify with its key")


def test_sha1_intermediate_warns(tmp_path):
    root = make_ca("SHA1 Root", key_type="rsa")
    sub = _resign_sha1(make_ca("SHA1 Sub", issuer=root), root)
    from cryptography.hazmat.primitives import serialization as ser

    (tmp_path / "s.der").write_bytes(sub.public_bytes(ser.Encoding.DER))
    (tmp_path / "r.der").write_bytes(root.der)
    from cryptography.hazmat.primitives import hashes

    sub_pin = sub.fingerprint(hashes.SHA256()).hex()
    res = build_ca_set([{"name": "R", "sha256": root.sha256, "path": str(tmp_path / "r.der")},
                        {"name": "S", "sha256": sub_pin, "path": str(tmp_path / "s.der")}], str(tmp_path / "c"))
    assert res.errors == []
    assert res.cas[1]["warnings"] == [
        "CA 'S' is signed with SHA1, a broken hash: current browsers may refuse chains through it"]


# ----------------------------------------------------------------------------- the set (local paths only)

def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_set_result_and_fact_keys(pki, tmp_path):
    root, inter = pki["root"], pki["inter"]
    cas = [
        {"name": "Unit Root", "sha256": "sha256:" + root.sha256.lower(), "path": _write(tmp_path, "r.der", root.der)},
        {"name": "Unit Issuing", "sha256": inter.sha256_colon, "path": _write(tmp_path, "i.pem", inter.pem)},
    ]
    dest = str(tmp_path / "cache")
    res = build_ca_set(cas, dest, Options(root_nss_trust="CT,C,C"))
    assert res.errors == [] and res.warnings == []
    r, i = res.cas
    assert set(r) == FACT_KEYS and set(i) == FACT_KEYS
    assert (r["role"], r["nss_trust"], r["windows_store"]) == ("root", "CT,C,C", "Root")
    assert (i["role"], i["nss_trust"], i["windows_store"]) == ("intermediate", ",,", "CA")
    assert r["nickname"] == "Unit Root" and r["sha256"] == root.sha256 and r["sha1"] == root.sha1
    assert r["subject"] == "CN=Unit Root CA,O=tokentrust lab,C=FR" and i["issuer"] == r["subject"]
    assert int(r["serial"], 16) == root.cert.serial_number and len(r["serial"]) % 2 == 0
    assert r["not_after"] == root.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert r["expired"] is False and 3640 < r["days_left"] <= 3650
    assert r["pem"] == root.pem.decode()
    assert r["pem_path"] == os.path.join(dest, "unit_root.pem") and r["der_path"] == os.path.join(dest, "unit_root.der")
    assert res.writes == {r["pem_path"]: root.pem, r["der_path"]: root.der, i["pem_path"]: inter.pem,
                          i["der_path"]: inter.der}
    assert not os.path.exists(dest)  # planning writes nothing


def test_per_ca_trust_override(pki, tmp_path):
    res = build_ca_set([{"name": "R", "sha256": pki["root"].sha256, "path": _write(tmp_path, "r", pki["root"].pem),
                         "nss_trust": "CT,,"}], str(tmp_path / "c"))
    assert res.cas[0]["nss_trust"] == "CT,,"


PIN_HELP = (
    "Obtain the certificate, compute its fingerprint with 'openssl x509 -in FILE -noout -fingerprint -sha256', "
    "compare it with the value the CA publishes through a second channel (its website over HTTPS, its CPS, a "
    "signed letter), then set it as 'sha256' of this CA (ca_certificates_pins: {'%s': 'AA:BB:...'} or in "
    "ca_certificates_list)."
)


@pytest.mark.parametrize("cas, errors, kinds", [
    ([], ["the CA set is empty: give at least one CA (name, sha256, url or path)"], {"": "empty"}),
    ([{"name": "NoPin", "url": ["http://127.0.0.1:9/x"]}],
     ["CA 'NoPin' has no sha256 pin: an unpinned certificate is never trusted. " + PIN_HELP % "NoPin"],
     {"NoPin": "pin_missing"}),
    ([{"name": "Short", "sha256": "AB:CD", "path": "/x"}],
     ["CA 'Short': invalid sha256 pin: a SHA-256 fingerprint has 64 hex digits, got 4: 'AB:CD'"],
     {"Short": "pin_invalid"}),
    ([{"name": "A b", "sha256": HEX, "path": "/nonexistent"}, {"name": "a-B", "sha256": HEX, "path": "/x"}],
     ["CA 'A b': /nonexistent: cannot read: No such file or directory",
      "CA 'a-B': duplicate of CA 'A b' (same name or same cache file a_b.pem)"],
     {"A b": "read", "a-B": "duplicate"}),
    ([{"name": "T", "sha256": HEX, "path": "/x", "nss_trust": "bogus"}],
     ["CA 'T': nss_trust 'bogus' is not an NSS trust string like 'C,,'"], {"T": "bad_entry"}),
    ([{"name": "Nowhere", "sha256": HEX}], ["CA 'Nowhere': no 'url' or 'path' to get the certificate from"],
     {"Nowhere": "no_source"}),
    (["just a string"], ["CA entry #1 is not a dict: 'just a string'"], {"#1": "bad_entry"}),
])
def test_set_refusals(tmp_path, cas, errors, kinds):
    res = build_ca_set(cas, str(tmp_path))
    assert res.errors == errors
    assert res.error_kinds == kinds
    assert res.cas == [] and res.writes == {}


def test_offline_never_uses_urls(tmp_path):
    def no_network(url):
        raise AssertionError("network used offline: " + url)

    res = build_ca_set([{"name": "R", "sha256": HEX, "url": ["http://127.0.0.1:9/r.der"]}], str(tmp_path),
                       Options(offline=True), fetch=no_network)
    assert res.error_kinds == {"R": "offline"}


def test_identical_cache_means_no_writes(pki, tmp_path):
    root = pki["root"]
    (tmp_path / "r.pem").write_bytes(root.pem)
    (tmp_path / "r.der").write_bytes(root.der)
    res = build_ca_set([{"name": "R", "sha256": root.sha256, "url": "http://127.0.0.1:9/never"}], str(tmp_path),
                       fetch=lambda url: pytest.fail("cache ignored"))
    assert res.errors == [] and res.writes == {}
    (tmp_path / "r.der").write_bytes(b"garbage")
    res = build_ca_set([{"name": "R", "sha256": root.sha256, "url": "http://127.0.0.1:9/never"}], str(tmp_path),
                       fetch=lambda url: pytest.fail("cache ignored"))
    assert list(res.writes) == [str(tmp_path / "r.der")]


def test_bad_global_trust_option(tmp_path, pki):
    res = build_ca_set([{"name": "R", "sha256": pki["root"].sha256, "path": _write(tmp_path, "r", pki["root"].der)}],
                       str(tmp_path / "c"), Options(root_nss_trust="trusted"))
    assert res.errors == ["root_nss_trust 'trusted' is not an NSS trust string like 'C,,' or 'CT,C,C'"]


# ----------------------------------------------------------------------------- the built-in profile

def test_certeurope_profile_is_the_manuals_set():
    with open(os.path.join(ROOT_DIR, "roles", "ca_certificates", "vars", "main.yml")) as fh:
        profile = yaml.safe_load(fh)["__ca_certificates_profiles"]["certeurope"]
    assert [(c["name"], c["url"], c["sha256"] and normalize_pin(c["sha256"]), c.get("allow_expired", False))
            for c in profile] == [
        ("CertEurope Root CA", ["http://www.certeurope.fr/fichiers/certificats/certeurope_root_ca.crt"], "", False),
        ("Certeurope Root CA 2", ["http://www.certeurope.fr/reference/certeurope_root_ca_2.cer"], HEX, False),
        ("CertEurope Advanced CA V3", ["http://www.certeurope.fr/reference/certeurope_advanced_v3.cer"],
         "32CF1BC04CE23B7638CAACF7B8E0F487DE7C434F82EC4EB07EF1DC9DFBFBE24B", True),
        ("AC CertEurope Classe 3 Plus V2", ["http://www.certeurope.fr/certificats2009/ac_certeurope_3P_v2.crt"], "",
         False),
    ]
    assert "expired on 2020-08-25" in profile[2]["note"]
