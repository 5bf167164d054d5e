#!/usr/bin/python
# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pkcs11_token_login
short_description: Test login with the qualified-certificate USB key (PKCS#11 login + TLS client authentication)
version_added: "1.0.0"
description:
  - Does what the manual's "TEST DE BON FONCTIONNEMENT" asks of a user, as one command and in-process through
    NSS (no browser, no shell-out) on the host the key is plugged into.
  - Loads the PKCS#11 module of the token middleware (by default the Gemalto / Thales Classic Client library of
    the host's OS), finds the token (by O(token_label), or the only one present) and reads its flags.
  - B(Never burns the last PIN attempt). When the token says the next wrong PIN locks it
    (C(CKF_USER_PIN_FINAL_TRY)) the PIN is not presented unless O(allow_final_try=true); when it is locked
    (C(CKF_USER_PIN_LOCKED)) it is never presented. A count-low flag gives a warning.
  - Logs in once. NSS's password callback hands the PIN over a single time and refuses every retry, so a wrong
    PIN costs exactly one attempt. The PIN is never returned nor logged.
  - Lists the certificates that have their private key on the token (subject, issuer, serial, expiry, days
    left, key usage) and checks that each chains to the CA set (O(ca_set), the C(tokentrust_ca_set) fact).
  - Performs a real TLS handshake with client-certificate authentication to O(url) with the key on the
    token, through NSS's libssl3 and NSPR sockets, and returns the HTTP status and the start of the page, and
    whether the page shows the holder's name.
  - B(The login passes only when) the PIN was accepted, the chosen certificate is valid and chains to the CA set,
    the server B(asked for a client certificate), the token's certificate B(was sent and accepted) (the
    handshake completed with it) and the page answered HTTP 200. A server that never asks for a client
    certificate is the failure C(no_client_auth), since such a login proves nothing about the key. Only the
    certificate used decides. A page that says the certificate is not valid ("n'est pas valide") is a problem.
  - Every input (URL scheme, host and port 1-65535, certificate selector, timeouts) is checked B(before the key is
    touched), so a bad input presents no PIN.
  - B(A pre-flight handshake without the key) comes before the PIN is presented (not in check mode). The server
    must be reachable, trusted and valid for the URL's host name, and must ask for a client certificate. When its
    CertificateRequest names acceptable CAs, one of them must be a CA above the certificate to log in with (else the
    failure C(client_ca_not_accepted), since such a server cannot really accept the key whatever it answers). The same
    request is then sent B(with no client certificate) (the negative control); a server that answers it with HTTP
    2xx does not need the key, the failure C(client_cert_optional). A server that asks only after a TLS 1.3 handshake
    (post-handshake authentication, which Firefox does not offer) is C(post_handshake_auth_only). Then the same
    request B(with a throwaway self-signed client certificate) made on the spot (second negative control, no PIN);
    a server that answers it with a success accepts any certificate, the failure C(server_accepts_any_certificate).
    Each of these failures spends no PIN try. What the pre-flight saw is returned in C(preflight).
  - B(No PIN try on a login that cannot pass.) The key holding no certificate (C(no_certificate)), none valid now,
    for client authentication and in the CA set (C(no_usable_certificate)), a selected certificate that is not
    usable (C(certificate_not_usable)) or none under a CA the server names (C(client_ca_not_accepted)) stop the
    login before the PIN. The certificate is chosen among those the server's acceptable-CA list names, then by days
    left (C(certificate_choice) says which and why); another expired certificate on the key is a warning.
  - The PIN is presented from inside the login's own handshake, when the server asks for the certificate there; a
    server that stops asking after the pre-flight never gets it (C(no_client_auth), no try spent).
  - The PIN guard holds an exclusive lock per token (keyed by the token's serial; C(fcntl.flock) on a file in
    C(/run/tokentrust) for root, else a private temporary directory) from reading the PIN counter to the end of
    the login, so parallel runs (several hosts sharing one key, two playbooks at once) never present a PIN that
    one run alone would not. With O(run_id), a run whose PIN this token already refused does not present it again.
  - The server is verified against NSS's built-in roots (O(builtin_roots)), the CAs in O(server_ca), and the CAs
    of O(ca_set) whose C(nss_trust) trusts them for TLS servers (as the C(ca_certificates) role gives roots to
    Firefox, C(C,,)), host name included; so the page is trusted exactly as the provisioned browser trusts it.
  - The key's state, as users meet it, is said with what to do (C(error.card_state) and C(error.todo)) - pcscd missing
    or not running, no reader, a reader without a key, the key pulled out during the login, several keys (never a
    guess - the one labelled O(token_label) is used and a warning says which, in which reader; without a label that
    tells them apart nothing is presented), not the holder's key, PIN at its final try, PIN blocked, PIN and PUK
    blocked.
  - "In check mode nothing is presented to the token: the module finds the token, reads its PIN state (and
    says whether a login would be refused), lists its certificates and checks them against the CA set."
