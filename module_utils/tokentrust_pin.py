# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""PIN rules for the USB key (pure Python: no NSS, no token).

A new PIN is checked before anything is presented to the token, so that a PIN the token would refuse
never costs an attempt. Messages describe the rule, never the PIN.

    problems = check_new_pin(new, confirm=confirm, old=old, min_len=4, max_len=8, charset="digits")
"""
from __future__ import annotations

import string

CHARSETS = {
    "digits": ("0123456789", "digits 0-9"),
    "alphanumeric": (string.ascii_letters + string.digits, "letters A-Z a-z and digits 0-9"),
    "printable": ("".join(chr(c) for c in range(0x20, 0x7F)), "printable ASCII characters (no accents)"),
}
DEFAULT_MIN = 4
DEFAULT_MAX = 16


def bounds(token_min=None, token_max=None, min_len=None, max_len=None):
    """(min, max, problems) PIN length: the token's own bounds (ulMinPinLen/ulMaxPinLen), the maximum capped at
    16 by default (what the real keys accept; SoftHSM says 255), changed by the options.

    The options may only stay within what the token accepts: a bound outside the token's range is a problem."""
    problems = []
    tmin = token_min if token_min else DEFAULT_MIN
    tmax = token_max if token_max and token_max < 10000 else DEFAULT_MAX
    lo, hi = tmin, min(tmax, max(DEFAULT_MAX, tmin))  # default cap: 16, as the real keys
    if min_len is not None:
        if min_len < tmin:
            problems.append("pin_min_length %d is below what the token accepts (%d)" % (min_len, tmin))
        lo = max(tmin, min_len)
    if max_len is not None:
        if max_len > tmax:
            problems.append("pin_max_length %d is above what the token accepts (%d)" % (max_len, tmax))
        hi = min(tmax, max_len)
    if lo > hi:
        problems.append("no PIN length fits: minimum %d > maximum %d" % (lo, hi))
    return lo, hi, problems


def is_weak(pin):
    """True for PINs anyone would try first: one repeated character, or a run up/down (1234, 9876, abcd)."""
    if len(pin) < 2:
        return True
    if len(set(pin)) == 1:
        return True
    steps = {ord(b) - ord(a) for a, b in zip(pin, pin[1:])}
    return steps in ({1}, {-1})


def check_new_pin(new, confirm=None, old=None, min_len=DEFAULT_MIN, max_len=DEFAULT_MAX, charset="printable",
                  reject_weak=False, what="new PIN"):
    """Problems with a new PIN (empty list = acceptable). Never quotes the PIN."""
    problems = []
    if charset not in CHARSETS:
        return ["unknown PIN character set %r (choose: %s)" % (charset, ", ".join(sorted(CHARSETS)))]
    if new is None or new == "":
        return ["the %s is empty" % what]
    if confirm is not None and confirm != new:
        problems.append("the %s and its confirmation differ" % what)
    n = len(new)
    if n < min_len or n > max_len:
        problems.append("the %s has %d characters; the token accepts %d to %d" % (what, n, min_len, max_len))
    allowed, label = CHARSETS[charset]
    bad = sorted({c for c in new if c not in allowed})
    if bad:
        problems.append("the %s contains %d character(s) outside the allowed set (%s)" % (what, len(bad), label))
    if old is not None and new == old:
        problems.append("the %s is the same as the current one" % what)
    if reject_weak and is_weak(new):
        problems.append("the %s is too easy to guess (repeated or consecutive characters)" % what)
    return problems


def scrub(text, secrets):
    """`text` with every non-empty secret replaced by ********: a last line of defence for messages."""
    if not isinstance(text, str):
        return text
    for s in secrets:
        if s:
            text = text.replace(s, "********")
    return text


