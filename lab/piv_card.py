"""The lab's USB key as it really is: a PIV smart card (NIST SP 800-73-4) behind a virtual reader.

The card is this Python process. It connects to Debian's `vsmartcard-vpcd` reader driver, which runs inside
the real pcscd and listens on 127.0.0.1:<port> (vpcd's normal mode: the reader listens, the card connects).
Starting the process is inserting the card; stopping it is pulling it out. OpenSC's PIV driver supports it
as is (no driver of ours on the workstation).

    python -m lab.piv_card create DIR [--pki-dir D]     # a new card: keys, the holder's two certificates
    python -m lab.piv_card run DIR --port 35963         # insert it into the reader on 127.0.0.1:35963
    python -m lab.piv_card status DIR                   # PIN/PUK counters, as the card holds them

What the card implements (SP 800-73-4 part 2, the subset OpenSC uses):

    SELECT (00 A4 04 00) the PIV application    -> application property template (61 {4F PIX, 79 {4F AID}})
    GET DATA (00 CB 3F FF, 5C tag)             -> discovery (7E), CHUID, CCC, certificates (9A, 9C), else 6A82
    VERIFY (00 20 00 80)                        -> the PIN with the card's own retry counter (63Cx, 6983);
                                                  no data = the PIN state (9000 verified, 63Cx tries left)
    CHANGE REFERENCE DATA (00 24 00 80/81)      -> PIN (or PUK) change, old value checked against its counter
    RESET RETRY COUNTER (00 2C 00 80)           -> new PIN with the PUK (PUK counter; 6983 once blocked)
    GENERAL AUTHENTICATE (00 87 alg key)        -> RSA 2048 (raw) / EC P-256 with key 9A or 9C; 9C asks for
                                                  the PIN right before each use (PIN always)
    GET RESPONSE (00 C0), command chaining (CLA 10), extended length

DIR/card.json holds everything the card keeps (keys, certificates, PIN, PUK, counters), rewritten atomically
before the answer that depends on it leaves the card: pulling the card changes nothing. Tests read the
counters from this file, never from tokentrust's own report. DIR/apdu.log gets one line per APDU, "CLA INS P1 P2"
(its count is the "APDU round trips" figure). Lab only: card.json holds the PIN and PUK in clear, like token.json.

Test-only knob (a card pulled in the middle of a login): DIR/delay.json = {"ins": "87", "seconds": 30} (optionally
"p2": ["9A", "9C"]) makes the card, at the next APDU with that instruction byte (and P2), rename the file to
DIR/delaying.json (one shot: the knob is spent) and wait that long before answering. A test waits for
delaying.json, then pulls the card: the login is then certainly in progress, with no timing guess.
`set_delay(DIR, ins, seconds, p2)` / `clear_delay(DIR)`.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

PIV_AID = bytes.fromhex("A000000308000010000100")
PIV_PIX = PIV_AID[5:]
ATR = bytes.fromhex("3B80800101")  # generic T=0/T=1 ATR, no historical bytes: no OpenSC driver claims it by ATR
DEFAULT_PIN = "1234"  # lab only (the card accepts 4 to 8 characters; SP 800-73-4 says 6 to 8 digits)
DEFAULT_PUK = "12345678"  # lab only
PIN_TRIES = 3
PUK_TRIES = 3
HOLDER = "JEAN DUPONT"
# key reference -> (GET DATA object tag, what OpenSC calls it)
SLOTS = {0x9A: (0x5FC105, "PIV Authentication"), 0x9C: (0x5FC10A, "Digital Signature"),
         0x9D: (0x5FC10B, "Key Management"), 0x9E: (0x5FC101, "Card Authentication")}
OBJ_CHUID, OBJ_CCC, OBJ_DISCOVERY = 0x5FC102, 0x5FC107, 0x7E
VPCD_OFF, VPCD_ON, VPCD_RESET, VPCD_ATR = 0, 1, 2, 4


class CardError(RuntimeError):
    """The card could not be made, loaded or inserted; the message says what and where."""


def tlv(tag: int, value: bytes) -> bytes:
    t = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    n = len(value)
    if n < 0x80:
        ln = bytes([n])
    elif n < 0x100:
        ln = bytes([0x81, n])
    else:
        ln = bytes([0x82]) + n.to_bytes(2, "big")
    return t + ln + value


def parse_tlv(data: bytes) -> list:
    """[(tag, value)] of a BER-TLV string (tags of 1 to 3 bytes)."""
    out, i = [], 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:
            while True:
                tag = (tag << 8) | data[i]
                i += 1
                if not data[i - 1] & 0x80:
                    break
        n = data[i]
        i += 1
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[i:i + k], "big")
            i += k
        out.append((tag, data[i:i + n]))
        i += n
    return out


def _sw(code: int) -> bytes:
    return code.to_bytes(2, "big")


def _pad(secret: str) -> bytes:
    raw = secret.encode("utf-8")
    return raw + b"\xff" * (8 - len(raw))


def _atomic_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".card-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------- making a card


def create_card(root: Path, holders: Optional[list] = None, *, pki: Optional[dict] = None, pin: str = DEFAULT_PIN,
                puk: str = DEFAULT_PUK, pin_tries: int = PIN_TRIES, puk_tries: int = PUK_TRIES) -> dict:
    """A new card in `root`/card.json. `holders`: [(lab.pki.Issued, key reference)] (default: the manual's double
    certificate of JEAN DUPONT, RSA 2048 like the real key: "Lab Advanced CA V3" in 9A, "Lab Classe 3 Plus V2" in
    9C, on `pki` = {CA name: Issued}). Returns the state."""
    root = Path(root)
    if (root / "card.json").exists():
        raise CardError(f"{root} already holds a card: use load_state() or remove the directory")
    if holders is None:
        from lab.pki import certeurope_standin, make_leaf

        pki = pki or certeurope_standin()
        holders = [(make_leaf(HOLDER, issuer=pki[ca], client=True, key_type="rsa"), ref)
                   for ca, ref in (("Lab Advanced CA V3", 0x9A), ("Lab Classe 3 Plus V2", 0x9C))]
    if not 4 <= len(pin) <= 8 or len(puk) != 8:
        raise CardError("the card takes a PIN of 4 to 8 characters and a PUK of 8")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    guid = os.urandom(16)
    keys = {}
    for issued, ref in holders:
        keys["%02X" % ref] = {
            "cert": base64.b64encode(issued.der).decode(),
            "key": issued.key_pem.decode(),
            "label": issued.name,
            "sha256": issued.sha256,
        }
    state = {"version": 1, "guid": guid.hex().upper(), "pin": pin, "puk": puk,
             "pin_tries_max": pin_tries, "pin_tries_left": pin_tries,
             "puk_tries_max": puk_tries, "puk_tries_left": puk_tries, "keys": keys,
             "counters": {"verify": 0, "verify_wrong": 0, "change": 0, "reset_retry": 0, "sign": 0}}
    _atomic_json(root / "card.json", state)
    return state


def load_state(root: Path) -> dict:
    try:
        return json.loads((Path(root) / "card.json").read_text())
    except (OSError, ValueError) as exc:
        raise CardError(f"no readable card in {root} ({exc}): make one with `python -m lab.piv_card create`") from None


def counters(root: Path) -> dict:
    """The card's own PIN/PUK counters, read from its state file (what the tests assert)."""
    s = load_state(root)
    return {"pin_tries_left": s["pin_tries_left"], "puk_tries_left": s["puk_tries_left"],
            "pin_tries_max": s["pin_tries_max"], "puk_tries_max": s["puk_tries_max"], **s["counters"]}


