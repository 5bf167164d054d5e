# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The USB key through NSS: load its PKCS#11 module, find the token, read its PIN state, log in ONCE,
change the PIN, unblock it with the PUK, list the certificates that have a private key on the token.

    with TokenSession(library, label=None, ca_pems=[...], server_ca_pems=[...]) as ts:
        tok = ts.token                       # the token (by label, or the only one present)
        tok.info()                           # label, serial, flags, PIN state, PIN lengths
        tok.login(pin)                       # guarded: refuses at final try / locked; one attempt at most
        tok.certificates()                   # raw facts of the token's certificates (der, label, has_key, handle)

Bindings only (issue 30): the test login and the PIN workflows, the certificate choice and the texts of what to do
live above, in module_utils/tokentrust_login.py, tokentrust_pin_action.py and tokentrust_advice.py; this file imports
nothing but the floor (tokentrust_errors, tokentrust_facts) and the other bindings. An uninitialised slot without a
label (SoftHSM2's free slot) is not a token (is_empty_slot).

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

import datetime
import os
import platform
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
CKF_TOKEN_INITIALIZED = 0x400


def is_empty_slot(flags, label):
    """A slot whose token was never initialised and has no label (SoftHSM2 always shows one such free slot): not a
    key. A card's token is initialised (OpenSC sets CKF_TOKEN_INITIALIZED) or at least labelled."""
    return not (flags & CKF_TOKEN_INITIALIZED) and not (label or "").strip()


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


# secmodt.h: SECMOD_FRIENDLY_FLAG, the slot flag "PublicCerts" of a module spec's slotParams; CKM_INVALID_MECHANISM.
_FRIENDLY_FLAG = 0x10000000
_CKM_INVALID_MECHANISM = 0xFFFFFFFF
_FRIENDLY = []  # the PK11DefaultArrayEntry, made at the first use: importing this module needs no cffi


def _public_certs(slot):
    """Tell NSS that the certificates of `slot` are public objects, as PKCS#11 makes them (CKA_PRIVATE false), so
    that they are listed before the PIN. NSS hides every object of a token that needs a login and is not marked
    "friendly" (what `slotFlags=[PublicCerts]` does in a module spec): smart cards through OpenSC, Classic Client
    tokens. Without it the certificates are seen only after a PIN try, and the test login could not refuse a key
    that holds no usable certificate before the PIN."""
    if not lib.nss3.PK11_IsFriendly(slot):
        if not _FRIENDLY:
            _FRIENDLY.append(ffi.new("PK11DefaultArrayEntry *",
                                     {"flag": _FRIENDLY_FLAG, "mechanism": _CKM_INVALID_MECHANISM}))
        lib.nss3.PK11_UpdateSlotAttribute(slot, _FRIENDLY[0], 1)


def _select(found, label, module_path, slot_count):
    """The one entry of `found` ([(label, obj)] or [(label, obj, reader)]) to use; TokenError no_token /
    token_not_found / several_tokens (card states other_card / several_cards). Never a guess: several keys without a
    label that tells them apart is an error, whichever would have been first."""
    labels = [f[0] for f in found]
    where = ["%r%s" % (f[0], " in %s" % f[2] if len(f) > 2 and f[2] else "") for f in found]
    if not found:
        raise TokenError("no_token", "no token present on PKCS#11 module %s (%d slot(s), all empty)"
                         % (module_path, slot_count), module=module_path, slot_count=slot_count, pcsc=uses_pcsc())
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
                if self.fl.C_GetTokenInfo(slots[i], ti) == 0 and not is_empty_slot(int(ti.flags), _padded(ti.label)):
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

    def present(self):
        """Is the key still in its reader? (NSS caches a slot's presence for about one second.)"""
        return bool(lib.nss3.PK11_IsPresent(self.slot))

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
    def certificates(self):
        """Certificates on the token, as raw facts: [(dict der, nickname, issuer_der, has_key, CERTCertificate* dup)].
        `has_key` says whether the private key is there too (needs login: private keys are private objects). The
        handles are owned by the session and destroyed when it closes."""
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
                key = lib.nss3.PK11_FindPrivateKeyFromCert(self.slot, cert, ffi.NULL)
                if key != ffi.NULL:
                    lib.nss3.SECKEY_DestroyPrivateKey(key)
                dup = lib.nss3.CERT_DupCertificate(cert)
                self.session._certs.append(dup)
                out.append({"der": bytes(ffi.buffer(cert.derCert.data, cert.derCert.len)),
                            "issuer_der": bytes(ffi.buffer(cert.derIssuer.data, cert.derIssuer.len)),
                            "nickname": _str(ffi.cast("char *", node.appData)) if node.appData != ffi.NULL else None,
                            "has_key": key != ffi.NULL, "handle": dup})
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
                _public_certs(slot)
                tok = Token(self, slot)
                info = tok.info()
                if is_empty_slot(info["flags_value"], info["label"]):
                    tok.close()  # SoftHSM2's free slot: a token that was never initialised is not a key
                    continue
                present.append(tok)
        self.tokens = present
        self.token = _select([(t.label, t, t.slot_name) for t in present], self.label, self.module_path,
                             mod.slotCount)
        return self.token

    @property
    def pin_requests(self):
        return _PINS.requests
