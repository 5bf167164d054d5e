#!/usr/bin/python
# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: ca_bundle
short_description: Fetch, pin-check and validate a set of CA certificates on the controller
version_added: "1.0.0"
description:
  - Gets every CA certificate of a set from a cache directory, a local file or one of several URLs (tried in
    order), checks its SHA-256 fingerprint against a pin, checks that it is a CA (basicConstraints CA:TRUE,
    keyUsage keyCertSign), that it is within its validity period, and that every intermediate is issued by
    another CA of the set (issuer name, authority/subject key identifiers, signature).
  - Accepts DER, PEM and PKCS#7 (C(.p7b), C(.p7c), DER or PEM) files. A file with several certificates is
    accepted only when one of them has the pinned fingerprint; that one is used.
  - The pin is checked on the certificate, not on the file, so a PEM and a DER copy have the same pin.
  - Plain HTTP is allowed only because the pin authenticates the content. HTTPS servers are verified by
    default (O(validate_certs)), optionally against O(ca_path).
  - Writes a normalised PEM and DER copy of each CA in O(dest) and returns the validated set, which the
    C(ca_certificates) role publishes as the C(tokentrust_ca_set) fact.
  - Any refusal (no pin, pin mismatch, download error, not a CA, expired, broken chain) fails the module with
    one message per CA naming the CA and the URL or path, after every CA has been examined.
  - "Meant to run on the controller (C(delegate_to: localhost), C(run_once: true))."
author:
  - tokentrust contributors (!UNKNOWN)
requirements:
  - cryptography >= 41
options:
  cas:
    description: The CA set, in any order.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Unique name; also the NSS nickname and the cache file name (slugified).
        type: str
        required: true
      sha256:
        description:
          - SHA-256 fingerprint of the certificate. Colons, spaces, case and a C(sha256:) prefix are ignored.
          - Required; a CA without a pin is refused.
        type: str
      url:
        description: One URL or a list of URLs (http or https), tried in order until one serves the pinned certificate.
        type: list
        elements: str
      path:
        description: A local file on the controller, tried before the URLs.
        type: path
      allow_expired:
        description: Accept this CA when it is expired or not yet valid, with a warning instead of an error.
        type: bool
        default: false
      nss_trust:
        description: NSS trust flags for this CA, overriding O(root_nss_trust) / O(intermediate_nss_trust).
        type: str
      note:
        description: Free text shown with this CA's warnings.
        type: str
  dest:
    description: Cache directory on the controller for the normalised C(<name>.pem) and C(<name>.der) copies.
    type: path
    required: true
  root_nss_trust:
    description: NSS trust flags given to roots (C,, = trusted to issue TLS server certificates).
    type: str
    default: "C,,"
  intermediate_nss_trust:
    description: NSS trust flags given to intermediates (no trust of their own, they chain to a root).
    type: str
    default: ",,"
  timeout:
    description: Seconds allowed for each HTTP connection and read.
    type: float
    default: 20
  max_size:
    description: Largest accepted download, in bytes.
    type: int
    default: 262144
  max_redirects:
    description: Most HTTP redirects followed per URL.
    type: int
    default: 5
  validate_certs:
    description: Verify HTTPS server certificates. Turning it off leaves only the pins as protection.
    type: bool
    default: true
  ca_path:
    description: PEM bundle used instead of the system trust store to verify HTTPS servers.
    type: path
  offline:
    description: Never use the network; each CA must come from the cache (pin matching) or O(cas[].path).
    type: bool
    default: false
  refresh:
    description: Ignore the cache and get every CA again from its path or URLs.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    details: Downloads and checks everything, writes nothing.
  diff_mode:
    support: full
    details: Shows the cached fingerprints before and after.
notes:
  - A valid cached copy whose fingerprint matches the pin is used without any network access, so a second
    run reports no change and works offline.
  - A pin mismatch on any source is fatal at once (the other URLs are not tried), because either the pin is
    wrong or the source is compromised, and a human has to look.
  - How the CA set works and how an admin obtains and checks a pin is explained in docs/ca-certificates.md.
