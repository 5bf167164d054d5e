# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pull-mode signing key, on the controller (role tokentrust_pull; docs/security.md, "Signed pull content").

    pull_key.py --key PATH [--check]

Makes the Ed25519 signing key at PATH once (PKCS#8 PEM, 0600, created with O_EXCL | O_NOFOLLOW in a directory owned
by the caller and writable by nobody else), or takes the one that is there (refused when another user can read it
or its directory is group/world-writable). Prints one JSON line: {"changed": bool, "public_key": base64 of the
32 raw bytes, "key_id": first 16 hex digits of its SHA-256}. Only the public key leaves this machine.

Ed25519 through `cryptography` (already a pinned controller dependency, requirements.txt): one small key, one
deterministic signature, no signature tool to install on the workstations (their agent runs in the role's venv,
which has the same pinned cryptography), and no GnuPG keyring or trust database to manage.

Also imported by publish.py (sign(), load_private()).
"""
import argparse
import base64
import hashlib
import json
import os
import stat
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNED_FORMAT = "tokentrust-pull-signed/1"


class KeyError_(Exception):
    """The key or its directory cannot be used (the message says which and why)."""


def check_dir(d):
    """The key's directory: owned by us (or root), not writable by group or others."""
    st = os.stat(d)
    if st.st_uid not in (os.geteuid(), 0):
        raise KeyError_("%s is owned by uid %d, not by you (uid %d): keep the signing key in a directory of your own"
                        % (d, st.st_uid, os.geteuid()))
    if st.st_mode & 0o022:
        raise KeyError_("%s is group- or world-writable (mode %04o): someone else could replace the signing key; "
                        "chmod go-w it or choose another tokentrust_pull_signing_key" % (d, stat.S_IMODE(st.st_mode)))


def public_raw(priv):
    return priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(raw):
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private(path):
    d = os.path.dirname(os.path.abspath(path))
    check_dir(d)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeyError_("cannot open the signing key %s: %s" % (path, exc.strerror or exc)) from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyError_("%s is not a regular file" % path)
        if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o077:
            raise KeyError_("the signing key %s is readable or writable by others (uid %d, mode %04o): chmod 600 it "
                            "(and rotate it if others may have read it: docs/security.md)"
                            % (path, st.st_uid, stat.S_IMODE(st.st_mode)))
        data = f.read(65536)
    try:
        priv = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyError_("%s is not an unencrypted PEM private key: %s" % (path, exc)) from exc
    if not isinstance(priv, Ed25519PrivateKey):
        raise KeyError_("%s is not an Ed25519 key (pull content is signed with Ed25519)" % path)
    return priv


def make(path, check=False):
    """(changed, private key or None in check mode when it would be made)."""
    if os.path.lexists(path):
        return False, load_private(path)
    d = os.path.dirname(os.path.abspath(path))
    if check:
        return True, None
    os.makedirs(d, mode=0o700, exist_ok=True)
    check_dir(d)
    priv = Ed25519PrivateKey.generate()
    pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return True, priv


def sign(priv, payload):
    """The signed envelope (bytes) of the payload dict: the exact payload bytes, their signature, the key's id."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    raw = public_raw(priv)
    return (json.dumps({"format": SIGNED_FORMAT, "key_id": key_id(raw), "payload": base64.b64encode(body).decode(),
                        "signature": base64.b64encode(priv.sign(body)).decode()}, indent=1, sort_keys=True)
            + "\n").encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    try:
        changed, priv = make(os.path.expanduser(a.key), a.check)
    except (KeyError_, OSError) as exc:
        sys.stderr.write("tokentrust pull signing key: %s\n" % exc)
        return 2
    if priv is None:
        print(json.dumps({"changed": True, "public_key": None, "key_id": None}))
        return 0
    raw = public_raw(priv)
    print(json.dumps({"changed": changed, "public_key": base64.b64encode(raw).decode(), "key_id": key_id(raw)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