def scrub_all(obj, secrets):
    """scrub() applied to every string of a nested dict/list structure."""
    secrets = [s for s in secrets if s]
    if not secrets:
        return obj
    if isinstance(obj, dict):
        return {k: scrub_all(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_all(v, secrets) for v in obj]
    return scrub(obj, secrets)


# ---------------------------------------------------------------------------------------------- the per-token lock
LOCK_DIR = "/run/tokentrust"


def _lock_dir():
    """A directory only we can write: /run/tokentrust for root; else $XDG_RUNTIME_DIR/tokentrust (inside the user's
    own 0700 runtime directory: nobody else can create it first), then <tmp>/tokentrust-<uid> (mode 0700, ours).
    A candidate that another user created first (squatting it), or that is a link or group/world-writable, is
    refused with the reason; OSError naming every refusal when none is left."""
    import os
    import stat
    import tempfile

    uid = os.geteuid()
    candidates = [LOCK_DIR] if uid == 0 else []
    runtime = os.environ.get("XDG_RUNTIME_DIR") or "/run/user/%d" % uid
    if uid != 0 and os.path.isabs(runtime):
        try:
            rst = os.lstat(runtime)
            if stat.S_ISDIR(rst.st_mode) and rst.st_uid == uid and not rst.st_mode & 0o077:
                candidates.append(os.path.join(runtime, "tokentrust"))
        except OSError:
            pass
    candidates.append(os.path.join(tempfile.gettempdir(), "tokentrust-%d" % uid))
    problems = []
    for d in candidates:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            st = os.lstat(d)
        except OSError as exc:
            problems.append("%s: %s" % (d, exc.strerror))
            continue
        if not stat.S_ISDIR(st.st_mode):
            problems.append("%s is not a directory (a link or a file someone put there): refused" % d)
        elif st.st_uid != uid:
            problems.append("%s belongs to uid %d, not to uid %d (another user created it first): refused, a lock "
                            "there could be held or removed by them; remove it (as root) or run with "
                            "XDG_RUNTIME_DIR set" % (d, st.st_uid, uid))
        elif st.st_mode & 0o022:
            problems.append("%s is writable by others (mode %o): refused" % (d, stat.S_IMODE(st.st_mode)))
        else:
            return d
    raise OSError("no safe directory for the token lock: %s" % "; ".join(problems))


def lock_path(token_info):
    """The lock file of one token: keyed by manufacturer, model and serial (the label can be changed)."""
    import hashlib
    import os

    key = "\0".join(str(token_info.get(k) or "") for k in ("manufacturer", "model", "serial"))
    if not (token_info.get("serial") or "").strip():
        key += "\0" + str(token_info.get("label") or "")  # no serial: the label is all we have
    return os.path.join(_lock_dir(), "token-%s.lock" % hashlib.sha256(key.encode("utf-8")).hexdigest()[:32])


def library_lock_info(library):
    """The lock key of a PKCS#11 library (its real path): runs through the same library are serialised from
    loading it to the end, since a middleware (SoftHSM2's file store, a card reader) may show no token to one process
    while another one logs in."""
    import os

    return {"manufacturer": "pkcs11-library", "serial": os.path.realpath(library or "")}


class TokenLock:
    """Exclusive cross-process lock on one token (fcntl.flock on a file in a root-only / user-only directory), held
    from reading the PIN counter to the end of the login, so that no interleaving of runs presents a PIN that a
    single run would not. ``record`` is a small JSON state kept in the file (the last wrong PIN per run id)."""

    def __init__(self, token_info, timeout=120.0):
        self._error = None
        try:
            self.path = lock_path(token_info)
        except OSError as exc:  # raised when the lock is taken (the caller's try): a message, not a traceback
            self.path, self._error = None, exc
        self.timeout = timeout
        self._fd = None
        self.waited = 0.0

    def __enter__(self):
        import errno
        import fcntl
        import os
        import time

        if self._error is not None:
            raise self._error
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() - t0 > self.timeout:
                    os.close(fd)
                    raise TimeoutError("another run has held the lock of this token for more than %ds (%s)"
                                       % (self.timeout, self.path)) from None
                time.sleep(0.05)
        self.waited = time.monotonic() - t0
        self._fd = fd
        return self

    def __exit__(self, *exc):
        import os

        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        return False

    def read(self):
        import json
        import os

        os.lseek(self._fd, 0, 0)
        data = b""
        while True:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                break
            data += chunk
        try:
            out = json.loads(data.decode("utf-8")) if data.strip() else {}
        except ValueError:
            out = {}
        return out if isinstance(out, dict) else {}

    def write(self, record):
        import json
        import os

        data = json.dumps(record, sort_keys=True).encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, 0)
        os.write(self._fd, data)