DELAY_FILE, DELAYING_FILE = "delay.json", "delaying.json"
INS = {"select": 0xA4, "get_data": 0xCB, "verify": 0x20, "change_reference": 0x24, "reset_retry": 0x2C,
       "general_authenticate": 0x87}


def set_delay(root: Path, ins: int = INS["general_authenticate"], seconds: float = 30.0,
              p2: Optional[tuple] = None) -> None:
    """Test only: the next APDU with instruction `ins` (and a P2 among `p2` when given: for GENERAL AUTHENTICATE, the
    key reference, e.g. the signing keys 9A/9C, not the 9B admin key OpenSC 0.26 probes before any PIN) waits
    `seconds` before its answer (see the module's text)."""
    root = Path(root)
    for f in (DELAY_FILE, DELAYING_FILE):
        (root / f).unlink(missing_ok=True)
    spec = {"ins": "%02X" % ins, "seconds": float(seconds)}
    if p2 is not None:
        spec["p2"] = ["%02X" % k for k in p2]
    _atomic_json(root / DELAY_FILE, spec)


def clear_delay(root: Path) -> None:
    for f in (DELAY_FILE, DELAYING_FILE):
        (Path(root) / f).unlink(missing_ok=True)


def delaying(root: Path) -> bool:
    """True once the card has met the delayed instruction and is waiting (the moment to pull it)."""
    return (Path(root) / DELAYING_FILE).exists()


def apdu_count(root: Path) -> int:
    try:
        with open(Path(root) / "apdu.log", "rb") as f:
            return sum(1 for _line in f)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------- the card


