"""The lab's stand-in for the USB key: a SoftHSM2 token behind pin_guard (the PIN policy stand-in).

One token per directory, with its own SoftHSM2 configuration, so tests make tokens per test:

    tok = create_token(tmp_path / "token")           # "CERTEUROPE LAB", 2 certificates + RSA keys
    tok.module         # the pin_guard library bound to this token (load it in NSS, pkcs11-tool...)
    tok.env()          # SOFTHSM2_CONF for tools that load SoftHSM2 directly
    token_info(tok)    # label, serial, flags (exact CKF_* bits), read through the module
    tok.counters()     # (wrong user PINs, wrong SO PINs) from pin_guard's state file

Layout of a token directory:

    softhsm2.conf          SoftHSM2 configuration (tokendir = ./tokens)
    tokens/                SoftHSM2 object store; tokens/pin_guard.state = the PIN counters
    libpin_guard.so        a copy of lab/build/libpin_guard.so ...
    pin_guard.conf         ... bound to this token by this file (module, softhsm2_conf, state)
    token.json             what is on the token (labels, CKA_ID, fingerprints) and, lab only, PIN/PUK

CLI: ``python -m lab.token build`` (compile pin_guard), ``create DIR``, ``info DIR|MODULE``,
``reset-counters DIR`` (lab only: a real card has no such thing).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

ROOT = Path(__file__).resolve().parent.parent
PIN_GUARD_SRC = ROOT / "lab" / "pin_guard"
BUILD_DIR = ROOT / "lab" / "build"
SOFTHSM_MODULE = Path(os.environ.get("PIN_GUARD_MODULE") or "/usr/lib/softhsm/libsofthsm2.so")

DEFAULT_LABEL = "CERTEUROPE LAB"
DEFAULT_PIN = "1234"  # lab only
DEFAULT_PUK = "12345678"  # lab only: the PUK is the token's SO PIN
HOLDER = "JEAN DUPONT"

# PKCS#11 token flags (CK_TOKEN_INFO.flags)
CKF_USER_PIN_INITIALIZED = 0x8
CKF_TOKEN_INITIALIZED = 0x400
CKF_USER_PIN_COUNT_LOW = 0x10000
CKF_USER_PIN_FINAL_TRY = 0x20000
CKF_USER_PIN_LOCKED = 0x40000
CKF_SO_PIN_COUNT_LOW = 0x100000
CKF_SO_PIN_FINAL_TRY = 0x200000
CKF_SO_PIN_LOCKED = 0x400000
PIN_FLAGS = {
    "user_pin_count_low": CKF_USER_PIN_COUNT_LOW,
    "user_pin_final_try": CKF_USER_PIN_FINAL_TRY,
    "user_pin_locked": CKF_USER_PIN_LOCKED,
    "so_pin_count_low": CKF_SO_PIN_COUNT_LOW,
    "so_pin_final_try": CKF_SO_PIN_FINAL_TRY,
    "so_pin_locked": CKF_SO_PIN_LOCKED,
}
PIN_FLAG_MASK = sum(PIN_FLAGS.values())


class LabTokenError(RuntimeError):
    """A lab token could not be built or read; the message says which step and why."""


# ---------------------------------------------------------------------------------------------
# pin_guard build


def build_pin_guard(out_dir: Path = BUILD_DIR, cc: str = "gcc") -> Path:
    """Compile pin_guard into `out_dir`/libpin_guard.so when missing or older than its sources."""
    out_dir = Path(out_dir)
    lib = out_dir / "libpin_guard.so"
    sources = [PIN_GUARD_SRC / "pin_guard.c", PIN_GUARD_SRC / "pkcs11_min.h"]
    newest = max(s.stat().st_mtime for s in sources)
    if lib.exists() and lib.stat().st_mtime >= newest:
        return lib
    if shutil.which(cc) is None:
        raise LabTokenError(f"cannot build pin_guard: the C compiler {cc!r} is not installed (apt-get install gcc)")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libpin_guard.", suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [
        cc, "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes", "-Wformat=2",
        "-std=c11", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
        "-o", tmp, str(sources[0]), "-ldl",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise LabTokenError(f"cannot build pin_guard ({' '.join(cmd)}):\n{proc.stderr.strip()}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, lib)  # atomic: concurrent builds never see a half-written library
    return lib


# ---------------------------------------------------------------------------------------------
# the token


@dataclass
class TokenObject:
    """One certificate + private key pair on the token (same CKA_ID and CKA_LABEL on both)."""

    label: str
    id_hex: str
    subject: str
    issuer: str
    serial: int
    not_after: str
    sha256: str
    cert_pem: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LabToken:
    root: Path
    label: str = DEFAULT_LABEL
    pin: str = DEFAULT_PIN
    puk: str = DEFAULT_PUK
    objects: list = field(default_factory=list)
    serial_number: str = ""

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    @property
    def tokendir(self) -> Path:
        return self.root / "tokens"

    @property
    def module(self) -> Path:
        """pin_guard bound to this token: the library to give NSS, Firefox, pkcs11-tool."""
        return self.root / "libpin_guard.so"

    @property
    def guard_conf(self) -> Path:
        return self.root / "pin_guard.conf"

    @property
    def state(self) -> Path:
        return self.tokendir / "pin_guard.state"

    @property
    def softhsm_module(self) -> Path:
        return SOFTHSM_MODULE

    def env(self, base: Optional[dict] = None) -> dict:
        """An environment for tools that load SoftHSM2 directly (pin_guard needs none)."""
        env = dict(os.environ if base is None else base)
        env["SOFTHSM2_CONF"] = str(self.conf)
        return env

    def counters(self) -> tuple:
        """(wrong user PINs, wrong SO PINs) as pin_guard keeps them for this token."""
        serial = self.serial()
        try:
            lines = self.state.read_text().splitlines()
        except FileNotFoundError:
            return (0, 0)
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == serial:
                return (int(parts[1]), int(parts[2]))
        return (0, 0)

    def reset_counters(self) -> None:
        """Lab only: forget every wrong PIN/PUK (a real card has no such thing)."""
        for p in (self.state, Path(str(self.state) + ".lock")):
            if p.exists():
                p.unlink()

    def serial(self) -> str:
        if not self.serial_number:
            self.serial_number = token_info(self.module)["serial"]
        return self.serial_number

    def add_certificate(self, issued, label: str, id_hex: Optional[str] = None) -> TokenObject:
        """Put a certificate and its private key on the token (key via softhsm2-util, cert via pkcs11-tool)."""
        obj = _import_pair(self, issued, label, id_hex)
        self.objects.append(obj)
        self._save()
        return obj

    def to_json(self, secrets: bool = True) -> dict:
        out = {
            "root": str(self.root),
            "label": self.label,
            "serial": self.serial(),
            "module": str(self.module),
            "softhsm_module": str(self.softhsm_module),
            "softhsm2_conf": str(self.conf),
            "state": str(self.state),
            "objects": [o.to_json() for o in self.objects],
        }
        if secrets:
            out["lab_only_secrets"] = {"pin": self.pin, "puk": self.puk}
        return out

    def _save(self) -> None:
        data = self.to_json()
        _write_atomic(self.root / "token.json", json.dumps(data, indent=2) + "\n", 0o600)

    @classmethod
    def load(cls, root: Path) -> LabToken:
        root = Path(root)
        meta = root / "token.json"
        if not meta.exists():
            raise LabTokenError(f"{root} is not a lab token (no token.json): see `python -m lab.token create`")
        data = json.loads(meta.read_text())
        tok = cls(root=root, label=data["label"], pin=data["lab_only_secrets"]["pin"],
                  puk=data["lab_only_secrets"]["puk"], serial_number=data.get("serial", ""))
        tok.objects = [TokenObject(**o) for o in data["objects"]]
        return tok


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _run(cmd: Sequence[str], env: dict, what: str, secrets: Sequence[str] = ()) -> str:
    proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shown = " ".join("***" if c in secrets else c for c in cmd)
        err = (proc.stderr or proc.stdout).strip()
        for s in secrets:
            err = err.replace(s, "***")
        raise LabTokenError(f"{what} failed ({shown}): {err}")
    return proc.stdout


def _key_id(cert: x509.Certificate) -> str:
    """CKA_ID: the certificate's subject key identifier (SHA-1 of the public key), as many cards do."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