author:
  - tokentrust contributors (!UNKNOWN)
requirements:
  - NSS (libnss3, libssl3, libnspr4) on the host
  - cffi and cryptography >= 38 (Debian 12's python3-cryptography) on the host's Python
options:
  pin:
    description:
      - The user PIN. From Ansible Vault or a prompt. Never returned nor logged.
      - Required unless in check mode.
    type: str
  allow_final_try:
    description:
      - Present the PIN even when the token says the next wrong PIN locks it. Only after checking the PIN with
        its holder.
    type: bool
    default: false
  ca_set:
    description:
      - The CA set (the C(tokentrust_ca_set) fact of the C(ca_certificates) role), a list of dicts with at least
        C(name) and C(pem). Every certificate with a key on the token must chain to a root of this set.
      - When omitted, the chain is not checked.
    type: list
    elements: raw
  url:
    description:
      - The test page. An empty string skips the TLS step.
    type: str
    default: https://services.certeurope.fr/
  server_ca:
    description:
      - CA certificates trusted to identify the test page server, each a PEM text or a path on the host.
    type: list
    elements: str
    default: []
  builtin_roots:
    description:
      - Also trust NSS's built-in root CAs (libnssckbi) for the server, as Firefox does.
    type: bool
    default: true
  certificate:
    description:
      - Which certificate of the token to log in with, by SHA-256 fingerprint (64 hex digits, colons allowed),
        label or holder name, matched B(exactly) (no substring). Several matching certificates are the error
        C(certificate_ambiguous) (choose by SHA-256), none is C(certificate_not_found); both are found before
        the PIN is presented. Default, the usable certificate (valid, client authentication, in the CA set, under a
        CA the server names) with the most days left. A chosen certificate that is not usable is the error
        C(certificate_not_usable), before the PIN (with no URL it is tried anyway, with a warning).
    type: str
  timeout:
    description: Seconds for the TCP connection, the TLS handshake and each read (each bounded by O(deadline) too).
    type: int
    default: 20
  deadline:
    description:
      - Seconds for the whole TLS step (the pre-flight, the negative controls and the login's connection, each
        connect, handshake, request and answer together; waiting for the key's lock not counted). A server that
        trickles its answer is stopped there, with the error C(timeout), and the key's lock is released. 1 to 600.
    type: int
    default: 60
  body_bytes:
    description: How many characters of the page to return in C(tls.body_start).
    type: int
    default: 1024
  min_days_left:
    description: Warn when a certificate expires in fewer days than this.
    type: int
    default: 30
  tls_max_version:
    description: Highest TLS version offered (default, what NSS supports).
    type: str
    choices: ['1.2', '1.3']
  run_id:
    description:
      - An identifier of the playbook run (the C(token_verify) role passes one per play). When this run already
        had its PIN refused by the same token (hosts sharing one key), the PIN is not presented again (error
        C(wrong_pin_this_run)).
    type: str
  fail_on_error:
    description:
      - Fail the task when the login, a certificate check or the test page fails. With V(false) the module always
        returns its report (C(ok) false, C(error), C(problems)) so that a fleet report can be built; the
        C(token_verify) role asserts afterwards.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common
  - tokentrust_common.token
attributes:
  check_mode:
    support: full
    details: No PIN is presented and no TLS connection is made in check mode (not even the pre-flight).
  diff_mode:
    support: none
notes:
  - NSS and the token's PKCS#11 module are per process; every run of the module opens a throw-away NSS database
    in a temporary directory and removes it.
  - The CAs of the set are imported into that temporary database without trust, so that NSS sends the
    intermediate certificates with the client certificate.
seealso:
  - module: pkcs11_pin
"""

EXAMPLES = r"""
- name: Test login with the key (PIN from the vault)
  pkcs11_token_login:
    pin: "{{ token_verify_pin }}"
    ca_set: "{{ tokentrust_ca_set }}"
  no_log: false
  register: login

- name: Lab token and test page, explicit module and server CA
  pkcs11_token_login:
    module: /var/lib/tokentrust-lab/token/libpin_guard.so
    token_label: CERTEUROPE LAB
    pin: "{{ token_verify_pin }}"
    ca_set: "{{ tokentrust_ca_set }}"
    url: https://127.0.0.1:8443/
    server_ca: [/var/lib/tokentrust-lab/testpage/tls-ca.pem]
    fail_on_error: false
  register: login
"""

RETURN = r"""
ok:
  description: True when the login, every certificate check and the test page passed.
  returned: always
  type: bool
error:
  description: What stopped the test (kind, message, nss_error; card_state and todo when the key's state explains it,
    one of pcscd_missing, pcscd_not_running, no_reader, no_card, card_pulled (the key was pulled out during the login),
    several_cards, other_card, pin_final_try, pin_locked, puk_locked (PIN and PUK blocked; a PUK the key refused
    as blocked is remembered on the host, since a PIV card cannot tell it without a presentation), each with its
    plain "what to do" in C(todo)). C(kind) is one of module_missing, module_load,
    no_token, several_tokens, token_not_found, pin_locked, pin_final_try, wrong_pin, login, ca_set, url, resolve,
    connect, timeout, server_untrusted, client_cert_rejected, client_cert_required, handshake, http, nss,
    no_client_auth (the server did not ask for a client certificate), client_ca_not_accepted (the server's acceptable
    CA names exclude the key's chain), client_cert_optional (the server answered 2xx with no client certificate),
    server_name_mismatch (the server certificate is not for the URL's host), client_cert_not_sent, page_status (not
    HTTP 200; a redirection gives its Location), certificate_ambiguous, certificate_not_found, input, lock,
    wrong_pin_this_run, server_accepts_any_certificate (a throwaway self-signed certificate got a success),
    post_handshake_auth_only, no_certificate, no_usable_certificate, certificate_not_usable. The kinds found by the
    pre-flight (resolve, connect, timeout, server_untrusted,
    server_name_mismatch, no_client_auth, client_ca_not_accepted, client_cert_optional) come before the PIN. Also
    card_pulled and puk_locked.
  returned: always
  type: dict
  sample: {"kind": "pin_final_try", "message": "the token 'CERTEUROPE LAB' says the next wrong PIN locks it..."}
problems:
  description: Certificate or page problems found (expired, not in the CA set, HTTP status not 200).
  returned: always
  type: list
  elements: str
token:
  description: The token after the call (label, serial, manufacturer, model, flags, user_pin and so_pin states
    C(ok)/C(count_low)/C(final_try)/C(locked), PIN length bounds).
  returned: when a token was found
  type: dict
pkcs11_module:
  description: The PKCS#11 library used.
  returned: always
  type: str
pin_state_before:
  description: The user PIN state read before anything was presented.
  returned: when a token was found
  type: str
pin_attempts:
  description: How many times the PIN was presented to the token by this run (0 or 1).
  returned: always
  type: int
logged_in:
  description: Whether the login succeeded.
  returned: always
  type: bool
certificates:
  description: Certificates with their private key on the token (holder, subject, issuer, serial, not_before,
    not_after, days_left, expired, key_usage, extended_key_usage, client_auth, sha256, nickname, has_key,
    in_ca_set, chain, problem, usable).
  returned: always
  type: list
  elements: dict
login_certificate:
  description: The certificate used for the TLS login.
  returned: always
  type: dict
holder:
  description: Holder name (common name) of the login certificate.
  returned: always
  type: str
  sample: JEAN DUPONT
not_after:
  description: Expiry of the login certificate (UTC, ISO 8601).
  returned: always
  type: str
days_left:
  description: Days before the login certificate expires.
  returned: always
  type: int
checked_at:
  description: When the test ran (UTC, ISO 8601).
  returned: always
  type: str
  sample: "2026-11-26T02:30:00Z"
url:
  description: The test page (null when the TLS step was skipped).
  returned: always
  type: str
client_cert_requested:
  description: Whether the server asked for a client certificate (null when no handshake was made).
  returned: always
  type: bool
client_cert_sent:
  description: SHA-256 of the client certificate sent from the token (null when none was sent).
  returned: always
  type: str
client_cert_accepted:
  description: True when the handshake completed with the token's certificate and the page answered 200; false
    when the server refused it; null when not tried.
  returned: always
  type: bool
tokens_present:
  description: The keys plugged in (label, reader) when the module was loaded. With several, the one used is the one
    labelled O(token_label) (a warning says which, in which reader); without a label that tells them apart the login
    stops before any PIN (C(several_tokens), card state C(several_cards)).
  returned: when a token was found
  type: list
  elements: dict
seconds:
  description: How long the test login took on the host (loading the library to the end of the TLS step), in seconds.
  returned: always
  type: float
preflight:
  description: The handshake made without the key before the PIN (null when not made - check mode, no URL, or a
    failure before it). url, tls_version, server_certificate, client_cert_requested, acceptable_cas (the CA names
    of the CertificateRequest, as text; empty when the server names none), acceptable_cas_der (hex),
    without_client_cert (accepted, status, location, refused - the TLS error by which the server refused a
    request with no certificate), post_handshake_only, with_throwaway_certificate (the same fields for the
    throwaway self-signed certificate).
  returned: always
  type: dict
certificate_choice:
  description: Which certificate the TLS login used and why (sha256, holder, issuer, why, set_aside - the others,
    each with why not); null when no TLS login was chosen.
  returned: always
  type: dict
tls:
  description: The TLS login (url, status, reason, location, content_type, body_start, http_framing, tls_version,
    cipher_suite, client_cert_requested, client_cert_sent, client_cert_accepted, server_certificate, page with
    holder_found, says_valid, says_not_valid, expiry).
  returned: when the handshake was made
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import TokentrustError, exit_report, fail, require
from ansible.module_utils.tokentrust_options import TOKEN_OPTIONS
from ansible.module_utils.tokentrust_privsep import read_bounded

try:
    from ansible.module_utils.tokentrust_login import verify_token
    from ansible.module_utils.tokentrust_nss import CFFI_IMPORT_ERROR
    from ansible.module_utils.tokentrust_nss.token import default_module

    IMPORT_ERROR = CFFI_IMPORT_ERROR  # None when cffi imports (the guard of tokentrust_nss)
except ImportError:
    IMPORT_ERROR = traceback.format_exc()


def _server_cas(module, items):
    out = []
    for i, item in enumerate(items):
        if item.lstrip().startswith("-----BEGIN"):
            out.append(item.encode())
            continue
        try:  # a regular file of at most 1 MiB, opened without blocking (never /dev/zero or a FIFO)
            out.append(read_bounded(item, "server_ca[%d]" % i))
        except OSError as exc:
            fail(module, TokentrustError("input", "server_ca[%d]: cannot read %s on the host: %s"
                                         % (i, item, exc.strerror)))
        except ValueError as exc:
            fail(module, TokentrustError("input", str(exc)))
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            TOKEN_OPTIONS,
            ca_set=dict(type="list", elements="raw"),
            url=dict(type="str", default="https://services.certeurope.fr/"),
            server_ca=dict(type="list", elements="str", default=[]),
            builtin_roots=dict(type="bool", default=True),
            certificate=dict(type="str"),
            timeout=dict(type="int", default=20),
            deadline=dict(type="int", default=60),
            body_bytes=dict(type="int", default=1024),
            min_days_left=dict(type="int", default=30),
            tls_max_version=dict(type="str", choices=["1.2", "1.3"]),
            run_id=dict(type="str"),
            fail_on_error=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    require(module, IMPORT_ERROR, "cffi and NSS (libnss3)")
    p = module.params
    if not p["pin"] and not module.check_mode:
        fail(module, TokentrustError("input", "pin is required (from the vault variable or a prompt); nothing was "
                                     "presented to the token"))
    path = p["module"] or default_module()  # type=path: ~ and $VARS already expanded by AnsibleModule
    try:
        rep = verify_token(
            path, p["pin"], label=p["token_label"], ca_set=p["ca_set"], url=p["url"],
            server_ca_pems=_server_cas(module, p["server_ca"]), builtin_roots=p["builtin_roots"],
            allow_final_try=p["allow_final_try"], certificate=p["certificate"], tls=bool(p["url"]),
            timeout=p["timeout"], deadline=p["deadline"], body_bytes=p["body_bytes"], min_days_left=p["min_days_left"],
            check_mode=module.check_mode, tls_max=p["tls_max_version"], run_id=p["run_id"],
        )
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, exc)
    exit_report(module, rep, fail_on_error=p["fail_on_error"], problems_label="test login found problems",
                changed=False)


if __name__ == "__main__":
    main()