"""

EXAMPLES = r"""
- name: Fetch and validate the CertEurope chain
  ca_bundle:
    dest: "{{ playbook_dir }}/../.cache/ca"
    cas:
      - name: Certeurope Root CA 2
        sha256: "42:14:3A:51:1A:3A:FC:DD:80:D5:55:DE:BB:41:91:EC:6B:B2:85:EE:66:E6:2E:C6:57:ED:20:AD:F7:D5:5F:AA"
        url: http://www.certeurope.fr/reference/certeurope_root_ca_2.cer
      - name: CertEurope Advanced CA V3
        sha256: "sha256:32cf1bc04ce23b7638caacf7b8e0f487de7c434f82ec4eb07ef1dc9dfbfbe24b"
        url:
          - http://www.certeurope.fr/reference/certeurope_advanced_v3.cer
          - https://mirror.example.org/ca/certeurope_advanced_v3.cer
        allow_expired: true
  delegate_to: localhost
  run_once: true
  register: ca_set

- name: Offline, from local copies
  ca_bundle:
    dest: /srv/tokentrust/ca
    offline: true
    cas:
      - name: Corporate Root
        sha256: 0A1B...  # 64 hex digits
        path: /srv/pki/corporate_root.p7b
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
cas:
  description: The validated set, in the order given.
  returned: success
  type: list
  elements: dict
  contains:
    name: {description: The CA name., type: str, sample: Certeurope Root CA 2}
    nickname: {description: NSS nickname (the name)., type: str}
    subject: {description: "Subject, RFC 4514.", type: str, sample: "CN=Certeurope Root CA 2,O=Certeurope,C=FR"}
    issuer: {description: "Issuer, RFC 4514.", type: str}
    serial: {description: "Serial number, upper-case hex.", type: str, sample: "7119"}
    not_before: {description: "Start of validity, ISO 8601 UTC.", type: str, sample: "2007-03-27T22:00:00Z"}
    not_after: {description: "End of validity, ISO 8601 UTC.", type: str, sample: "2037-03-27T23:00:00Z"}
    days_left: {description: Whole days until not_after (negative once expired)., type: int}
    expired: {description: Whether not_after is past., type: bool}
    sha1: {description: "SHA-1 fingerprint (the Windows thumbprint), upper-case hex without colons.", type: str}
    sha256: {description: "SHA-256 fingerprint, upper-case hex without colons.", type: str}
    role: {description: "C(root) (self-signed) or C(intermediate).", type: str}
    nss_trust: {description: NSS trust flags to use., type: str, sample: "C,,"}
    windows_store: {description: "Windows LocalMachine store: C(Root) or C(CA).", type: str}
    pem: {description: The certificate in PEM., type: str}
    pem_path: {description: Normalised PEM copy on the controller., type: str}
    der_path: {description: Normalised DER copy on the controller., type: str}
    warnings:
      description: Warnings about this CA (expired but allowed, weak signature...).
      type: list
      elements: str
sources:
  description: Where each CA came from (C(cache:<path>), a path or a URL).
  returned: always
  type: dict
errors:
  description: One message per refused CA.
  returned: failure
  type: list
  elements: str
error_kinds:
  description: CA name -> kind of refusal (pin_missing, pin_mismatch, http_status, timeout, truncated, too_large,
    html, format, tls, redirect_loop, too_many_redirects, not_ca, expired, not_yet_valid, chain, offline...).
  returned: failure
  type: dict
written:
  description: Files written (or that would be, in check mode).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_ca import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    DEFAULT_MAX_REDIRECTS,
    DEFAULT_MAX_SIZE,
    HAS_CRYPTOGRAPHY,
    CAError,
    Options,
    build_ca_set,
    fingerprint,
    parse_certificates,
)
from ansible.module_utils.tokentrust_errors import fail, require
from ansible.module_utils.tokentrust_facts import ca_file_name
from ansible.module_utils.tokentrust_files import WriteError, set_attributes, with_attributes_diff, write_file