def _import_pair(tok: LabToken, issued, label: str, id_hex: Optional[str]) -> TokenObject:
    id_hex = id_hex or _key_id(issued.cert)
    env = tok.env()
    with tempfile.TemporaryDirectory(prefix="labtoken-") as tmp:
        key_path = Path(tmp) / "key.pem"
        cert_path = Path(tmp) / "cert.der"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(issued.key_pem)
        cert_path.write_bytes(issued.der)
        _run(["softhsm2-util", "--import", str(key_path), "--token", tok.label, "--label", label,
              "--id", id_hex, "--pin", tok.pin], env, f"importing the private key of {label!r}", [tok.pin])
        _run(["pkcs11-tool", "--module", str(tok.softhsm_module), "--token-label", tok.label, "--login",
              "--pin", tok.pin, "--write-object", str(cert_path), "--type", "cert", "--id", id_hex,
              "--label", label], env, f"writing the certificate {label!r}", [tok.pin])
    cert = issued.cert
    return TokenObject(
        label=label, id_hex=id_hex, subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number, not_after=cert.not_valid_after_utc.isoformat(),
        sha256=cert.fingerprint(hashes.SHA256()).hex().upper(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def standin_holders(pki: dict, holder: str = HOLDER) -> list:
    """The two certificates of the real key, on the stand-in chain: (Issued, CKA_LABEL) pairs.

    RSA 2048 like the real key; one under "Lab Advanced CA V3", one under "Lab Classe 3 Plus V2".
    """
    from lab.pki import make_leaf

    out = []
    for ca in ("Lab Advanced CA V3", "Lab Classe 3 Plus V2"):
        leaf = make_leaf(holder, issuer=pki[ca], client=True, key_type="rsa")
        out.append((leaf, f"{holder} ({ca})"))
    return out


def create_token(
    root: Path,
    *,
    label: str = DEFAULT_LABEL,
    pin: str = DEFAULT_PIN,
    puk: str = DEFAULT_PUK,
    pki: Optional[dict] = None,
    holders: Optional[Sequence] = None,
    max_user_tries: int = 3,
    max_so_tries: int = 3,
    guard_lib: Optional[Path] = None,
) -> LabToken:
    """A fresh SoftHSM2 token in `root` (which must not hold one yet), behind a pin_guard copy.

    `holders`: (Issued, label) pairs to put on the token; default: the two stand-in certificates of
    JEAN DUPONT on `pki` (default: a new `lab.pki.certeurope_standin()`). `holders=[]` = empty token.
    """
    root = Path(root).resolve()
    if (root / "token.json").exists():
        raise LabTokenError(f"{root} already holds a lab token: use LabToken.load() or remove the directory")
    for tool in ("softhsm2-util", "pkcs11-tool"):
        if shutil.which(tool) is None:
            raise LabTokenError(f"{tool} is not installed (apt-get install softhsm2 opensc)")
    if not SOFTHSM_MODULE.exists():
        raise LabTokenError(f"the SoftHSM2 module {SOFTHSM_MODULE} does not exist (apt-get install softhsm2)")
    if holders is None:
        if pki is None:
            from lab.pki import certeurope_standin

            pki = certeurope_standin()
        holders = standin_holders(pki)
    lib = Path(guard_lib) if guard_lib else build_pin_guard()

    tok = LabToken(root=root, label=label, pin=pin, puk=puk)
    tok.tokendir.mkdir(parents=True, exist_ok=True)
    _write_atomic(tok.conf, (
        "# SoftHSM2 configuration of a tokentrust lab token (stand-in for the USB key)\n"
        f"directories.tokendir = {tok.tokendir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = true\n"
    ))
    _run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", puk],
         tok.env(), f"initialising the token {label!r}", [pin, puk])
    shutil.copy2(lib, tok.module)
    _write_atomic(tok.guard_conf, (
        "# pin_guard (tokentrust lab stand-in) bound to this token\n"
        f"module = {SOFTHSM_MODULE}\n"
        f"softhsm2_conf = {tok.conf}\n"
        f"state = {tok.state}\n"
        f"max_user_tries = {max_user_tries}\n"
        f"max_so_tries = {max_so_tries}\n"
    ))
    for issued, obj_label in holders:
        tok.objects.append(_import_pair(tok, issued, obj_label, None))
    tok.serial_number = token_info(tok.module, label)["serial"]
    tok._save()
    return tok


def refresh_module(tok: LabToken, lib: Optional[Path] = None) -> bool:
    """Replace the token's pin_guard copy when the build is newer; True when it changed."""
    lib = Path(lib) if lib else build_pin_guard()
    if tok.module.exists() and tok.module.read_bytes() == lib.read_bytes():
        return False
    tmp = tok.module.with_name(".libpin_guard.so.new")
    shutil.copy2(lib, tmp)
    os.replace(tmp, tok.module)
    return True


# ---------------------------------------------------------------------------------------------
# reading the token through its module (ctypes, in a child process: one module per process)


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _TokenInfo(ctypes.Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32), ("manufacturerID", ctypes.c_char * 32), ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16), ("flags", ctypes.c_ulong),
        ("counts", ctypes.c_ulong * 10), ("hw", _Version), ("fw", _Version), ("utcTime", ctypes.c_char * 16),
    ]


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _Version)] + [(f"f{i}", ctypes.c_void_p) for i in range(68)]


