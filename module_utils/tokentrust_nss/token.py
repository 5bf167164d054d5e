# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The USB key through NSS: load its PKCS#11 module, find the token, read its PIN state, log in ONCE,
change the PIN, unblock it with the PUK, list the certificates that have a private key on the token.

    with TokenSession(library, label=None, ca_pems=[...], server_ca_pems=[...]) as ts:
        tok = ts.token                       # the token (by label, or the only one present)
        tok.info()                           # label, serial, flags, PIN state, PIN lengths
        tok.login(pin)                       # guarded: refuses at final try / locked; one attempt at most
        tok.certificates()                   # certificates with their private key on the token

Guarantees:
- a PIN (or PUK) is presented to the token at most once per call, and never when the token says the
  next wrong one would lock it (final try) unless allowed, nor when it is locked: NSS's password
  callback hands the PIN over once and answers NULL to every retry or later request, so NSS never
  retries a PIN by itself;
- PINs are never put into an exception message, a result or a log.

NSS is process-global: the session opens a throw-away NSS database in a temp directory (the CA set and
the server CAs imported there), loads the module as a user module, and closes everything on exit.
A PKCS#11 module (SoftHSM2 behind the lab's pin_guard, or the Gemalto library) is per process too:
one TokenSession per process at a time (Ansible runs each module in its own process).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shutil
import tempfile

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_facts import default_library
from ansible.module_utils.tokentrust_nss._ffi import ffi, lib
from ansible.module_utils.tokentrust_nss.database import (
    NSSDatabase,
    _padded,
    _str,
    der_from_bytes,
    token_flags,
)
from ansible.module_utils.tokentrust_nss.errors import NSSError, kind_error_init, last_error

UTC = datetime.timezone.utc

# NSS's built-in root CAs (to trust a public test page such as https://services.certeurope.fr/)
BUILTIN_ROOTS = (
    "/usr/lib/x86_64-linux-gnu/libnssckbi.so",
    "/usr/lib/aarch64-linux-gnu/libnssckbi.so",
    "/usr/lib/x86_64-linux-gnu/nss/libnssckbi.so",
    "/usr/lib64/libnssckbi.so",
    "/usr/lib/libnssckbi.so",
    "/usr/lib/firefox-esr/libnssckbi.so",
    "/usr/lib/firefox/libnssckbi.so",
    "/Applications/Firefox.app/Contents/MacOS/libnssckbi.dylib",
    "/opt/homebrew/lib/libnssckbi.dylib",
)

CKF_USER_PIN_COUNT_LOW = 0x10000
CKF_USER_PIN_FINAL_TRY = 0x20000
CKF_USER_PIN_LOCKED = 0x40000
CKF_SO_PIN_COUNT_LOW = 0x100000
CKF_SO_PIN_FINAL_TRY = 0x200000
CKF_SO_PIN_LOCKED = 0x400000
CKF_PROTECTED_AUTHENTICATION_PATH = 0x100


def default_module(system=None):
    """The token library of this host (system None: the first of the table of module_utils/tokentrust_facts.py found
    here, else Classic Client's), or Classic Client's for `system`; None when we know no default."""
    return default_library(system)


def pin_state(flags, who="user"):
    """'ok' | 'count_low' | 'final_try' | 'locked' from CK_TOKEN_INFO.flags for the user PIN or the SO PIN (PUK)."""
    low, final, locked = ((CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED) if who == "user"
                          else (CKF_SO_PIN_COUNT_LOW, CKF_SO_PIN_FINAL_TRY, CKF_SO_PIN_LOCKED))
    if flags & locked:
        return "locked"
    if flags & final:
        return "final_try"
    if flags & low:
        return "count_low"
    return "ok"


class TokenError(TokentrustError):
    """A token operation cannot be done or failed. ``kind`` is a stable keyword tests and roles match on.

    kinds: module_missing, module_load, no_token, several_tokens, token_not_found, pin_locked, pin_final_try,
    puk_locked, puk_final_try, wrong_pin, wrong_puk, pin_rules, login, change, unblock, nss.
    """

    __init__ = kind_error_init


# ---------------------------------------------------------------------------------------------- PIN hand-over
class _PinSource:
    """NSS's password callback: the armed PIN once, then NULL for every retry or later request."""

    def __init__(self):
        self._pin = None
        self.requests = 0  # how many times NSS asked
        self.presented = 0  # how many times a PIN was handed over (<= 1 per arm)
        self._cb = None  # made at the first install(): importing this module needs no cffi

    def _callback(self, slot, retry, arg):
        self.requests += 1
        if retry or self._pin is None:
            return ffi.NULL  # never a second attempt: NSS gives up with the error of the first
        pin, self._pin = self._pin, None
        self.presented += 1
        return lib.nss3.PORT_Strdup(pin)  # NSS zeroes and frees it itself (PORT_Free)

    def arm(self, pin):
        self._pin = pin.encode("utf-8")

    def disarm(self):
        self._pin = None

    def install(self):
        if self._cb is None:
            self._cb = ffi.callback("PK11PasswordFunc", self._callback)
        lib.nss3.PK11_SetPasswordFunc(self._cb)


_PINS = _PinSource()  # module-level: the cffi callback must outlive every NSS call


# ---------------------------------------------------------------------------------------------- certificates
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
    from ansible.module_utils.tokentrust_ca import cert_dates, verify_signature

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
    from ansible.module_utils.tokentrust_ca import cert_dates
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


def check_guard(info, who="user", allow_final_try=False, label=None):
    """Refuse (TokenError) when presenting a PIN (who='user') or PUK (who='so') could lock the token, or when it is
    locked, from the token's info(). Returns warnings (count low; final try allowed)."""
    label = label or info.get("label")
    state = info["user_pin" if who == "user" else "so_pin"]
    what = "PIN" if who == "user" else "PUK (SO PIN)"
    kind = "pin" if who == "user" else "puk"
    warns = []
    if state == "locked":
        more = (" Unblock it with the PUK (tokentrust: pkcs11_pin action=unblock)." if who == "user" else
                " A locked PUK cannot be unblocked: the key must be replaced (contact the CA).")
        raise TokenError(kind + "_locked", "the %s of token %r is locked: no attempt was made.%s"
                         % (what, label, more), token=info)
    if state == "final_try":
        msg = "the token %r says the next wrong %s locks it (final try)" % (label, what)
        if not allow_final_try:
            raise TokenError(kind + "_final_try", msg + ": no attempt was made. Check the %s with its holder, "
                             "then run again with allow_final_try=true (one attempt)." % what, token=info)
        warns.append(msg + "; presenting it anyway (allow_final_try=true)")
    elif state == "count_low":
        warns.append("the token %r reports wrong %s attempts since the last success (count low): "
                     "check the %s before trying again" % (label, what, what))
    return warns