CA_SPEC = dict(
    name=dict(type="str", required=True),
    sha256=dict(type="str"),
    url=dict(type="list", elements="str"),
    path=dict(type="path"),
    allow_expired=dict(type="bool", default=False),
    nss_trust=dict(type="str"),
    note=dict(type="str"),
)


def _cached_listing(dest, names):
    """'<file>.pem: <sha256 of the cached certificate>' per CA, as the cache is now."""
    lines = []
    for name in names:
        path = os.path.join(dest, ca_file_name(name))
        try:
            with open(path, "rb") as fh:
                state = ",".join(fingerprint(c) for c in parse_certificates(fh.read())[0])
        except OSError:
            state = "absent"
        except ValueError:
            state = "unreadable"
        lines.append(f"{os.path.basename(path)}: {state}")
    return "\n".join(lines) + "\n"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            cas=dict(type="list", elements="dict", required=True, options=CA_SPEC),
            dest=dict(type="path", required=True),
            root_nss_trust=dict(type="str", default="C,,"),
            intermediate_nss_trust=dict(type="str", default=",,"),
            timeout=dict(type="float", default=20),
            max_size=dict(type="int", default=DEFAULT_MAX_SIZE),
            max_redirects=dict(type="int", default=DEFAULT_MAX_REDIRECTS),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            offline=dict(type="bool", default=False),
            refresh=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    require(module, None if HAS_CRYPTOGRAPHY else str(CRYPTOGRAPHY_IMPORT_ERROR), "cryptography")
    p = module.params
    dest = os.path.normpath(os.path.abspath(p["dest"]))
    if p["ca_path"] and not os.path.isfile(p["ca_path"]):
        fail(module, CAError("input", f"ca_path {p['ca_path']} is not a readable file (a PEM bundle of HTTPS issuers)"))
    opts = Options(
        root_nss_trust=p["root_nss_trust"], intermediate_nss_trust=p["intermediate_nss_trust"],
        timeout=p["timeout"], max_size=p["max_size"], max_redirects=p["max_redirects"],
        validate_certs=p["validate_certs"], ca_path=p["ca_path"], offline=p["offline"], refresh=p["refresh"],
    )
    names = [ca["name"] for ca in p["cas"]]
    before = _cached_listing(dest, names)
    try:
        res = build_ca_set(p["cas"], dest, opts)
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, exc)
    for w in res.warnings:
        module.warn(w)
    if res.failed:
        n = len(res.errors)
        module.fail_json(
            msg=f"{n} CA certificate{'s' if n > 1 else ''} refused, nothing was trusted: " + " | ".join(res.errors),
            errors=res.errors, error_kinds=res.error_kinds, sources=res.sources, written=[],
        )
    written = sorted(res.writes)
    changed = not os.path.isdir(dest)
    after = "".join(f"{ca_file_name(c['name'])}: {c['sha256']}\n" for c in res.cas)
    diff = dict(before=before, after=after, before_header=dest, after_header=dest)
    writes = []
    try:
        if changed and not module.check_mode:
            os.makedirs(dest, mode=0o755, exist_ok=True)
        # every file of the set: the content where it changed, the file attributes (mode, owner...) on all
        for path in sorted({c[k] for c in res.cas for k in ("pem_path", "der_path")} | set(written)):
            w = write_file(module, path, res.writes[path]) if path in res.writes else set_attributes(module, path)
            changed = changed or w["changed"]
            writes.append((path, w))
    except OSError as exc:
        fail(module, WriteError(exc.filename or dest, exc, hint=f"the CA cache is {dest}"))
    module.exit_json(changed=changed, cas=res.cas, sources=res.sources, written=written,
                     diff=with_attributes_diff(diff, writes))


if __name__ == "__main__":
    main()