_RV = ctypes.c_ulong
_IDX = {"C_Initialize": 0, "C_Finalize": 1, "C_GetSlotList": 4, "C_GetTokenInfo": 6}


def _read_token_info_inprocess(module: str) -> list:
    lib = ctypes.CDLL(module)
    flp = ctypes.POINTER(_FunctionList)()
    rv = lib.C_GetFunctionList(ctypes.byref(flp))
    if rv:
        raise LabTokenError(f"C_GetFunctionList of {module} failed: 0x{rv:x}")
    fl = flp.contents

    def fn(name, *argtypes):
        return ctypes.CFUNCTYPE(_RV, *argtypes)(getattr(fl, f"f{_IDX[name]}"))

    init = fn("C_Initialize", ctypes.c_void_p)
    fin = fn("C_Finalize", ctypes.c_void_p)
    slots_fn = fn("C_GetSlotList", ctypes.c_ubyte, ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_ulong))
    info_fn = fn("C_GetTokenInfo", ctypes.c_ulong, ctypes.POINTER(_TokenInfo))
    rv = init(None)
    if rv:
        raise LabTokenError(f"C_Initialize of {module} failed: 0x{rv:x}")
    try:
        n = ctypes.c_ulong(0)
        rv = slots_fn(1, None, ctypes.byref(n))
        if rv:
            raise LabTokenError(f"C_GetSlotList failed: 0x{rv:x}")
        arr = (ctypes.c_ulong * max(n.value, 1))()
        rv = slots_fn(1, arr, ctypes.byref(n))
        if rv:
            raise LabTokenError(f"C_GetSlotList failed: 0x{rv:x}")
        out = []
        for i in range(n.value):
            ti = _TokenInfo()
            rv = info_fn(arr[i], ctypes.byref(ti))
            if rv:
                raise LabTokenError(f"C_GetTokenInfo(slot {arr[i]}) failed: 0x{rv:x}")
            flags = ti.flags
            out.append({
                "slot": arr[i],
                "label": ti.label.decode("utf-8", "replace").rstrip(),
                "serial": ti.serialNumber.decode("ascii", "replace").strip(),
                "flags": flags,
                "pin_flags": sorted(k for k, v in PIN_FLAGS.items() if flags & v),
            })
        return out
    finally:
        fin(None)


