"""The lab's CertEurope stand-in CA set, in the shape the NSS modules take (name, pem, sha256, nss_trust)."""
from lab.pki import certeurope_standin


def standin_ca_set():
    out = []
    for name, c in certeurope_standin().items():
        root = c.cert.issuer == c.cert.subject
        out.append({"name": name, "pem": c.pem.decode(), "sha256": c.sha256, "nss_trust": "C,," if root else ",,"})
    return out
