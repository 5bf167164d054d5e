# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""What to do, in plain words, for each state of the key and each refusal of the test login or of a PIN action.

Every line names the variables of the playbook that was run: `playbook` is "verify" (playbooks/verify.yml, role
token_verify, module pkcs11_token_login) or "pin" (playbooks/token_pin.yml, module pkcs11_pin).

    error = advise(error_dict, "pin")      # adds card_state and todo when the key's state or the kind explains it
"""
from __future__ import annotations

import os
import socket

from ansible.module_utils.tokentrust_nss.token import PCSCD_PATHS, PCSCD_SOCKET

PLAYBOOKS = {
    "verify": {"playbook": "verify.yml", "label": "token_verify_token_label", "final": "token_verify_allow_final_try",
               "url": "token_verify_url", "certificate": "token_verify_certificate", "ca": "token_verify_ca_set",
               "deadline": "token_verify_deadline"},
    "pin": {"playbook": "token_pin.yml", "label": "token_pin_token_label", "final": "token_pin_allow_final_try",
            "url": "-", "certificate": "-", "ca": "-", "deadline": "-"},
}

_CARD_STATES = {
    "pcscd_missing": "install pcscd: run site.yml with the middleware (tokentrust_token_middleware_linux: true, role "
                     "token_middleware_linux) or `apt-get install pcscd`, then run {playbook} again",
    "pcscd_not_running": "start it (`systemctl start pcscd.socket`, or `service pcscd start`), then run {playbook} "
                         "again",
    "no_reader": "plug in the card reader (or the USB key), check it with `opensc-tool --list-readers`, then run "
                 "{playbook} again",
    "no_card": "insert the key into the reader, then run {playbook} again (nothing needs to be provisioned again)",
    "card_pulled": "put the key back, leave it in until {playbook} says OK, then run it again (pulling it out changed "
                   "nothing on the key)",
    "several_cards": "remove every key but the holder's, or set {label} to the label of the holder's key; no PIN was "
                     "presented to either",
    "other_card": "plug in the holder's key (the label set in {label}), or correct that label; no PIN was presented",
    "pin_final_try": "check the PIN with the key's holder, then run {playbook} again with {final}=true (one attempt)",
    "pin_locked": "unblock the PIN with the PUK: playbooks/token_pin.yml (-e token_pin_action=unblock, or the PUK "
                  "and a new PIN from a vault file), then run {playbook} again; the PIN was not presented",
    "puk_locked": "the PIN and the PUK are both blocked: this key cannot be unblocked any more. Ask the CA for a new "
                  "key (and have this one revoked); nothing was presented",
}
# the PUK blocked while the PIN is not (token_pin.yml's unblock): say what is blocked, and only that
PUK_ONLY_LOCKED = ("the PUK is blocked; the PIN itself is not blocked and still works (keep using it, and check it "
                   "before every try: once it is blocked too, nothing can unblock it). A blocked PUK cannot be "
                   "unblocked: ask the CA for a new key before then; the PUK was not presented")
PUK_FINAL_TRY = ("check the PUK with the CA's letter, then run token_pin.yml again with token_pin_allow_final_try=true "
                 "(one attempt): a wrong PUK now blocks it for good")

# error kinds that are card states of their own (the others get a state only when the card explains them)
_KIND_STATES = {"several_tokens": "several_cards", "token_not_found": "other_card", "pin_final_try": "pin_final_try",
                "pin_locked": "pin_locked", "puk_locked": "puk_locked", "card_pulled": "card_pulled"}

# the test login's refusals (verify.yml): kind -> what to do
_LOGIN_TODO = {
    "server_accepts_any_certificate": "tell the owner of the test page ({url}) that it accepts ANY client certificate "
                                      "(a self-signed one made on the spot got a success): it must verify client "
                                      "certificates against the CA (openssl: -verify_return_error; nginx: "
                                      "ssl_verify_client on; Apache: SSLVerifyClient require). Until then a login "
                                      "there proves nothing: set {url} to the CA's real test page",
    "client_cert_optional": "the page at {url} answers without any certificate: set {url} to the CA's test page that "
                            "requires one, or ask its owner to require client certificates",
    "no_client_auth": "set {url} to the CA's test page (one that asks for a client certificate), not a page behind a "
                      "proxy that ends TLS",
    "post_handshake_auth_only": "ask the owner of the test page ({url}) to request the client certificate in the TLS "
                                "handshake (Firefox does not do TLS 1.3 post-handshake authentication), or set {url} "
                                "to a page that does",
    "client_ca_not_accepted": "check {url} (the server does not name the key's CA) and {ca}; or the key holds no "
                              "certificate of the CA that page is for: ask the CA",
    "no_certificate": "the key holds no certificate: have the CA write (or renew) the holder's certificate onto it",
    "no_usable_certificate": "renew the certificate with the CA (or put the renewed one on the key), or check {ca}; "
                             "no PIN was presented",
    "certificate_not_usable": "choose a valid certificate in {certificate}, or leave it unset; no PIN was presented",
    "timeout": "check that {url} answers (a slow or stalled server); raise {deadline} if it is just slow",
}


def card_states(playbook="verify"):
    """The state -> what-to-do table for `playbook`."""
    names = PLAYBOOKS[playbook]
    return {state: text.format(**names) for state, text in _CARD_STATES.items()}


CARD_STATES = card_states("verify")


def card_state(slot_count, socket_path=PCSCD_SOCKET, pcscd_paths=PCSCD_PATHS, pcsc=True, playbook="verify"):
    """Why no token is there, as a user meets it: (state, what to do). A smart-card middleware (OpenSC, vendor
    libraries) shows one slot per reader that pcscd reports, so no slot at all means no pcscd or no reader.
    `pcsc` False (a library that does not use PC/SC, e.g. SoftHSM2): no reader diagnosis."""
    texts = card_states(playbook)
    if pcsc is False:
        return ("no_token", "plug in the key (and check the reader), then run %s again"
                % PLAYBOOKS[playbook]["playbook"])
    if slot_count:
        return ("no_card", "the reader is there but holds no card: " + texts["no_card"])
    if not any(os.path.exists(p) for p in pcscd_paths):
        return ("pcscd_missing", "pcscd (the PC/SC daemon) is not installed: " + texts["pcscd_missing"])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(socket_path)
    except OSError:
        return ("pcscd_not_running", "pcscd is installed but not running (no %s): %s"
                % (socket_path, texts["pcscd_not_running"]))
    finally:
        s.close()
    return ("no_reader", "pcscd runs but sees no card reader: " + texts["no_reader"])


def card_state_of(error, playbook="verify"):
    """`error` (a TokenError's dict) with `card_state` and `todo` when the card's state explains it, or `todo` when
    the kind has advice of its own; unchanged otherwise."""
    if not isinstance(error, dict):
        return error
    if error.get("kind") == "no_token" and "slot_count" in error and not error.get("card_state"):
        state, todo = card_state(error.pop("slot_count"), pcsc=error.pop("pcsc", None), playbook=playbook)
        error["message"] = "%s: %s" % (error["message"], todo)
        error["card_state"], error["todo"] = state, card_states(playbook).get(state, todo)
    state = error.get("card_state") or _KIND_STATES.get(error.get("kind"))
    if state:
        error["card_state"] = state
        error.setdefault("todo", card_states(playbook).get(state))
    elif playbook == "verify" and error.get("kind") in _LOGIN_TODO:
        error.setdefault("todo", _LOGIN_TODO[error["kind"]].format(**PLAYBOOKS["verify"]))
    return error


def advise(error, playbook, token=None):
    """card_state_of(), plus what only the PIN playbook says: a blocked PUK with a PIN that is not blocked, a PUK at
    its final try. `token`: the token's info when the error was raised."""
    if isinstance(error, dict) and playbook == "pin" and error.get("kind") in ("puk_locked", "puk_final_try"):
        user_pin = (token or error.get("token") or {}).get("user_pin")
        if error["kind"] == "puk_locked" and user_pin != "locked":
            error["card_state"], error["todo"] = "puk_locked", PUK_ONLY_LOCKED
        elif error["kind"] == "puk_final_try":
            error["todo"] = PUK_FINAL_TRY
    return card_state_of(error, playbook)