def token_info(module, label: Optional[str] = None, env: Optional[dict] = None) -> dict:
    """Label, serial and flags of the token (the one with `label`, or the first), read through `module`.

    Runs in a child process: a PKCS#11 module (and SoftHSM2's configuration) is per process.
    """
    if isinstance(module, LabToken):
        label = label or module.label
        module = module.module
    proc = subprocess.run([sys.executable, "-m", "lab.token", "info", str(module)], capture_output=True, text=True,
                          cwd=str(ROOT), env=env, check=False)
    if proc.returncode != 0:
        raise LabTokenError(f"reading the token through {module} failed: {proc.stderr.strip()}")
    tokens = json.loads(proc.stdout)
    for t in tokens:
        if label is None or t["label"] == label:
            return t
    raise LabTokenError(f"no token labelled {label!r} behind {module} (found: {[t['label'] for t in tokens]})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.token", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile pin_guard into lab/build/")
    b.add_argument("--out", default=str(BUILD_DIR))
    c = sub.add_parser("create", help="create a lab token (stand-in PKI generated on the fly)")
    c.add_argument("dir")
    c.add_argument("--label", default=DEFAULT_LABEL)
    i = sub.add_parser("info", help="token label, serial and flags through a module (or a token dir)")
    i.add_argument("target")
    r = sub.add_parser("reset-counters", help="lab only: forget wrong PINs/PUKs of a token dir")
    r.add_argument("dir")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            print(build_pin_guard(Path(args.out)))
        elif args.cmd == "create":
            tok = create_token(Path(args.dir), label=args.label)
            print(json.dumps(tok.to_json(secrets=False), indent=2))
        elif args.cmd == "info":
            target = Path(args.target)
            module = target / "libpin_guard.so" if target.is_dir() else target
            print(json.dumps(_read_token_info_inprocess(str(module))))
        elif args.cmd == "reset-counters":
            LabToken.load(Path(args.dir)).reset_counters()
    except LabTokenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
