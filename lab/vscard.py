"""The VSCard bridge: the project's PIV card (lab/piv_card.py) in QEMU's USB CCID reader.

    python -m lab.vscard run CARD_DIR --chardev PATH --control PATH [--removed]
    python -m lab.vscard insert|remove|resync|status --control PATH

QEMU's `ccid-card-passthru` speaks libcacard's VSCard protocol (vscard_common.h) over a chardev: every message is a
header of three big-endian u32 (type, reader_id, length) and `length` bytes. The bridge connects to the chardev's
unix socket (QEMU is the server), sends VSC_Init (magic "VSCD", version 0.0.2), waits for QEMU's VSC_Init, adds its
reader (VSC_ReaderAdd), inserts the card (VSC_ATR: the card's ATR) and then answers every VSC_APDU from the guest with
PivCard.process (the same card as the fleet's: its PIN/PUK counters persisted in CARD_DIR/card.json, each APDU's
CLA/INS appended to CARD_DIR/apdu.log). The card is pulled with VSC_CardRemove and inserted again with VSC_ATR, on a
command on the control socket (one line in, one JSON line out). QEMU acknowledges ReaderAdd/ATR/CardRemove with
VSC_Error (code 0 = success).

The reader itself is QEMU's `usb-ccid`: unplugging it is QMP `device_del` (lab/vm.py); after `device_add` the new
passthru device knows no reader, so the bridge is told to `resync` (ReaderAdd, and the ATR when the card is in).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Optional

VSC_Init, VSC_Error, VSC_ReaderAdd, VSC_ReaderRemove, VSC_ATR, VSC_CardRemove, VSC_APDU, VSC_Flush, \
    VSC_FlushComplete = range(1, 10)
NAMES = {1: "Init", 2: "Error", 3: "ReaderAdd", 4: "ReaderRemove", 5: "ATR", 6: "CardRemove", 7: "APDU", 8: "Flush",
         9: "FlushComplete"}
VSCARD_MAGIC = 0x44435356  # VSCARD_MAGIC_CONST("VSCD") on a little-endian host; sent with htonl like the header
VSCARD_VERSION = 2  # MAKE_VERSION(0, 0, 2)
UNDEFINED_READER_ID = 0xFFFFFFFF
HEADER = struct.Struct(">III")
READER_NAME = b"tokentrust PIV (lab/piv_card.py)"
# The ATR the card shows in the USB reader: T=0 only (TS 3B, T0 80, TD1 00), because QEMU's usb-ccid announces T=0 only
# (dwProtocols). piv_card.ATR (3B 80 80 01 01) also offers T=1: Debian 13's OpenSC 0.26 then reconnects asking for T=1,
# pcscd tries the PTS, libccid answers "Protocol T=1 not supported by reader" and every connect fails (Generic reader
# error); Debian 12's OpenSC 0.23 kept T=0. A real card in a T=0-only reader would be used in T=0 as well.
USB_ATR = bytes.fromhex("3B8000")


class BridgeError(RuntimeError):
    """The bridge could not talk to QEMU or to its control socket."""


def pack(mtype: int, reader_id: int, data: bytes = b"") -> bytes:
    return HEADER.pack(mtype, reader_id, len(data)) + data


def init_message() -> bytes:
    return pack(VSC_Init, UNDEFINED_READER_ID, struct.pack(">III", VSCARD_MAGIC, VSCARD_VERSION, 0))


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_message(sock: socket.socket) -> Optional[tuple]:
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    mtype, reader_id, length = HEADER.unpack(head)
    data = _recv_exact(sock, length) if length else b""
    if data is None:
        return None
    return mtype, reader_id, data


class Bridge:
    """One reader, one card, one QEMU chardev. Thread-safe: the control thread and the APDU loop share `send`."""

    def __init__(self, card_dir: Path, chardev: Path, *, inserted: bool = True, log=lambda s: None):
        from lab import piv_card

        self.piv = piv_card
        self.card = piv_card.PivCard(card_dir)
        self.card_dir = Path(card_dir)
        self.chardev = Path(chardev)
        self.inserted = inserted
        self.reader_id = 0
        self.sock: Optional[socket.socket] = None
        self.lock = threading.Lock()
        self.log = log
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.control_ready = threading.Event()  # set once the control socket accepts connections
        self.apdus = 0
        self.acks = []
        self.generation = 0  # +1 at every insert/remove: an answer computed across one is never sent

    # -- QEMU side
    def send(self, data: bytes) -> None:
        with self.lock:
            if self.sock is None:
                raise BridgeError("not connected to QEMU's chardev")
            self.sock.sendall(data)

    def connect(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.chardev))
                break
            except OSError as e:
                s.close()
                if time.monotonic() > deadline or self.stop.is_set():
                    raise BridgeError(f"QEMU's chardev {self.chardev} does not accept a connection: {e}") from e
                time.sleep(0.2)
        s.sendall(init_message())
        msg = read_message(s)
        if msg is None or msg[0] != VSC_Init:
            s.close()
            raise BridgeError(f"QEMU did not answer VSC_Init (got {NAMES.get(msg[0], msg[0]) if msg else 'EOF'})")
        # QEMU checks ntohl(magic) of ours but sends its own magic unconverted: "VSCD" as bytes on a little-endian
        # host (ccid-card-passthru.c); either byte order is the magic
        if msg[2][:4] not in (b"VSCD", struct.pack(">I", VSCARD_MAGIC)):
            s.close()
            raise BridgeError(f"QEMU's VSC_Init has magic {msg[2][:4]!r}, not VSCD")
        with self.lock:
            self.sock = s
        self.log("vscard: connected, VSC_Init exchanged")
        self.resync()
        self.connected.set()

    def resync(self) -> None:
        """(Re)announce the reader, and the card when it is in (after a reader device_add, or a new connection)."""
        self.send(pack(VSC_ReaderAdd, UNDEFINED_READER_ID, READER_NAME))
        if self.inserted:
            self.card.power_on()
            self.send(pack(VSC_ATR, self.reader_id, USB_ATR))

    def insert(self) -> None:
        self.generation += 1
        self.inserted = True
        self.card.power_on()
        self.send(pack(VSC_ATR, self.reader_id, USB_ATR))
        self.log("vscard: card inserted (VSC_ATR)")

    def remove(self) -> None:
        self.generation += 1
        self.inserted = False
        self.send(pack(VSC_CardRemove, self.reader_id))
        self.log("vscard: card removed (VSC_CardRemove)")

    def loop(self) -> None:
        """Answer QEMU until the chardev closes (then reconnect, unless stopping)."""
        while not self.stop.is_set():
            if self.sock is None:
                try:
                    self.connect()
                except BridgeError as e:
                    self.log(f"vscard: {e}")
                    if self.stop.wait(1.0):
                        return
                    continue
            msg = None
            try:
                msg = read_message(self.sock)
            except OSError:
                msg = None
            if msg is None:
                self.log("vscard: QEMU closed the chardev")
                with self.lock:
                    self.sock.close()
                    self.sock = None
                self.connected.clear()
                continue
            mtype, reader_id, data = msg
            if mtype == VSC_APDU:
                if not self.inserted:
                    continue
                gen = self.generation
                rapdu = self.card.process(data)  # may wait (lab/piv_card.py's test-only delay): the card pulled then
                self.apdus += 1
                if gen != self.generation or not self.inserted:
                    self.log("vscard: the card was pulled while it answered: answer dropped")
                    continue
                try:
                    self.send(pack(VSC_APDU, reader_id, rapdu))
                except (OSError, BridgeError):
                    continue
            elif mtype == VSC_Error:
                code = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else -1
                self.acks.append(code)
                if reader_id != UNDEFINED_READER_ID:
                    self.reader_id = reader_id
                if code != 0:
                    self.log(f"vscard: QEMU reports error {code} (reader {reader_id})")
            elif mtype == VSC_Flush:
                self.send(pack(VSC_FlushComplete, reader_id))
            else:
                self.log(f"vscard: ignoring {NAMES.get(mtype, mtype)} from QEMU")

    # -- control side
    def status(self) -> dict:
        return {"connected": self.connected.is_set(), "inserted": self.inserted, "apdus": self.apdus,
                "reader_id": self.reader_id, "pid": os.getpid()}

    def command(self, line: str) -> dict:
        cmd = line.strip()
        try:
            if cmd == "insert":
                self.insert()
            elif cmd == "remove":
                self.remove()
            elif cmd == "resync":
                self.resync()
            elif cmd == "quit":
                self.stop.set()
            elif cmd != "status":
                return {"error": f"unknown command {cmd!r} (insert, remove, resync, status, quit)"}
        except (OSError, BridgeError) as e:
            return {"error": str(e)}
        return self.status()

    def serve_control(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".new")
        tmp.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(tmp))
        os.chmod(tmp, 0o600)
        srv.listen(4)
        srv.settimeout(0.5)
        # the control path appears only once it listens: whoever waits for the file (lab/vm.py) never meets a
        # socket that refuses the connection
        os.replace(tmp, path)
        self.control_ready.set()
        while not self.stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    line = conn.makefile("r").readline()
                    conn.sendall((json.dumps(self.command(line)) + "\n").encode())
                except OSError:
                    pass
        srv.close()
        path.unlink(missing_ok=True)


def control(path: Path, cmd: str, timeout: float = 10) -> dict:
    """One command to a running bridge: insert, remove, resync, status, quit."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall((cmd + "\n").encode())
        reply = s.makefile("r").readline()
    except OSError as e:
        raise BridgeError(f"the VSCard bridge does not answer on {path}: {e} (is it running? lab/vm.py starts it)") \
            from e
    finally:
        s.close()
    out = json.loads(reply or "{}")
    if "error" in out:
        raise BridgeError(out["error"])
    return out


def run(card_dir: Path, chardev: Path, control_path: Path, *, inserted: bool = True) -> int:
    def log(m: str) -> None:
        print(time.strftime("%H:%M:%S ") + m, file=sys.stderr, flush=True)

    b = Bridge(card_dir, chardev, inserted=inserted, log=log)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: b.stop.set())
    t = threading.Thread(target=b.loop, daemon=True)
    t.start()
    try:
        b.serve_control(control_path)
    except KeyboardInterrupt:
        b.stop.set()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.vscard", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("card_dir", type=Path)
    r.add_argument("--chardev", type=Path, required=True)
    r.add_argument("--control", type=Path, required=True)
    r.add_argument("--removed", action="store_true", help="start with the card out of the reader")
    for name in ("insert", "remove", "resync", "status", "quit"):
        c = sub.add_parser(name)
        c.add_argument("--control", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "run":
            return run(a.card_dir, a.chardev, a.control, inserted=not a.removed)
        print(json.dumps(control(a.control, a.cmd)))
    except BridgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