class PivCard:
    """The card's logic: APDU in, response out. State written to card.json before any answer that depends on it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.state = load_state(self.root)
        self._keys = {}
        for ref, k in self.state["keys"].items():
            self._keys[int(ref, 16)] = (serialization.load_pem_private_key(k["key"].encode(), None),
                                        base64.b64decode(k["cert"]))
        self.log = open(self.root / "apdu.log", "ab", buffering=0)  # noqa: SIM115 - lives as long as the card
        self.power_on()

    # -- power and sessions
    def power_on(self) -> None:
        self.selected = False
        self.pin_verified = False
        self.pin_always = False  # VERIFY just succeeded: one use of the 9C key allowed
        self.pending = b""  # response bytes waiting for GET RESPONSE
        self.chain = b""  # command data received with CLA 0x10

    def save(self) -> None:
        _atomic_json(self.root / "card.json", self.state)

    def count(self, what: str) -> None:
        self.state["counters"][what] = self.state["counters"].get(what, 0) + 1

    # -- APDU
    def _delay(self, ins: int, p2: Optional[int]) -> None:
        """The test-only knob: DIR/delay.json names an instruction (and a P2); its next APDU waits (one shot)."""
        knob = self.root / DELAY_FILE
        if not knob.exists():
            return
        try:
            spec = json.loads(knob.read_text())
            if int(spec["ins"], 16) != ins or ("p2" in spec and p2 not in [int(k, 16) for k in spec["p2"]]):
                return
            seconds = float(spec["seconds"])
            os.replace(knob, self.root / DELAYING_FILE)
        except (OSError, ValueError, KeyError, TypeError):
            return
        time.sleep(seconds)

    def process(self, apdu: bytes) -> bytes:
        self.log.write(b"%02X%02X %s\n" % (apdu[0], apdu[1], apdu[2:4].hex().upper().encode()) if len(apdu) >= 2
                       else b"??\n")  # CLA INS, then P1 P2
        if len(apdu) >= 2:
            self._delay(apdu[1], apdu[3] if len(apdu) >= 4 else None)
        if len(apdu) < 4:
            return _sw(0x6700)
        cla, ins, p1, p2 = apdu[:4]
        data, le = self._body(apdu[4:])
        if data is None:
            return _sw(0x6700)
        if ins == 0xC0:  # GET RESPONSE
            return self._respond(self.pending, le or 256, b"")
        self.pending = b""
        if cla & 0x10:  # command chaining: keep the data, answer 9000
            self.chain += data
            return _sw(0x9000)
        if self.chain:
            data, self.chain = self.chain + data, b""
        if cla & ~0x10 & 0xFC not in (0x00,):
            return _sw(0x6E00)
        handler = {0xA4: self.select, 0xCB: self.get_data, 0x20: self.verify, 0x24: self.change_reference,
                   0x2C: self.reset_retry, 0x87: self.general_authenticate}.get(ins)
        if handler is None:
            return _sw(0x6D00)
        if ins != 0xA4 and not self.selected:
            return _sw(0x6985) if ins != 0xCB else _sw(0x6A82)
        try:
            body, sw = handler(p1, p2, data)
        except (ValueError, IndexError):
            return _sw(0x6A80)
        return self._respond(body, le, _sw(sw))

    @staticmethod
    def _body(rest: bytes) -> tuple:
        """(data, Le) of the APDU body after the header (short or extended length); (None, 0) if malformed."""
        n = len(rest)
        if n == 0:
            return b"", 0
        if n == 1:
            return b"", rest[0] or 256
        if rest[0] == 0 and n >= 3:  # extended
            lc = int.from_bytes(rest[1:3], "big")
            if n == 3:
                return b"", lc or 65536
            data = rest[3:3 + lc]
            tail = rest[3 + lc:]
            if len(data) != lc or len(tail) not in (0, 2):
                return None, 0
            return data, (int.from_bytes(tail, "big") or 65536) if tail else 0
        lc = rest[0]
        data = rest[1:1 + lc]
        tail = rest[1 + lc:]
        if len(data) != lc or len(tail) > 1:
            return None, 0
        return data, (tail[0] or 256) if tail else 0

    def _respond(self, body: bytes, le: int, sw: bytes) -> bytes:
        if not body:
            return sw or _sw(0x9000)
        limit = le if le else 256
        if len(body) > limit:
            self.pending = body[limit:]
            rest = len(self.pending)
            return body[:limit] + bytes([0x61, rest if rest < 256 else 0])
        self.pending = b""
        return body + (sw or _sw(0x9000))

    # -- commands
    def select(self, p1, p2, data):
        if p1 != 0x04:
            return b"", 0x6A81
        if not data or not PIV_AID.startswith(data[:len(PIV_AID)]) or len(data) < 5:
            self.selected = False
            return b"", 0x6A82
        self.selected = True
        apt = tlv(0x61, tlv(0x4F, PIV_PIX)
                  + tlv(0x79, tlv(0x4F, PIV_AID)) + tlv(0x50, b"tokentrust lab PIV")
                  + tlv(0xAC, tlv(0x80, b"\x07") + tlv(0x80, b"\x11") + tlv(0x06, b"\x00")))
        return apt, 0x9000

    def _object(self, tag: int) -> Optional[bytes]:
        guid = bytes.fromhex(self.state["guid"])
        if tag == OBJ_DISCOVERY:
            return tlv(0x7E, tlv(0x4F, PIV_AID) + tlv(0x5F2F, b"\x40\x00"))
        if tag == OBJ_CHUID:
            fascn = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
            return tlv(0x53, tlv(0x30, fascn) + tlv(0x34, guid) + tlv(0x35, b"20351231") + tlv(0x3E, b"")
                       + tlv(0xFE, b""))
        if tag == OBJ_CCC:
            card_id = b"\xa0\x00\x00\x01\x16\xff\x02" + guid[:14]
            return tlv(0x53, tlv(0xF0, card_id) + tlv(0xF1, b"\x21") + tlv(0xF2, b"\x21") + tlv(0xF3, b"")
                       + tlv(0xF4, b"\x00") + tlv(0xF5, b"\x10") + tlv(0xF6, b"") + tlv(0xF7, b"") + tlv(0xFA, b"")
                       + tlv(0xFB, b"") + tlv(0xFC, b"") + tlv(0xFD, b"") + tlv(0xFE, b""))
        for ref, (otag, _name) in SLOTS.items():
            if otag == tag and ref in self._keys:
                return tlv(0x53, tlv(0x70, self._keys[ref][1]) + tlv(0x71, b"\x00") + tlv(0xFE, b""))
        return None

    def get_data(self, p1, p2, data):
        if (p1, p2) != (0x3F, 0xFF):
            return b"", 0x6A86
        items = dict(parse_tlv(data))
        if 0x5C not in items:
            return b"", 0x6A80
        obj = self._object(int.from_bytes(items[0x5C], "big"))
        return (obj, 0x9000) if obj is not None else (b"", 0x6A82)

    def _tries_sw(self, left: int) -> int:
        return 0x6983 if left <= 0 else 0x63C0 | min(left, 15)

    def _check(self, which: str, value: bytes) -> int:
        """Present `value` against the PIN or PUK: the counter is decremented and saved before the answer."""
        left = self.state[which + "_tries_left"]
        if left <= 0:
            return 0x6983
        if value == _pad(self.state[which]):
            if left != self.state[which + "_tries_max"]:
                self.state[which + "_tries_left"] = self.state[which + "_tries_max"]
                self.save()
            return 0x9000
        self.state[which + "_tries_left"] = left - 1
        self.count("verify_wrong")
        self.save()
        return self._tries_sw(left - 1)

    def verify(self, p1, p2, data):
        if p2 != 0x80:
            return b"", 0x6A88  # only the PIV Card Application PIN (SP 800-73-4 has no VERIFY of the PUK)
        if p1 == 0xFF:
            self.pin_verified = self.pin_always = False
            return b"", 0x9000
        if not data:
            if self.pin_verified:
                return b"", 0x9000
            return b"", self._tries_sw(self.state["pin_tries_left"])
        if len(data) != 8:
            return b"", 0x6A80
        self.count("verify")
        sw = self._check("pin", data)
        self.pin_verified = self.pin_always = sw == 0x9000
        if sw != 0x9000:
            self.save()
        return b"", sw

    def change_reference(self, p1, p2, data):
        which = {0x80: "pin", 0x81: "puk"}.get(p2)
        if which is None:
            return b"", 0x6A88
        if len(data) != 16:
            return b"", 0x6A80
        self.count("change")
        sw = self._check(which, data[:8])
        if sw != 0x9000:
            self.save()
            return b"", sw
        new = data[8:].rstrip(b"\xff")
        if not 4 <= len(new) <= 8 and which == "pin" or which == "puk" and len(new) != 8:
            return b"", 0x6A80
        self.state[which] = new.decode("utf-8", "replace")
        self.save()
        if which == "pin":
            self.pin_verified = True
        return b"", 0x9000

    def reset_retry(self, p1, p2, data):
        if p2 != 0x80:
            return b"", 0x6A88
        if len(data) != 16:
            return b"", 0x6A80
        self.count("reset_retry")
        sw = self._check("puk", data[:8])
        if sw != 0x9000:
            self.save()
            return b"", sw
        new = data[8:].rstrip(b"\xff")
        if not 4 <= len(new) <= 8:
            return b"", 0x6A80
        self.state["pin"] = new.decode("utf-8", "replace")
        self.state["pin_tries_left"] = self.state["pin_tries_max"]
        self.save()
        return b"", 0x9000

    def general_authenticate(self, p1, p2, data):
        if p2 not in self._keys:
            return b"", 0x6A86
        key = self._keys[p2][0]
        if not self.pin_verified or (p2 == 0x9C and not self.pin_always):
            return b"", 0x6982
        items = dict(parse_tlv(data))
        if 0x7C not in items:
            return b"", 0x6A80
        inner = dict(parse_tlv(items[0x7C]))
        challenge = inner.get(0x81)
        if challenge is None or 0x82 not in inner:
            return b"", 0x6A80
        if isinstance(key, rsa.RSAPrivateKey):
            if p1 != 0x07 or len(challenge) != key.key_size // 8:
                return b"", 0x6A80
            n = key.private_numbers()
            m = int.from_bytes(challenge, "big")
            if m >= n.public_numbers.n:
                return b"", 0x6A80
            m1, m2 = pow(m, n.dmp1, n.p), pow(m, n.dmq1, n.q)
            h = (n.iqmp * (m1 - m2)) % n.p
            out = (m2 + h * n.q).to_bytes(key.key_size // 8, "big")
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            if p1 != 0x11:
                return b"", 0x6A80
            digest = challenge[:32].rjust(32, b"\x00")
            out = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        else:
            return b"", 0x6A80
        if p2 == 0x9C:
            self.pin_always = False
        self.count("sign")
        self.save()
        return tlv(0x7C, tlv(0x82, out)), 0x9000


# ---------------------------------------------------------------------------------------------- the reader link


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    buf = b""
    while len(buf) < n:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)  # Linux clears it after each ACK
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def serve(root: Path, port: int, host: str = "127.0.0.1", *, once: bool = False,
          log=lambda s: None) -> None:
    """Insert the card into vpcd's reader on host:port (reconnecting while the reader is not there), until
    SIGTERM/SIGINT (= the card pulled). `once`: return when the reader goes away."""
    card = PivCard(root)
    stop = []

    def _stop(signum, frame):  # noqa: ARG001
        stop.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            try:
                sock = socket.create_connection((host, port), timeout=2)
            except OSError:
                time.sleep(0.2)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log(f"card: inserted into the reader at {host}:{port}")
            card.power_on()
            try:
                while True:
                    head = _recv_exact(sock, 2)
                    if head is None:
                        break
                    msg = _recv_exact(sock, struct.unpack(">H", head)[0])
                    if msg is None:
                        break
                    if len(msg) == 1:
                        if msg[0] == VPCD_ATR:
                            sock.sendall(struct.pack(">H", len(ATR)) + ATR)
                        elif msg[0] in (VPCD_OFF, VPCD_ON, VPCD_RESET):
                            card.power_on()
                        continue
                    rapdu = card.process(msg)
                    sock.sendall(struct.pack(">H", len(rapdu)) + rapdu)
            except OSError:
                pass
            finally:
                sock.close()
            log("card: the reader went away")
            if once:
                return
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.piv_card", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="make a new card in DIR")
    c.add_argument("dir", type=Path)
    c.add_argument("--pki-dir", type=Path, help="the lab PKI (lab.build layout) to issue from; default: a new one")
    r = sub.add_parser("run", help="insert the card into vpcd's reader (stop the process = pull the card)")
    r.add_argument("dir", type=Path)
    r.add_argument("--port", type=int, default=0x8C7B)
    r.add_argument("--host", default="127.0.0.1")
    s = sub.add_parser("status", help="the card's PIN/PUK counters")
    s.add_argument("dir", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "create":
            pki = None
            if a.pki_dir:
                from lab import build as labbuild

                manifest = json.loads((a.pki_dir / "pki.json").read_text())
                pki = {e["name"]: labbuild._load_issued(e) for e in manifest["cas"]}
            st = create_card(a.dir, pki=pki)
            print(json.dumps({k: v["label"] + " " + v["sha256"] for k, v in st["keys"].items()}, indent=1))
        elif a.cmd == "run":
            serve(a.dir, a.port, a.host, log=lambda m: print(m, file=sys.stderr, flush=True))
        else:
            print(json.dumps(counters(a.dir), indent=1))
    except CardError as exc:
        print(f"piv_card: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
