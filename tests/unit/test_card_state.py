"""Why no token is there, as a user meets it (issue 18 item 4): pcscd missing, not running, no reader, no card."""
import socket

from ansible.module_utils.tokentrust_nss.token import card_state


def test_no_card_when_a_reader_slot_is_there(tmp_path):
    state, todo = card_state(1, socket_path=str(tmp_path / "none"), pcscd_paths=())
    assert state == "no_card" and "insert the key" in todo


def test_pcscd_missing(tmp_path):
    state, todo = card_state(0, socket_path=str(tmp_path / "none"), pcscd_paths=(str(tmp_path / "pcscd"),))
    assert state == "pcscd_missing" and "token_middleware_linux" in todo


def test_pcscd_not_running(tmp_path):
    (tmp_path / "pcscd").write_text("")
    state, todo = card_state(0, socket_path=str(tmp_path / "pcscd.comm"), pcscd_paths=(str(tmp_path / "pcscd"),))
    assert state == "pcscd_not_running" and "start it" in todo


def test_no_reader_when_pcscd_answers(tmp_path):
    (tmp_path / "pcscd").write_text("")
    path = str(tmp_path / "pcscd.comm")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    try:
        state, todo = card_state(0, socket_path=path, pcscd_paths=(str(tmp_path / "pcscd"),))
    finally:
        srv.close()
    assert state == "no_reader" and "reader" in todo


def test_a_library_without_pcsc_gets_no_reader_diagnosis(tmp_path):
    state, todo = card_state(0, socket_path=str(tmp_path / "none"), pcscd_paths=(), pcsc=False)
    assert state == "no_token" and "plug in the key" in todo


def test_uses_pcsc_reads_the_process_maps(tmp_path):
    from ansible.module_utils.tokentrust_nss.token import uses_pcsc

    maps = tmp_path / "maps"
    maps.write_text("7f00 r-xp /usr/lib/x86_64-linux-gnu/libpcsclite.so.1.0.0\n")
    assert uses_pcsc(str(maps)) is True
    maps.write_text("7f00 r-xp /usr/lib/softhsm/libsofthsm2.so\n")
    assert uses_pcsc(str(maps)) is False
    assert uses_pcsc(str(tmp_path / "missing")) is None
