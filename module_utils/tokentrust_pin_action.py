# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The PIN workflows of the key (playbooks/token_pin.yml, module pkcs11_pin): change the PIN, unblock it with the PUK;
and what the test login shares with them: the token's cross-process lock, what the lock file remembers of the PUK,
the token's public facts.

    rep = pin_action(library, "unblock", puk=..., new_pin=..., new_pin_confirm=...)

One presentation at most per call (tokentrust_nss.token.RawToken); the PIN rules are checked first
(tokentrust_pin.check_new_pin); every failure carries what to do for token_pin.yml (tokentrust_advice).
"""
from __future__ import annotations

import contextlib
import datetime

from ansible.module_utils.tokentrust_advice import advise
from ansible.module_utils.tokentrust_nss.token import RawToken, TokenError
from ansible.module_utils.tokentrust_pin import TokenLock, bounds, check_new_pin, library_lock_info

UTC = datetime.timezone.utc


def public_token(info):
    keep = ("label", "manufacturer", "model", "serial", "flags", "flags_value", "user_pin", "so_pin", "min_pin_len",
            "max_pin_len")
    return {k: info[k] for k in keep if k in info} if info else None


def locked(info, timeout=120):
    """An entered-on-demand TokenLock whose failure to lock is TokenError('lock') (nothing presented)."""
    class _L(TokenLock):
        def __enter__(self):
            try:
                return super().__enter__()
            except (OSError, TimeoutError) as exc:
                raise TokenError("lock", "cannot take the lock of %s, nothing was presented: %s"
                                 % (info.get("label") or info.get("serial"), exc)) from None
    return _L(info, timeout=timeout)


def now_iso():
    return datetime.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kept_record(record):
    """What of a token's lock record outlives a successful login: what the card said about its PUK."""
    return {k: v for k, v in (record or {}).items() if k.startswith("puk_")}


def puk_locked_reason(info, record):
    """Why we know the PUK is blocked (a reason in words), or None. PIV cards cannot tell the PUK's tries without a
    presentation (no VERIFY of the PUK) and OpenSC never sets CKF_SO_PIN_LOCKED for them: what the card answered to
    the last unblock on this host (6983, recorded in the token's lock file by pin_action) is then all there is."""
    if info.get("so_pin") == "locked":
        return "the key says so (CKF_SO_PIN_LOCKED)"
    if record.get("puk_locked_at"):
        return "the key refused the PUK as blocked at %s" % record["puk_locked_at"]
    return None


def pin_action(module_path, action, label=None, pin=None, puk=None, new_pin=None, new_pin_confirm=None,
               allow_final_try=False, charset="printable", min_len=None, max_len=None, reject_weak=False,
               check_mode=False):
    """action 'change' (pin -> new_pin) or 'unblock' (puk, new_pin). Returns a report dict (never with a PIN);
    report['error'] set on failure (with what to do in token_pin.yml), report['changed'] True when the token was
    changed."""
    rep = {"changed": False, "action": action, "token": None, "token_before": None, "error": None, "warnings": [],
           "pin_attempts": 0, "puk_attempts": 0, "pin_rules": None, "check_mode": bool(check_mode)}
    try:
        if action not in ("change", "unblock"):
            raise TokenError("pin_rules", "unknown action %r (change or unblock)" % action)
        with contextlib.ExitStack() as stack:
            if not check_mode:
                stack.enter_context(locked(library_lock_info(module_path)))
            tok = stack.enter_context(RawToken(module_path, label, action))
            info = tok.info()
            rep["token_before"] = rep["token"] = public_token(info)
            _check_rules(rep, info, action, pin, new_pin, new_pin_confirm, charset, min_len, max_len, reject_weak)
            lock, record = None, {}
            if not check_mode:
                lock = stack.enter_context(locked(info))
                record = lock.read()
                rep["token_before"] = rep["token"] = public_token(tok.info())  # read again, under the lock
            if action == "change":
                _change(rep, tok, pin, new_pin, allow_final_try, check_mode)
            else:
                _unblock(rep, tok, lock, record, puk, new_pin, allow_final_try, check_mode)
            rep["changed"] = True
            rep["token"] = public_token(tok.info())
    except TokenError as e:
        err = e.to_dict()
        rep["error"] = advise(err, "pin", token=err.get("token") or rep["token"])
        if "token" in rep["error"]:
            rep["token"] = public_token(rep["error"].pop("token"))
    return rep


def _check_rules(rep, info, action, pin, new_pin, new_pin_confirm, charset, min_len, max_len, reject_weak):
    """The new PIN against the token's bounds and the rules, before anything is presented."""
    lo, hi, bproblems = bounds(info["min_pin_len"], info["max_pin_len"], min_len, max_len)
    rep["pin_rules"] = {"min_length": lo, "max_length": hi, "charset": charset}
    if bproblems:
        raise TokenError("pin_rules", "; ".join(bproblems))
    problems = check_new_pin(new_pin, new_pin_confirm, pin if action == "change" else None, lo, hi, charset,
                             reject_weak)
    if problems:
        raise TokenError("pin_rules", "new PIN refused before anything was presented to the token: "
                         + "; ".join(problems))


def _change(rep, tok, pin, new_pin, allow_final_try, check_mode):
    if not pin:
        raise TokenError("pin_rules", "action=change needs the current PIN (pin)")
    if check_mode:
        rep["warnings"] += tok.guard("user", allow_final_try)
        return
    try:
        rep["warnings"] += tok.change_pin(pin, new_pin, allow_final_try)
    finally:
        rep["pin_attempts"] = tok.pin_presentations


def _unblock(rep, tok, lock, record, puk, new_pin, allow_final_try, check_mode):
    if not puk:
        raise TokenError("pin_rules", "action=unblock needs the PUK (puk)")
    known = puk_locked_reason(rep["token_before"] or {}, record)
    if known and record.get("puk_locked_at"):  # the card's flags may say otherwise: they win below
        raise TokenError("puk_locked", "the PUK of token %r is blocked (%s): not presented again. A locked PUK cannot "
                         "be unblocked: the key must be replaced (contact the CA); if the key has been reset since, "
                         "remove %s" % (tok.label, known, lock.path), token=tok.info())
    if check_mode:
        rep["warnings"] += tok.guard("so", allow_final_try)
        return
    try:
        rep["warnings"] += tok.unblock(puk, new_pin, allow_final_try)
    except TokenError as e:
        if e.kind == "puk_locked" and lock is not None:  # remembered: PIV cannot tell it otherwise
            lock.write(dict(record, puk_locked_at=now_iso()))
        raise
    finally:
        rep["puk_attempts"] = tok.puk_presentations