def _info_dict(ti, slot_name):
    flags = int(ti.flags)
    return {
        "label": _padded(ti.label),
        "manufacturer": _padded(ti.manufacturerID),
        "model": _padded(ti.model),
        "serial": _padded(ti.serialNumber),
        "flags": token_flags(flags),
        "flags_value": flags,
        "user_pin": pin_state(flags, "user"),
        "so_pin": pin_state(flags, "so"),
        "min_pin_len": int(ti.ulMinPinLen),
        "max_pin_len": int(ti.ulMaxPinLen),
        "protected_authentication_path": bool(flags & CKF_PROTECTED_AUTHENTICATION_PATH),
        "slot": slot_name,
    }


PCSCD_SOCKET = "/run/pcscd/pcscd.comm"
PCSCD_PATHS = ("/usr/sbin/pcscd", "/usr/bin/pcscd", "/sbin/pcscd")


def uses_pcsc(maps="/proc/self/maps"):
    """True when this process has PC/SC's client library loaded (the token library talks to pcscd: OpenSC loads it
    in C_Initialize, vendor libraries link it); None when it cannot be told (no /proc)."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            return "libpcsclite" in f.read()
    except OSError:
        return None


# The key's states as users meet them: state -> what to do (plain words). Every failure of the test login or of a PIN
# action that comes from the card's state carries `card_state` and `todo` (the report shows both); see
# card_state_of().
CARD_STATES = {
    "pcscd_missing": "install pcscd: run site.yml with the middleware (tokentrust_token_middleware_linux: true, role "
                     "token_middleware_linux) or `apt-get install pcscd`, then run verify.yml again",
    "pcscd_not_running": "start it (`systemctl start pcscd.socket`, or `service pcscd start`), then run verify.yml "
                         "again",
    "no_reader": "plug in the card reader (or the USB key), check it with `opensc-tool --list-readers`, then run "
                 "verify.yml again",
    "no_card": "insert the key into the reader, then run verify.yml again (nothing needs to be provisioned again)",
    "card_pulled": "put the key back, leave it in until the test login says OK, then run verify.yml again (pulling "
                   "it out changed nothing on the key)",
    "several_cards": "remove every key but the holder's, or set token_verify_token_label to the label of the "
                     "holder's key; no PIN was presented to either",
    "other_card": "plug in the holder's key (the label set in token_verify_token_label), or correct that label; no "
                  "PIN was presented",
    "pin_final_try": "check the PIN with the key's holder, then run again with token_verify_allow_final_try=true "
                     "(one attempt)",
    "pin_locked": "unblock the PIN with the PUK: playbooks/token_pin.yml (-e token_pin_action=unblock, or the PUK "
                  "and a new PIN from a vault file), then run verify.yml again; the PIN was not presented",
    "puk_locked": "the PIN and the PUK are both blocked: this key cannot be unblocked any more. Ask the CA for a new "
                  "key (and have this one revoked); nothing was presented",
}
# error kinds that are card states of their own (the others get a state only when the card explains them)
_KIND_STATES = {"several_tokens": "several_cards", "token_not_found": "other_card", "pin_final_try": "pin_final_try",
                "pin_locked": "pin_locked", "puk_locked": "puk_locked", "card_pulled": "card_pulled"}


def card_state_of(error):
    """`error` (a TokenError's dict) with `card_state` and `todo` when the card's state explains it; unchanged
    otherwise."""
    if not isinstance(error, dict):
        return error
    state = error.get("card_state") or _KIND_STATES.get(error.get("kind"))
    if state:
        error["card_state"] = state
        error.setdefault("todo", CARD_STATES.get(state))
    return error


def card_state(slot_count, socket_path=PCSCD_SOCKET, pcscd_paths=PCSCD_PATHS, pcsc=True):
    """Why no token is there, as a user meets it: (state, what to do). A smart-card middleware (OpenSC, vendor
    libraries) shows one slot per reader that pcscd reports, so no slot at all means no pcscd or no reader.
    `pcsc` False (a library that does not use PC/SC, e.g. SoftHSM2): no reader diagnosis."""
    import socket as _socket

    if pcsc is False:
        return ("no_token", "plug in the key (and check the reader), then run again")
    if slot_count:
        return ("no_card", "the reader is there but holds no card: " + CARD_STATES["no_card"])
    if not any(os.path.exists(p) for p in pcscd_paths):
        return ("pcscd_missing", "pcscd (the PC/SC daemon) is not installed: " + CARD_STATES["pcscd_missing"])
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(socket_path)
    except OSError:
        return ("pcscd_not_running", "pcscd is installed but not running (no %s): %s"
                % (socket_path, CARD_STATES["pcscd_not_running"]))
    finally:
        s.close()
    return ("no_reader", "pcscd runs but sees no card reader: " + CARD_STATES["no_reader"])


def _select(found, label, module_path, slot_count):
    """The one entry of `found` ([(label, obj)] or [(label, obj, reader)]) to use; TokenError no_token /
    token_not_found / several_tokens (card states other_card / several_cards). Never a guess: several keys without a
    label that tells them apart is an error, whichever would have been first."""
    labels = [f[0] for f in found]
    where = ["%r%s" % (f[0], " in %s" % f[2] if len(f) > 2 and f[2] else "") for f in found]
    if not found:
        state, todo = card_state(slot_count, pcsc=uses_pcsc())
        raise TokenError("no_token", "no token present on PKCS#11 module %s (%d slot(s), all empty): %s"
                         % (module_path, slot_count, todo), module=module_path, card_state=state,
                         todo=CARD_STATES.get(state, todo))
    if label:
        match = [f[1] for f in found if f[0] == label]
        if not match:
            raise TokenError("token_not_found", "no token labelled %r on %s; present: %s"
                             % (label, module_path, ", ".join(where)), present=labels, card_state="other_card")
        if len(match) > 1:
            raise TokenError("several_tokens", "%d tokens labelled %r are present (%s): the test login will not "
                             "guess which key is the holder's; remove all but one"
                             % (len(match), label, ", ".join(where)),
                             present=labels, card_state="several_cards",
                             todo="remove all keys labelled %r but one; no PIN was presented" % label)
        return match[0]
    if len(found) > 1:
        raise TokenError("several_tokens", "%d tokens are present (%s): the test login will not guess which key is "
                         "the holder's; set the token label to choose one, or plug in one key at a time"
                         % (len(found), ", ".join(where)), present=labels, card_state="several_cards")
    return found[0][1]


# PKCS#11 return values we name
CKR = {0x0: "CKR_OK", 0x5: "CKR_GENERAL_ERROR", 0x6: "CKR_FUNCTION_FAILED", 0x30: "CKR_DEVICE_ERROR",
       0x32: "CKR_DEVICE_REMOVED", 0xA0: "CKR_PIN_INCORRECT", 0xA1: "CKR_PIN_INVALID", 0xA2: "CKR_PIN_LEN_RANGE",
       0xA3: "CKR_PIN_EXPIRED", 0xA4: "CKR_PIN_LOCKED", 0xB3: "CKR_SESSION_HANDLE_INVALID",
       0xB7: "CKR_SESSION_READ_ONLY_EXISTS", 0xE0: "CKR_TOKEN_NOT_PRESENT", 0x100: "CKR_USER_ALREADY_LOGGED_IN",
       0x101: "CKR_USER_NOT_LOGGED_IN", 0x103: "CKR_USER_TYPE_INVALID", 0x104: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
       0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED"}
CKU_SO, CKU_USER = 0, 1
CKF_RW_SESSION, CKF_SERIAL_SESSION = 0x2, 0x4


def _ckr(rv):
    return CKR.get(int(rv), "CKR_0x%X" % int(rv))


class RawToken:
    """The token through its PKCS#11 module directly (no NSS), for PIN change and PUK unblock: one C_SetPIN or one
    SO C_Login per call, in a read-write session of our own. Context manager; one per process at a time."""

    def __init__(self, library, label=None, action=None):
        self.module_path = library
        self.want_label = label
        self.action = action
        self._lib = None
        self.fl = None
        self._initialized = False
        self.slot = None
        self.label = None
        self.pin_presentations = 0
        self.puk_presentations = 0
        self.middleware = None  # "opensc" when the library is OpenSC's (C_GetInfo manufacturer)
        self.unblock_style = None  # OpenSC's user_pin_unblock_style we set for this process
        self._conf_dir = None
        self._old_conf = None

    def _initialize(self):
        rv = self.fl.C_Initialize(ffi.NULL)
        if rv not in (0, 0x191):
            raise TokenError("module_load", "C_Initialize of %s failed: %s" % (self.module_path, _ckr(rv)))
        self._initialized = rv == 0

    def _manufacturer(self):
        """C_GetInfo's manufacturerID (the library's maker, not the token's)."""
        buf = ffi.new("unsigned char[]", 256)  # CK_INFO: version(2) + manufacturerID[32] + ... (< 100 bytes)
        fn = ffi.cast("unsigned long(*)(unsigned char *)", self.fl.C_GetInfo)
        if fn(buf) != 0:
            return ""
        return bytes(ffi.buffer(buf, 34)[2:34]).decode("utf-8", "replace").strip()

    def _opensc_style(self):
        """OpenSC decides in opensc.conf what C_SetPIN outside a login means (user_pin_unblock_style): with the
        default ("none") it is a PIN change, so an unblock sent that way presents the PUK as the PIN and spends a
        PIN try; C_Login(SO) + C_InitPIN sends VERIFY P2=81, which a PIV card does not define (CKR_GENERAL_ERROR).
        We set the style for our own process only (OPENSC_CONF = the host's configuration with our
        `app opensc-pkcs11 { pkcs11 { user_pin_unblock_style } }` block first): set_pin_in_unlogged_session for an
        unblock (C_SetPIN(PUK, new PIN) = RESET RETRY COUNTER, no PIN presented), none for a change (C_SetPIN(old,
        new) = CHANGE REFERENCE DATA, whatever the host's file says)."""
        style = "set_pin_in_unlogged_session" if self.action == "unblock" else "none"
        src = os.environ.get("OPENSC_CONF") or next(
            (f for f in ("/etc/opensc/opensc.conf", "/etc/opensc.conf") if os.path.isfile(f)), None)
        try:
            with open(src, encoding="utf-8", errors="replace") as f:
                host_conf = f.read()
        except (OSError, TypeError):
            host_conf = "app default {\n}\n"
        self._conf_dir = tempfile.mkdtemp(prefix="tokentrust-opensc-")
        conf = os.path.join(self._conf_dir, "opensc.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write("# tokentrust: this process only (%s)\napp opensc-pkcs11 {\n pkcs11 {\n"
                    "  user_pin_unblock_style = %s;\n }\n}\n%s" % (self.action, style, host_conf))
        self._old_conf = os.environ.get("OPENSC_CONF")
        os.environ["OPENSC_CONF"] = conf
        return style

    def _restore_conf(self):
        if self._conf_dir is None:
            return
        if self._old_conf is None:
            os.environ.pop("OPENSC_CONF", None)
        else:
            os.environ["OPENSC_CONF"] = self._old_conf
        shutil.rmtree(self._conf_dir, ignore_errors=True)
        self._conf_dir = None

    def __enter__(self):
        _check_library(self.module_path)
        try:
            self._lib = ffi.dlopen(self.module_path)
            getfl = self._lib.C_GetFunctionList
        except (OSError, AttributeError) as exc:
            raise TokenError("module_load", "cannot load %s as a PKCS#11 module (%s): is it the token middleware's "
                             "PKCS#11 library, for this architecture?" % (self.module_path, exc),
                             module=self.module_path) from None
        pfl = ffi.new("CK_FUNCTION_LIST **")
        rv = getfl(pfl)
        if rv != 0:
            raise TokenError("module_load", "C_GetFunctionList of %s failed: %s" % (self.module_path, _ckr(rv)))
        self.fl = pfl[0]
        self._initialize()
        try:
            if "OpenSC" in self._manufacturer():
                self.middleware = "opensc"
                if self.action in ("change", "unblock") and self._initialized:
                    self.fl.C_Finalize(ffi.NULL)  # OpenSC reads its configuration in C_Initialize
                    self._initialized = False
                    self.unblock_style = self._opensc_style()
                    self._initialize()
            count = ffi.new("CK_ULONG *")
            self._call("C_GetSlotList", self.fl.C_GetSlotList(1, ffi.NULL, count))
            slots = ffi.new("CK_ULONG[]", max(count[0], 1))
            self._call("C_GetSlotList", self.fl.C_GetSlotList(1, slots, count))
            found = []
            for i in range(count[0]):
                ti = ffi.new("CK_TOKEN_INFO *")
                if self.fl.C_GetTokenInfo(slots[i], ti) == 0:
                    found.append((_padded(ti.label), int(slots[i])))
            self.slot = _select(found, self.want_label, self.module_path, count[0])
            self.label = dict((s, lb) for lb, s in found)[self.slot]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.fl is not None and self._initialized:
            self.fl.C_Finalize(ffi.NULL)
        self.fl = None
        self._initialized = False
        self._restore_conf()
        return False

    def _call(self, what, rv):
        if rv != 0:
            raise TokenError("nss" if what != "C_GetSlotList" else "module_load", "%s on %s failed: %s"
                             % (what, self.module_path, _ckr(rv)), _ckr(rv))
        return rv

    def info(self):
        ti = ffi.new("CK_TOKEN_INFO *")
        self._call("C_GetTokenInfo", self.fl.C_GetTokenInfo(self.slot, ti))
        return _info_dict(ti, "slot %d" % self.slot)

    def guard(self, who="user", allow_final_try=False):
        return check_guard(self.info(), who, allow_final_try, self.label)

    def _session(self):
        h = ffi.new("CK_ULONG *")
        self._call("C_OpenSession",
                   self.fl.C_OpenSession(self.slot, CKF_RW_SESSION | CKF_SERIAL_SESSION, ffi.NULL, ffi.NULL, h))
        return h[0]

    def _fail(self, who, rv, op):
        name = _ckr(rv)
        info = self.info()
        what = "PIN" if who == "user" else "PUK (SO PIN)"
        kind = "pin" if who == "user" else "puk"
        state = info["user_pin" if who == "user" else "so_pin"]
        if name == "CKR_PIN_INCORRECT":
            if state == "locked":
                return TokenError(kind + "_locked", "wrong %s for token %r (one attempt used): it is now LOCKED"
                                  % (what, self.label), name, token=info)
            after = "the next wrong %s locks it" % what if state == "final_try" else "wrong attempts recorded"
            return TokenError("wrong_" + kind, "wrong %s for token %r: one attempt used and not retried; token "
                              "state now: %s" % (what, self.label, after), name, token=info)
        if name == "CKR_PIN_LOCKED":
            return TokenError(kind + "_locked", "the %s of token %r is locked" % (what, self.label), name,
                              token=info)
        if name in ("CKR_PIN_INVALID", "CKR_PIN_LEN_RANGE"):
            return TokenError("pin_rules", "the token refused the new PIN (%s): check its length and characters"
                              % name, name, token=info)
        return TokenError(op, "%s on token %r failed: %s" % (op, self.label, name), name, token=info)

    def change_pin(self, old_pin, new_pin, allow_final_try=False):
        """C_SetPIN(old, new) in a R/W public session: one presentation of the old PIN. Returns warnings."""
        warns = self.guard("user", allow_final_try)
        h = self._session()
        try:
            old, new = old_pin.encode("utf-8"), new_pin.encode("utf-8")
            self.pin_presentations += 1
            rv = self.fl.C_SetPIN(h, old, len(old), new, len(new))
        finally:
            self.fl.C_CloseSession(h)
        if rv != 0:
            raise self._fail("user", rv, "change")
        return warns

    def unblock(self, puk, new_pin, allow_final_try=False):
        """One presentation of the PUK, never of the PIN. Returns warnings.

        OpenSC (user_pin_unblock_style = set_pin_in_unlogged_session, set for this process): C_SetPIN(PUK, new PIN)
        in a session with no login = RESET RETRY COUNTER. Other middleware: C_Login(SO, PUK) then C_InitPIN(new
        PIN), the PKCS#11 standard's way."""
        warns = self.guard("so", allow_final_try)
        if self.unblock_style == "set_pin_in_unlogged_session":
            h = self._session()
            try:
                so, new = puk.encode("utf-8"), new_pin.encode("utf-8")
                self.puk_presentations += 1
                rv = self.fl.C_SetPIN(h, so, len(so), new, len(new))
            finally:
                self.fl.C_CloseSession(h)
            if rv != 0:
                raise self._fail("so", rv, "unblock")
            return warns
        h = self._session()
        try:
            so, new = puk.encode("utf-8"), new_pin.encode("utf-8")
            self.puk_presentations += 1
            rv = self.fl.C_Login(h, CKU_SO, so, len(so))
            if rv != 0:
                raise self._fail("so", rv, "unblock")
            try:
                rv = self.fl.C_InitPIN(h, new, len(new))
            finally:
                self.fl.C_Logout(h)
            if rv != 0:
                raise self._fail("user", rv, "unblock")
        finally:
            self.fl.C_CloseSession(h)
        return warns


def _check_library(lib_path):
    if not lib_path:
        raise TokenError("module_missing", "no PKCS#11 module path: set `module` (the Gemalto Classic Client "
                         "library has no default on %s)" % platform.system())
    if not os.path.exists(lib_path):
        raise TokenError("module_missing", "PKCS#11 module %s does not exist on this host: install the token "
                         "middleware (Gemalto/Thales Classic Client, or OpenSC) or set `module` to its library "
                         "(roles: tokentrust_token_library)" % lib_path, module=lib_path)
    if not os.path.isfile(lib_path):
        raise TokenError("module_missing", "PKCS#11 module %s is not a file" % lib_path, module=lib_path)


# ---------------------------------------------------------------------------------------------- the token
class Token:
    """One token (a present slot) of the loaded module. Holds a slot reference until the session closes."""

    def __init__(self, session, slot):
        self.session = session
        self.slot = lib.nss3.PK11_ReferenceSlot(slot)
        self.label = _str(lib.nss3.PK11_GetTokenName(self.slot))
        self.slot_name = _str(lib.nss3.PK11_GetSlotName(self.slot))
        self.logged_in = False
        self.pin_presentations = 0

    def close(self):
        if self.slot is not None:
            if self.logged_in:
                lib.nss3.PK11_Logout(self.slot)
            lib.nss3.PK11_FreeSlot(self.slot)
            self.slot = None

    def info(self):
        """Label, serial, flags (names and value), PIN/PUK states, PIN length bounds: fresh from the token."""
        ti = ffi.new("CK_TOKEN_INFO *")
        if lib.nss3.PK11_GetTokenInfo(self.slot, ti) != 0:
            err = last_error("read token info", self.session.module_path)
            raise TokenError("nss", "cannot read the token's information (C_GetTokenInfo): %s" % err, err.name)
        return _info_dict(ti, self.slot_name)

    def guard(self, who="user", allow_final_try=False):
        """See check_guard(): raises TokenError, returns warnings."""
        return check_guard(self.info(), who, allow_final_try, self.label)

    # -------------------------------------------------------------- login
    def login(self, pin, allow_final_try=False):
        """Log in with the user PIN: at most one presentation. Returns warnings."""
        if not pin:
            raise TokenError("pin_rules", "no PIN given: set the PIN (vault variable or prompt)")
        warns = self.guard("user", allow_final_try)
        if not lib.nss3.PK11_NeedLogin(self.slot):
            warns.append("token %r needs no login (CKF_LOGIN_REQUIRED not set): PIN not used" % self.label)
            return warns
        if lib.nss3.PK11_IsLoggedIn(self.slot, ffi.NULL):
            self.logged_in = True
            return warns
        before = _PINS.presented
        _PINS.arm(pin)
        try:
            rv = lib.nss3.PK11_Authenticate(self.slot, 1, ffi.NULL)
            err = last_error("log in", self.session.module_path) if rv != 0 else None
        finally:
            _PINS.disarm()
        presented = _PINS.presented - before
        self.pin_presentations += presented
        if rv == 0 and lib.nss3.PK11_IsLoggedIn(self.slot, ffi.NULL):
            self.logged_in = True
            return warns
        if not presented:
            raise TokenError("login", "log in to token %r failed before the PIN was presented (no attempt used): %s"
                             % (self.label, err), err.name if err else None)
        raise self._pin_error("user", err, "log in")

    def _pin_error(self, who, err, op):
        """A TokenError for a failed PIN/PUK presentation, with the token's state read right after."""
        try:
            info = self.info()
        except TokenError:
            info = None
        what = "PIN" if who == "user" else "PUK (SO PIN)"
        kind = "pin" if who == "user" else "puk"
        state = info["user_pin" if who == "user" else "so_pin"] if info else "unknown"
        name = err.name if err else None
        if name in ("SEC_ERROR_BAD_PASSWORD", "SEC_ERROR_INVALID_PASSWORD") or (
                state in ("count_low", "final_try") and name != "SEC_ERROR_LOCKED_PASSWORD"):
            after = {"count_low": "wrong attempts recorded", "final_try": "the next wrong %s locks it" % what,
                     "locked": "it is now LOCKED"}.get(state, state)
            if state == "locked":
                return TokenError(kind + "_locked", "wrong %s for token %r (one attempt used): %s"
                                  % (what, self.label, after), name, token=info)
            return TokenError("wrong_" + kind, "wrong %s for token %r: one attempt used and not retried; token "
                              "state now: %s" % (what, self.label, after), name, token=info)
        if state == "locked" or name == "SEC_ERROR_LOCKED_PASSWORD":
            return TokenError(kind + "_locked", "the %s of token %r is locked" % (what, self.label), name,
                              token=info)
        return TokenError(op.split()[0] if op != "log in" else "login", "%s on token %r failed: %s"
                          % (op, self.label, err or "unknown error"), name, token=info)

    # -------------------------------------------------------------- certificates
    def certificates(self, cas=None, now=None):
        """Certificates on the token; `has_key` says whether the private key is there too (needs login:
        private keys are private objects). Returns [(description dict, CERTCertificate* dup)]; the handles
        are owned by the session and destroyed when it closes."""
        certs = lib.nss3.PK11_ListCertsInSlot(self.slot)
        if certs == ffi.NULL:
            err = last_error("list certificates", self.session.module_path)
            if err.name == "SEC_ERROR_NO_MODULE" or err.code == 0:
                return []
            raise TokenError("nss", "cannot list the certificates of token %r: %s" % (self.label, err), err.name)
        out = []
        try:
            head = ffi.addressof(certs.list)
            node = ffi.cast("CERTCertListNode *", certs.list.next)
            while ffi.cast("PRCList *", node) != head:
                cert = node.cert
                der = bytes(ffi.buffer(cert.derCert.data, cert.derCert.len))
                desc = describe_certificate(der, cas, now)
                desc["nickname"] = _str(ffi.cast("char *", node.appData)) if node.appData != ffi.NULL else None
                key = lib.nss3.PK11_FindPrivateKeyFromCert(self.slot, cert, ffi.NULL)
                desc["has_key"] = key != ffi.NULL
                if key != ffi.NULL:
                    lib.nss3.SECKEY_DestroyPrivateKey(key)
                dup = lib.nss3.CERT_DupCertificate(cert)
                self.session._certs.append(dup)
                out.append((desc, dup))
                node = ffi.cast("CERTCertListNode *", node.links.next)
        finally:
            lib.nss3.CERT_DestroyCertList(certs)
        return out


# ---------------------------------------------------------------------------------------------- the session
class TokenSession:
    """Temp NSS database + the PKCS#11 module loaded as a user module + the token found on it.

    library: path of the PKCS#11 module. label: the token's label (None: the only token present).
    ca_pems: CA set certificates (PEM/DER, or (PEM, NSS trust) pairs; default trust ",,": chain building only).
    server_ca_pems: CAs trusted to identify TLS servers (trust C,,). builtin_roots: also trust NSS's built-in
    root CAs (libnssckbi) for servers.
    """

    MODULE_NAME = "tokentrust token"

    def __init__(self, library, label=None, ca_pems=(), server_ca_pems=(), builtin_roots=False):
        self.module_path = library
        self.label = label
        self.ca_pems = list(ca_pems or [])
        self.server_ca_pems = list(server_ca_pems or [])
        self.builtin_roots = builtin_roots
        self.builtin_roots_loaded = None
        self._tmp = None
        self._db = None
        self._mods = []
        self._certs = []
        self.token = None
        self.tokens = []

    # ------------------------------------------------------------------ open / close
    def __enter__(self):
        lib_path = self.module_path
        _check_library(lib_path)
        self._tmp = tempfile.mkdtemp(prefix="tokentrust-nss-")
        try:
            self._db = NSSDatabase(self._tmp, readonly=False)
            self._db.__enter__()
            _PINS.disarm()
            _PINS.install()
            self._import_cas()
            if self.builtin_roots:
                self.builtin_roots_loaded = self._load_builtin_roots()
            mod = self._load(lib_path, self.MODULE_NAME)
            self._find_token(mod)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        _PINS.disarm()
        try:
            if lib.nss3.NSS_IsInitialized():
                lib.ssl3.SSL_ClearSessionCache()
            for c in self._certs:
                lib.nss3.CERT_DestroyCertificate(c)
            self._certs = []
            for t in self.tokens:
                t.close()
            self.tokens = []
            self.token = None
            for m in reversed(self._mods):
                lib.nss3.SECMOD_UnloadUserModule(m)
                lib.nss3.SECMOD_DestroyModule(m)
            self._mods = []
            if self._db is not None:
                db, self._db = self._db, None
                try:
                    db.__exit__(None, None, None)
                except NSSError:
                    if exc_type is None:
                        raise
        finally:
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
        return False

    def _import_cas(self):
        seen = set()
        for i, pem in enumerate(self.server_ca_pems):
            der = self._der(pem, "server CA #%d" % (i + 1))
            seen.add(der)
            self._db.add_certificate(der, "tokentrust server CA %d" % (i + 1), "C,,")
        for i, item in enumerate(self.ca_pems):
            pem, trust = item if isinstance(item, tuple) else (item, ",,")
            der = self._der(pem, "CA set entry #%d" % (i + 1))
            if der in seen:
                continue
            seen.add(der)
            self._db.add_certificate(der, "tokentrust CA set %d" % (i + 1), trust or ",,")

    @staticmethod
    def _der(pem, what):
        try:
            return der_from_bytes(pem, what)
        except ValueError as exc:
            raise TokenError("ca_set", str(exc)) from None

    def _load(self, path, name):
        spec = 'library="%s" name="%s"' % (path.replace('"', '\\"'), name)
        buf = ffi.new("char[]", spec.encode())
        mod = lib.nss3.SECMOD_LoadUserModule(buf, ffi.NULL, 0)
        if mod == ffi.NULL:
            err = last_error("load module", path)
            raise TokenError("module_load", "NSS could not load the PKCS#11 module %s: %s" % (path, err), err.name,
                             module=path)
        if not mod.loaded:
            err = last_error("load module", path)
            lib.nss3.SECMOD_DestroyModule(mod)
            raise TokenError("module_load", "NSS could not load %s as a PKCS#11 module (%s): is it the token "
                             "middleware's PKCS#11 library, for this architecture?" % (path, err.name or err),
                             err.name, module=path)
        self._mods.append(mod)
        return mod

    def _load_builtin_roots(self):
        """NSS's built-in roots: the libnssckbi of the loaded NSS build first, else a system one."""
        from ansible.module_utils.tokentrust_nss import _ffi

        here = _ffi.nss_libdir() if hasattr(_ffi, "nss_libdir") else None
        first = (os.path.join(here, "libnssckbi.so"), os.path.join(here, "libnssckbi.dylib")) if here else ()
        for p in first + BUILTIN_ROOTS:
            if os.path.exists(p):
                self._load(p, "tokentrust builtin roots")
                return p
        return None

    def _find_token(self, mod):
        present = []
        for i in range(mod.slotCount):
            slot = mod.slots[i]
            if lib.nss3.PK11_IsPresent(slot):
                present.append(Token(self, slot))
        self.tokens = present
        self.token = _select([(t.label, t, t.slot_name) for t in present], self.label, self.module_path,
                             mod.slotCount)
        return self.token

    @property
    def pin_requests(self):
        return _PINS.requests


# ---------------------------------------------------------------------------------------------- the two jobs
def _public_token(info):
    keep = ("label", "manufacturer", "model", "serial", "flags", "flags_value", "user_pin", "so_pin", "min_pin_len",
            "max_pin_len")
    return {k: info[k] for k in keep if k in info} if info else None


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


def _locked(info, timeout=120):
    """An entered-on-demand TokenLock whose failure to lock is TokenError('lock') (nothing presented)."""
    from ansible.module_utils.tokentrust_pin import TokenLock

    class _L(TokenLock):
        def __enter__(self):
            try:
                return super().__enter__()
            except (OSError, TimeoutError) as exc:
                raise TokenError("lock", "cannot take the lock of %s, nothing was presented: %s"
                                 % (info.get("label") or info.get("serial"), exc)) from None
    return _L(info, timeout=timeout)


def validate_inputs(url=None, tls=True, certificate=None, timeout=20, body_bytes=1024, min_days_left=30,
                    tls_max=None):
    """Every input of the test login checked before the key is touched (no PIN is presented on a bad input).
    Raises TLSError('url') or TokenError('input')."""
    from ansible.module_utils.tokentrust_nss.tls import VERSION_NUMBERS, parse_url

    if tls and url:
        parse_url(url)
    check_selector(certificate)
    for name, value, low in (("timeout", timeout, 1), ("body_bytes", body_bytes, 0),
                             ("min_days_left", min_days_left, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise TokenError("input", "%s must be a whole number >= %d, got %r" % (name, low, value))
    if timeout > 600:
        raise TokenError("input", "timeout must be at most 600 seconds, got %d" % timeout)
    if tls_max is not None and tls_max not in VERSION_NUMBERS:
        raise TokenError("input", "tls_max_version must be one of %s, got %r" % (", ".join(sorted(VERSION_NUMBERS)),
                                                                                 tls_max))


def _now_iso():
    return datetime.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tls_verdict(tls, chosen, url):
    """The TLS step passes only when the server asked for a client certificate, ours was sent and accepted, and the
    page answered 200. Returns None or a TokenError-like (kind, message)."""
    if not tls["client_cert_requested"]:
        return ("no_client_auth", "the server %s did not ask for a client certificate: the key was not used, so the "
                "login proves nothing (wrong URL, a proxy that ends TLS, or not the CA's test page); HTTP %d"
                % (url, tls["status"]))
    if tls["client_cert_sent"] != chosen["sha256"]:
        return ("client_cert_not_sent", "the server %s asked for a client certificate but %s was not sent (sent: %s)"
                % (url, chosen["sha256"], tls["client_cert_sent"] or "none"))
    if tls["status"] != 200:
        where = (" to %s" % tls["location"]) if tls.get("location") else " with no Location"
        moved = (" (a redirection%s: give the page it leads to as the URL if that is the test page)" % where
                 if 300 <= tls["status"] < 400 else "")
        return ("page_status", "the test page %s answered HTTP %d %s after the client certificate was sent: the "
                "server did not accept it%s" % (url, tls["status"], tls["reason"], moved))
    return None


def _chain_names(handle, desc, cas):
    """The DER names of the CAs above a token certificate: its issuer, and every CA of the set in its chain."""
    out = {bytes(ffi.buffer(handle.derIssuer.data, handle.derIssuer.len))}
    for name in desc.get("chain") or []:
        out.update(c.subject.public_bytes() for n, c in cas or [] if n == name)
    return out


def _preflight_verdict(pre, ours, url):
    """Why a login at `url` could not pass, from the pre-flight handshake without the key (before the PIN):
    (kind, message) or None. `ours`: the DER names of the CAs above the certificate to log in with."""
    from ansible.module_utils.tokentrust_nss.tls import dn_text

    nothing = "nothing was presented to the key (no PIN try spent)"
    if not pre["client_cert_requested"]:
        return ("no_client_auth", "the server %s did not ask for a client certificate in a handshake made without "
                "the key: the key would not be used, so the login would prove nothing (wrong URL, a proxy that ends "
                "TLS, or not the CA's test page); %s" % (url, nothing))
    theirs = [bytes.fromhex(h) for h in pre["acceptable_cas_der"]]
    if theirs:
        ours_text = {dn_text(d).casefold() for d in ours}
        if not any(d in ours or dn_text(d).casefold() in ours_text for d in theirs):
            return ("client_ca_not_accepted", "the server %s asks for a client certificate issued by %s only; the "
                    "key's certificate is issued under %s, which it does not name: it cannot accept the key as a "
                    "login, whatever it answers (wrong URL, or the server is not configured for this CA); %s"
                    % (url, "; ".join(pre["acceptable_cas"]), "; ".join(sorted(dn_text(d) for d in ours)), nothing))
    control = pre["without_client_cert"]
    if control["accepted"]:
        return ("client_cert_optional", "the server %s answered HTTP %d to the same request made with NO client "
                "certificate (negative control): it does not need the key, so a login there proves nothing (a "
                "server that only asks for a certificate, optionally); %s" % (url, control["status"], nothing))
    return None


def _preflight(rep, tok, cas, now, certificate, url, timeout, tls_max):
    """The pre-flight handshake without the key, before any PIN: raises TLSError or TokenError when no login there
    could pass; the facts go to rep['preflight']."""
    from ansible.module_utils.tokentrust_nss.tls import preflight

    pre = preflight(url, timeout=timeout, tls_max=tls_max)
    rep["preflight"] = pre
    rep["client_cert_requested"] = pre["client_cert_requested"]
    public = tok.certificates(cas, now)
    ours = set()
    if public:
        descs = [pair[0] for pair in public]
        try:
            idx, _why = choose_certificate(descs, certificate)
        except TokenError:
            idx = None
        for i in ([idx] if idx is not None else range(len(public))):
            ours |= _chain_names(public[i][1], public[i][0], cas)
    verdict = _preflight_verdict(pre, ours, url)
    if verdict:
        raise TokenError(verdict[0], verdict[1], preflight=pre)


def verify_token(module_path, pin, label=None, ca_set=None, url=None, server_ca_pems=(), builtin_roots=True,
                 allow_final_try=False, certificate=None, tls=True, timeout=20, body_bytes=1024, min_days_left=30,
                 check_mode=False, tls_max=None, now=None, run_id=None, lock_timeout=120):
    """The whole test login. Returns a report dict; never raises for token/TLS problems (see report['error'])
    and never contains the PIN. report['ok'] is True only when everything passed: the PIN accepted, the chosen
    certificate valid and in the CA set, and (when a URL is given) a TLS handshake in which the server asked for a
    client certificate, ours was sent and accepted, and the page answered 200.

    Every input is checked before the key is touched; the PIN guard holds the token's cross-process lock
    (tokentrust_pin.TokenLock) from reading the counter to the end of the login. With `run_id`, a run that already
    saw this PIN refused by this token does not present it again (hosts sharing one key in one playbook run)."""
    import time

    from ansible.module_utils.tokentrust_nss.tls import TLSError, https_get
    from ansible.module_utils.tokentrust_pin import library_lock_info

    started = time.monotonic()
    rep = {"ok": False, "checked_at": _now_iso(), "pkcs11_module": module_path, "url": url if tls else None,
           "token": None, "pin_state_before": None, "logged_in": False, "pin_attempts": 0, "certificates": [],
           "other_certificates": 0, "login_certificate": None, "holder": None, "not_after": None, "days_left": None,
           "client_cert_requested": None, "client_cert_sent": None, "client_cert_accepted": None,
           "tls": None, "preflight": None, "error": None, "problems": [], "warnings": [],
           "check_mode": bool(check_mode),
           "lock_waited": None}
    try:
        validate_inputs(url, tls, certificate, timeout, body_bytes, min_days_left, tls_max)
        certificate = check_selector(certificate)
        cas = _load_ca_set(ca_set) if ca_set is not None else None
        # the set's own NSS trust (nss_trust, as the ca_certificates role gives it to Firefox: roots "C,,"), so the
        # test page is trusted exactly as the browser would trust it; bare PEMs: no trust (chain building only)
        pems = [(ca["pem"], ca.get("nss_trust") or ",,") if isinstance(ca, dict) else (ca, ",,")
                for ca in (ca_set or [])]
        liblock = _locked(library_lock_info(module_path), lock_timeout)
        with liblock, TokenSession(module_path, label, ca_pems=pems, server_ca_pems=server_ca_pems,
                                   builtin_roots=builtin_roots and tls and not check_mode) as ts:
            tok = ts.token
            info = tok.info()
            rep["pin_state_before"] = info["user_pin"]
            rep["token"] = _public_token(info)
            rep["tokens_present"] = [{"label": t.label, "reader": t.slot_name} for t in ts.tokens]
            if len(ts.tokens) > 1:  # chosen by its label (else _select refused): say which one, never silently
                rep["warnings"].append("%d keys are plugged in (%s): the test login uses the one labelled %r in %s "
                                       "(token label set)" % (len(ts.tokens), ", ".join(
                                           "%r in %s" % (t.label, t.slot_name) for t in ts.tokens), tok.label,
                                           tok.slot_name))
            if certificate:  # the selector is resolved on the public certificates, before any PIN
                public = [c[0] for c in tok.certificates(cas, now)]
                if public:
                    select_certificate(public, certificate)
            if check_mode:
                rep["warnings"] += [w + " (check mode: no PIN presented)" for w in tok.guard("user", allow_final_try)]
                _certificates_and_tls(rep, tok, cas, now, certificate, min_days_left, False, url, timeout,
                                      body_bytes, tls_max, https_get, check_mode)
            else:
                if tls and url:  # before the PIN: a login that cannot pass spends no try
                    _preflight(rep, tok, cas, now, certificate, url, timeout, tls_max)
                lock = _locked(info, lock_timeout)
                lock.__enter__()
                try:
                    rep["lock_waited"] = round(liblock.waited + lock.waited, 3)
                    record = lock.read()
                    info = tok.info()  # the counter, read under the lock
                    rep["pin_state_before"] = info["user_pin"]
                    rep["token"] = _public_token(info)
                    if run_id and record.get("wrong_pin_run") == run_id and info["user_pin"] != "ok":
                        raise TokenError("wrong_pin_this_run", "this run (%s) already had its PIN refused by token %r "
                                         "(%s): not presented again; check the PIN"
                                         % (run_id, tok.label, record.get("wrong_pin_at")),
                                         token=info)
                    puk_locked = _puk_locked(info, record)
                    try:
                        rep["warnings"] += tok.login(pin, allow_final_try)
                        rep["logged_in"] = tok.logged_in
                    except TokenError as e:
                        if e.kind == "pin_locked" and not tok.pin_presentations and puk_locked:
                            raise TokenError("puk_locked", "the PIN and the PUK of token %r are both blocked (%s): "
                                             "no attempt was made" % (tok.label, puk_locked), token=info) from None
                        if e.kind in ("wrong_pin", "pin_locked") and tok.pin_presentations:
                            lock.write(dict(_kept(record), wrong_pin_run=run_id, wrong_pin_at=_now_iso()))
                        raise
                    finally:
                        rep["pin_attempts"] = tok.pin_presentations
                    if record != _kept(record):
                        lock.write(_kept(record))
                    if puk_locked:
                        rep["warnings"].append("the PUK of token %r is blocked (%s): a blocked PIN could not be "
                                               "unblocked any more; ask the CA for a new key before that happens"
                                               % (tok.label, puk_locked))
                    _certificates_and_tls(rep, tok, cas, now, certificate, min_days_left, tls, url, timeout,
                                          body_bytes, tls_max, https_get, check_mode)
                except (TokenError, TLSError, NSSError) as exc:
                    if getattr(exc, "kind", None) not in _CARD_ANSWERS and _card_gone(tok):
                        raise TokenError("card_pulled", "the key %r was pulled out during the test login (%s): %s"
                                         % (tok.label, getattr(exc, "message", None) or exc,
                                            CARD_STATES["card_pulled"]), card_state="card_pulled",
                                         cause=getattr(exc, "kind", "nss")) from None
                    raise
                finally:
                    lock.__exit__(None, None, None)
            info = tok.info()
            rep["token"] = _public_token(info)
    except TokenError as e:
        rep["error"] = e.to_dict()
        rep["error"].pop("preflight", None)  # already in rep['preflight']
        if "token" in rep["error"]:
            rep["token"] = _public_token(rep["error"].pop("token"))
    except TLSError as e:
        rep["error"] = e.to_dict()
        for k in ("client_cert_requested", "client_cert_sent"):
            if k in rep["error"]:
                rep[k] = rep["error"][k]
        if rep["client_cert_sent"]:
            rep["client_cert_accepted"] = False
    except NSSError as e:
        rep["error"] = {"kind": "nss", "message": str(e), "nss_error": e.name}
    card_state_of(rep["error"])
    rep["ok"] = rep["error"] is None and not rep["problems"] and not check_mode
    rep["seconds"] = round(time.monotonic() - started, 3)
    return rep


_CARD_ANSWERS = ("wrong_pin", "pin_locked", "pin_final_try", "wrong_pin_this_run", "puk_locked")


def _kept(record):
    """What of a token's lock record outlives a successful login: what the card said about its PUK."""
    return {k: v for k, v in (record or {}).items() if k.startswith("puk_")}


def _puk_locked(info, record):
    """Why we know the PUK is blocked (a reason in words), or None. PIV cards cannot tell the PUK's tries without a
    presentation (no VERIFY of the PUK) and OpenSC never sets CKF_SO_PIN_LOCKED for them: what the card answered to
    the last unblock on this host (6983, recorded in the token's lock file by pin_action) is then all there is."""
    if info.get("so_pin") == "locked":
        return "the key says so (CKF_SO_PIN_LOCKED)"
    if record.get("puk_locked_at"):
        return "the key refused the PUK as blocked at %s" % record["puk_locked_at"]
    return None


def _card_gone(tok):
    """After a failure in the middle of a login: True when the key is no longer in its reader (pulled out). NSS
    caches a slot's presence for one second: read it after that."""
    import time

    if uses_pcsc() is False:
        return False
    time.sleep(1.2)
    try:
        return not lib.nss3.PK11_IsPresent(tok.slot)
    except Exception:  # noqa: BLE001 - a question after a failure: never a second failure
        return False


def _certificates_and_tls(rep, tok, cas, now, certificate, min_days_left, tls, url, timeout, body_bytes, tls_max,
                          https_get, check_mode):
    pairs = tok.certificates(cas, now)
    with_key = [(d, h) for d, h in pairs if d["has_key"] or check_mode]
    rep["other_certificates"] = len(pairs) - len(with_key)
    descs = [w[0] for w in with_key]
    for d in descs:
        d["usable"] = usable_for_login(d) is None
        if check_mode:
            d["has_key"] = None  # private keys are private objects: not visible without login
        if d["expired"]:
            rep["problems"].append("certificate %s (issuer %s) expired on %s"
                                   % (d["holder"], d["issuer"], d["not_after"]))
        elif d.get("in_ca_set") is False:
            rep["problems"].append("certificate %s (issuer %s) does not chain to the CA set: %s"
                                   % (d["holder"], d["issuer"], d["problem"]))
        elif min_days_left and d["days_left"] < min_days_left:
            rep["warnings"].append("certificate %s (issuer %s) expires in %d days (%s): renew it"
                                   % (d["holder"], d["issuer"], d["days_left"], d["not_after"]))
    rep["certificates"] = descs
    idx, why = choose_certificate(descs, certificate)
    if why and idx is None:
        rep["problems"].append(why)
    elif why:
        rep["warnings"].append(why)
    if idx is None:
        return
    chosen = descs[idx]
    keys = ("holder", "subject", "issuer", "serial", "not_after", "days_left", "sha256", "nickname")
    rep["login_certificate"] = {k: chosen[k] for k in keys}
    rep["holder"], rep["not_after"], rep["days_left"] = chosen["holder"], chosen["not_after"], chosen["days_left"]
    if not (tls and url) or check_mode:
        return
    rep["tls"] = res = https_get(url, with_key[idx][1], timeout=timeout, max_body=body_bytes,
                                 holder=chosen["holder"], tls_max=tls_max)
    rep["client_cert_requested"] = res["client_cert_requested"]
    rep["client_cert_sent"] = res["client_cert_sent"]
    verdict = _tls_verdict(res, chosen, url)
    if verdict:
        rep["client_cert_accepted"] = None if verdict[0] == "no_client_auth" else False
        raise TokenError(verdict[0], verdict[1], http_status=res["status"])
    rep["client_cert_accepted"] = True
    page = res["page"]
    if page["says_not_valid"]:
        rep["problems"].append("the test page says the certificate is NOT valid: %r" % res["body_start"][:200])
    elif not page["holder_found"]:
        rep["warnings"].append("the test page answered 200 but does not show the holder's name %r" % chosen["holder"])


def pin_action(module_path, action, label=None, pin=None, puk=None, new_pin=None, new_pin_confirm=None,
               allow_final_try=False, charset="printable", min_len=None, max_len=None, reject_weak=False,
               check_mode=False):
    """action 'change' (pin -> new_pin) or 'unblock' (puk, new_pin). Returns a report dict (never with a PIN);
    report['error'] set on failure, report['changed'] True when the token was changed."""
    from ansible.module_utils.tokentrust_pin import bounds, check_new_pin, library_lock_info

    rep = {"changed": False, "action": action, "token": None, "token_before": None, "error": None, "warnings": [],
           "pin_attempts": 0, "puk_attempts": 0, "pin_rules": None, "check_mode": bool(check_mode)}
    try:
        with contextlib.ExitStack() as stack:
            if not check_mode:
                stack.enter_context(_locked(library_lock_info(module_path)))
            tok = stack.enter_context(RawToken(module_path, label, action))
            info = tok.info()
            rep["token_before"] = _public_token(info)
            rep["token"] = rep["token_before"]
            lo, hi, bproblems = bounds(info["min_pin_len"], info["max_pin_len"], min_len, max_len)
            rep["pin_rules"] = {"min_length": lo, "max_length": hi, "charset": charset}
            if bproblems:
                raise TokenError("pin_rules", "; ".join(bproblems))
            problems = check_new_pin(new_pin, new_pin_confirm, pin if action == "change" else None, lo, hi,
                                     charset, reject_weak)
            if problems:
                raise TokenError("pin_rules", "new PIN refused before anything was presented to the token: "
                                 + "; ".join(problems))
            lock, record = None, {}
            if not check_mode:
                lock = stack.enter_context(_locked(info))
                record = lock.read()
                rep["token_before"] = rep["token"] = _public_token(tok.info())  # read again, under the lock
            if action == "change":
                if not pin:
                    raise TokenError("pin_rules", "action=change needs the current PIN (pin)")
                if check_mode:
                    rep["warnings"] += tok.guard("user", allow_final_try)
                else:
                    try:
                        rep["warnings"] += tok.change_pin(pin, new_pin, allow_final_try)
                    finally:
                        rep["pin_attempts"] = tok.pin_presentations
            elif action == "unblock":
                if not puk:
                    raise TokenError("pin_rules", "action=unblock needs the PUK (puk)")
                known = _puk_locked(rep["token_before"] or {}, record)
                if known and record.get("puk_locked_at"):  # the card's flags may say otherwise: they win below
                    raise TokenError("puk_locked", "the PUK of token %r is blocked (%s): not presented again. A "
                                     "locked PUK cannot be unblocked: the key must be replaced (contact the CA); if "
                                     "the key has been reset since, remove %s" % (tok.label, known, lock.path))
                if check_mode:
                    rep["warnings"] += tok.guard("so", allow_final_try)
                else:
                    try:
                        rep["warnings"] += tok.unblock(puk, new_pin, allow_final_try)
                    except TokenError as e:
                        if e.kind == "puk_locked" and lock is not None:  # remembered: PIV cannot tell it otherwise
                            lock.write(dict(record, puk_locked_at=_now_iso()))
                        raise
                    finally:
                        rep["puk_attempts"] = tok.puk_presentations
            else:
                raise TokenError("pin_rules", "unknown action %r (change or unblock)" % action)
            rep["changed"] = True
            rep["token"] = _public_token(tok.info())
    except TokenError as e:
        rep["error"] = card_state_of(e.to_dict())
        if "token" in rep["error"]:
            rep["token"] = _public_token(rep["error"].pop("token"))
    return rep
