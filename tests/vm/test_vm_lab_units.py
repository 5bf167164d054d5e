"""lab/vscard.py's VSCard framing against a stand-in for QEMU's ccid-card-passthru (a unix socket server speaking
the protocol as QEMU 7.2 does), and lab/vm.py's clear errors on bad input. Fast: no VM is booted here."""
import os
import socket
import struct
import subprocess
import threading

import pytest

from lab import piv_card, vscard
from lab import vm as vmlab

PIV_SELECT = bytes.fromhex("00A4040009A00000030800001000") + b"\x00"


def _read(conn):
    head = vscard._recv_exact(conn, 12)
    mtype, reader_id, length = struct.unpack(">III", head)
    return mtype, reader_id, vscard._recv_exact(conn, length) if length else b""


@pytest.fixture
def card_dir(tmp_path):
    piv_card.create_card(tmp_path / "card")
    return tmp_path / "card"


def test_bridge_speaks_vscard_as_qemu_expects(tmp_path, card_dir):
    chardev, ctl = tmp_path / "vscard.sock", tmp_path / "vscard.ctl"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(chardev))
    srv.listen(1)
    b = vscard.Bridge(card_dir, chardev)
    threading.Thread(target=b.loop, daemon=True).start()
    threading.Thread(target=b.serve_control, args=(ctl,), daemon=True).start()
    # a loaded machine may not have run the control thread yet (CI once met a missing vscard.ctl here)
    assert b.control_ready.wait(30), "the bridge's control socket never listened"
    conn, _ = srv.accept()
    conn.settimeout(20)
    try:
        mtype, reader_id, data = _read(conn)
        # QEMU checks ntohl(magic) == VSCARD_MAGIC ("VSCD" as a little-endian u32) and exits on a wrong one
        assert (mtype, reader_id) == (vscard.VSC_Init, 0xFFFFFFFF) and struct.unpack(">I", data[:4])[0] == 0x44435356
        assert struct.unpack(">I", data[4:8])[0] == 2  # MAKE_VERSION(0, 0, 2)
        conn.sendall(struct.pack(">III", vscard.VSC_Init, 0xFFFFFFFF, 12) + b"VSCD" + struct.pack(">II", 2, 0))
        mtype, reader_id, data = _read(conn)
        assert mtype == vscard.VSC_ReaderAdd and reader_id == 0xFFFFFFFF and data == vscard.READER_NAME
        conn.sendall(struct.pack(">IIII", vscard.VSC_Error, 0, 4, 0))  # success, reader 0
        mtype, reader_id, data = _read(conn)
        assert (mtype, reader_id, data) == (vscard.VSC_ATR, 0, vscard.USB_ATR)
        # the guest's APDU: the card answers it (the PIV application selected: 9000)
        conn.sendall(struct.pack(">III", vscard.VSC_APDU, 0, len(PIV_SELECT)) + PIV_SELECT)
        mtype, reader_id, data = _read(conn)
        assert mtype == vscard.VSC_APDU and data[-2:] == b"\x90\x00", data.hex()
        assert piv_card.apdu_count(card_dir) == 1
        # pulled: VSC_CardRemove, and an APDU then gets no answer from a card that is not there
        assert vscard.control(ctl, "remove")["inserted"] is False
        assert _read(conn)[0] == vscard.VSC_CardRemove
        assert vscard.control(ctl, "insert")["inserted"] is True
        assert _read(conn)[:2] == (vscard.VSC_ATR, 0)
        with pytest.raises(vscard.BridgeError, match="unknown command"):
            vscard.control(ctl, "explode")
    finally:
        b.stop.set()
        conn.close()
        srv.close()


def test_bridge_control_without_a_bridge_says_so(tmp_path):
    with pytest.raises(vscard.BridgeError, match=r"does not answer .*\(is it running\?"):
        vscard.control(tmp_path / "nothing.ctl", "status")


def test_port_in_use_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(vmlab.VMError, match=r"127\.0\.0\.1:%d is already in use" % port):
            vmlab.create(tmp_path / "run", inventory=tmp_path / "inv", port=port)
    assert not (tmp_path / "run").exists()


def test_missing_qemu_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(vmlab.VMError, match="qemu-system-x86_64.* not found: run scripts/setup.sh"):
        vmlab.create(tmp_path / "run", inventory=tmp_path / "inv")


def test_a_folder_that_is_not_a_vm_is_never_used_or_removed(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("mine")
    with pytest.raises(vmlab.VMError, match="not a VM folder"):
        vmlab.create(tmp_path / "run", inventory=tmp_path / "inv")
    with pytest.raises(vmlab.VMError, match="not a VM folder"):
        vmlab.destroy(tmp_path / "run")
    assert (tmp_path / "run" / "precious.txt").read_text() == "mine"


def test_unknown_suite(tmp_path):
    with pytest.raises(vmlab.VMError, match="unknown suite 'sid'"):
        vmlab.image_dir("sid")


@pytest.mark.parametrize("mine, value, prefix", [
    (0, "", []), (0, "0", []), (0, "5", ["nice", "-n", "5"]), (0, "-5", ["nice", "-n", "-5"]),
    (10, "-5", ["nice", "-n", "-15"]), (10, "10", []), (3, "", [])])
def test_vm_priority_from_tokentrust_vm_nice(monkeypatch, mine, value, prefix):
    """The value asked is the one QEMU runs at, whatever the caller's own (nice(1) adds to it)."""
    monkeypatch.setenv("TOKENTRUST_VM_NICE", value)
    monkeypatch.setattr(vmlab.os, "geteuid", lambda: 0)
    monkeypatch.setattr(vmlab.os, "nice", lambda inc: mine)
    assert vmlab.priority() == prefix


@pytest.mark.parametrize("mine, value, said", [
    (0, "fast", "a whole number from -20 to 19"), (0, "-21", "from -20 to 19"), (0, "20", "from -20 to 19"),
    (0, "-1", "only root may raise a priority"), (5, "2", r"runs at nice 5\); unset it or give 5..19")])
def test_vm_priority_refuses_what_nice_cannot_do(monkeypatch, mine, value, said):
    monkeypatch.setenv("TOKENTRUST_VM_NICE", value)
    monkeypatch.setattr(vmlab.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(vmlab.os, "nice", lambda inc: mine)
    with pytest.raises(vmlab.VMError, match=said):
        vmlab.priority()


def test_the_priority_prefix_really_sets_a_process_nice_value(monkeypatch):
    """The prefix run for real: the process it starts has the nice value asked."""
    want = min(19, os.nice(0) + 7)
    monkeypatch.setenv("TOKENTRUST_VM_NICE", str(want))
    out = subprocess.run([*vmlab.priority(), "sh", "-c", "cut -d' ' -f19 /proc/$$/stat"], capture_output=True,
                         text=True, check=True).stdout
    assert int(out) == want


def test_a_boot_error_carries_the_console_tail_the_folder_removal_would_lose(tmp_path):
    """The VM fixture removes the VM's folder when the boot fails: the error itself must say what the console said."""
    (tmp_path / "console.log").write_text("".join(f"line {i}\n" for i in range(100)) + "\n\nvm-ws-01 login: \n")
    tail = vmlab.console_tail({"dir": str(tmp_path)}, lines=3)
    assert tail.splitlines() == ["line 98", "line 99", "vm-ws-01 login:"]
    (tmp_path / "console.log").write_text("")
    assert "the kernel wrote nothing" in vmlab.console_tail({"dir": str(tmp_path)})
    (tmp_path / "console.log").unlink()
    assert vmlab.console_tail({"dir": str(tmp_path)}).startswith("(no console log: ")
