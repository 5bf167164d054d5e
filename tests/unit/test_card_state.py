"""The key's states as users meet them (issue 18 item 4): why no token is there (pcscd missing, not running, no reader,
no card), two keys never guessed, each state's words and what to do in the report."""
import html
import socket

import pytest
from ansible.module_utils.tokentrust_advice import CARD_STATES, card_state, card_state_of
from ansible.module_utils.tokentrust_nss.token import TokenError, _select
from ansible.module_utils.tokentrust_report import CARD_STATE_WORDS, build_report, reason_text, render_html


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


# ---------------------------------------------------------------------------------------------- states and the report


def test_every_state_has_its_own_words_and_what_to_do():
    assert set(CARD_STATES) <= set(CARD_STATE_WORDS)
    assert len(set(CARD_STATES.values())) == len(CARD_STATES)  # distinct advice
    assert len(set(CARD_STATE_WORDS.values())) == len(CARD_STATE_WORDS)
    assert CARD_STATES["pin_locked"] != CARD_STATES["puk_locked"] and "PUK" in CARD_STATES["pin_locked"]
    assert "new key" in CARD_STATES["puk_locked"]


def test_error_kinds_get_their_card_state():
    assert card_state_of({"kind": "pin_locked", "message": "m"})["card_state"] == "pin_locked"
    assert card_state_of({"kind": "puk_locked", "message": "m"})["todo"] == CARD_STATES["puk_locked"]
    assert card_state_of({"kind": "handshake", "message": "m"}) == {"kind": "handshake", "message": "m"}
    assert card_state_of(None) is None
    own = card_state_of({"kind": "several_tokens", "message": "m", "card_state": "several_cards", "todo": "x"})
    assert own["todo"] == "x"


def test_two_keys_are_never_guessed():
    found = [("JEAN DUPONT", "a", "Virtual PCD 00 00"), ("JEAN DUPONT", "b", "Virtual PCD 00 01")]
    with pytest.raises(TokenError) as e:
        _select(found, None, "/lib/x.so", 2)
    assert e.value.kind == "several_tokens" and e.value.details["card_state"] == "several_cards"
    assert "Virtual PCD 00 00" in e.value.message and "Virtual PCD 00 01" in e.value.message
    with pytest.raises(TokenError) as e:
        _select(found, "JEAN DUPONT", "/lib/x.so", 2)
    assert e.value.details["card_state"] == "several_cards" and "remove all keys labelled" in e.value.details["todo"]
    other = [("MARIE MARTIN", "m", "Virtual PCD 00 01"), ("JEAN DUPONT", "j", "Virtual PCD 00 00")]
    assert _select(other, "JEAN DUPONT", "/lib/x.so", 2) == "j"
    with pytest.raises(TokenError) as e:
        _select(other, "PAUL", "/lib/x.so", 2)
    assert e.value.kind == "token_not_found" and e.value.details["card_state"] == "other_card"


@pytest.mark.parametrize("state", sorted(CARD_STATES))
def test_report_says_the_state_and_what_to_do(state):
    todo = CARD_STATES[state]
    saved = {"ok": False, "checked_at": "2026-12-02T12:00:00Z",
             "error": {"kind": "x", "message": "what happened: " + todo, "card_state": state, "todo": todo}}
    report = build_report([{"name": "ws", "data": {"platform": "linux"}, "token": saved}], [])
    host = report["hosts"][0]
    assert host["status"] == "failed" and host["token"]["card_state"] == state and host["token"]["todo"] == todo
    r = [x for x in host["reasons"] if x["part"] == "token"][0]
    assert r["text"] == "test login failed, %s: what happened" % CARD_STATE_WORDS[state]  # the advice once, apart
    assert reason_text(r).endswith(". What to do: " + todo)
    page = render_html(report)
    assert "What to do: " in page and html.escape(CARD_STATE_WORDS[state]) in page


def test_report_without_a_card_state_is_unchanged():
    saved = {"ok": False, "checked_at": "2026-12-02T12:00:00Z", "error": {"kind": "handshake", "message": "boom"}}
    host = build_report([{"name": "ws", "data": {"platform": "linux"}, "token": saved}], [])["hosts"][0]
    r = [x for x in host["reasons"] if x["part"] == "token"][0]
    assert r["text"] == "test login failed: boom" and "todo" not in r and reason_text(r) == r["text"]
