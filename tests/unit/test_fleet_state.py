"""The controller-side fleet state (module_utils/tokentrust_state.py) and how the report shows hosts that are off
(issue 21, item 1): written atomically under a lock, not_converged for --limit @file, unreachable never green."""
import json
import multiprocessing
import os

import pytest
from ansible.module_utils import tokentrust_report as tr
from ansible.module_utils import tokentrust_state as st

from tests.unit.test_report_model import NOW, ca_set, linux_host, token_ok


def test_update_merges_and_writes_not_converged(tmp_path):
    d = str(tmp_path / "state")
    st.update(d, {"ws1": {"last_attempt": "2026-01-01T10:00:00Z"}, "ws2": {"last_attempt": "2026-01-01T10:00:00Z"}})
    assert (tmp_path / "state" / "not_converged").read_text() == "ws1\nws2\n"
    st.update(d, {"ws1": {"last_converged": "2026-01-01T10:05:00Z", "last_seen": "2026-01-01T10:01:00Z"},
                  "ws2": {"last_unreachable": "2026-01-01T10:01:00Z", "last_seen": None}})
    hosts = st.load(d)
    assert hosts["ws1"] == {"last_attempt": "2026-01-01T10:00:00Z", "last_converged": "2026-01-01T10:05:00Z",
                            "last_seen": "2026-01-01T10:01:00Z"}
    assert "last_seen" not in hosts["ws2"]  # None leaves a field as it was
    assert (tmp_path / "state" / "not_converged").read_text() == "ws2\n"
    # a new attempt makes ws1 not converged again until a run converges it
    st.update(d, {"ws1": {"last_attempt": "2026-01-02T10:00:00Z"}})
    assert st.not_converged(st.load(d)) == ["ws1", "ws2"]
    # pull mode converges too, and only moves forward
    st.update(d, {"ws2": {"pull_converged": "2026-01-02T11:00:00Z"}})
    st.update(d, {"ws2": {"pull_converged": "2026-01-01T00:00:00Z"}})
    assert st.load(d)["ws2"]["pull_converged"] == "2026-01-02T11:00:00Z"
    assert (tmp_path / "state" / "not_converged").read_text() == "ws1\n"
    assert sorted(os.listdir(d)) == [".lock", "not_converged", "state.json"]  # no temp file left behind


def test_bad_state_file_is_a_clear_error_and_is_not_overwritten(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(st.StateError, match=r"state.json is not valid JSON .*move it away"):
        st.update(str(tmp_path), {"ws1": {"last_seen": "2026-01-01T10:00:00Z"}})
    assert (tmp_path / "state.json").read_text() == "{not json"
    with pytest.raises(st.StateError, match="unknown state field"):
        st.update(str(tmp_path / "new"), {"ws1": {"seen": "x"}})


def _writer(d, host, n):
    for i in range(n):
        st.update(d, {host: {"last_seen": "2026-01-01T10:%02d:00Z" % i}})


def test_two_runs_at_once_both_land(tmp_path):
    d = str(tmp_path)
    procs = [multiprocessing.Process(target=_writer, args=(d, "ws%d" % i, 40)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    hosts = st.load(d)
    assert sorted(hosts) == ["ws0", "ws1", "ws2", "ws3"]
    assert all(h["last_seen"] == "2026-01-01T10:39:00Z" for h in hosts.values())
    json.loads((tmp_path / "state.json").read_text())


def test_unreachable_host_is_amber_never_an_old_green():
    """An unreachable host with an old ok test login and an old converge is 'unreachable', with its times."""
    state = {"last_seen": "2026-05-30T08:00:00Z", "last_converged": "2026-05-29T08:00:00Z",
             "last_attempt": "2026-05-29T07:59:00Z", "last_unreachable": "2026-06-01T11:59:00Z",
             "unreachable_msg": "Connection refused"}
    rep = tr.build_report([{"name": "ws-off", "data": None, "token": token_ok(), "state": state},
                           {"name": "ws-on", "data": linux_host(), "token": token_ok(), "state": {}}],
                          ca_set(), now=NOW)
    off = next(h for h in rep["hosts"] if h["name"] == "ws-off")
    assert off["status"] == "unreachable" and off["reached"] is False
    assert off["reasons"][0]["level"] == "unreachable"
    assert off["reasons"][0]["text"] == ("unreachable: not reached by this report: Connection refused; last seen "
                                         "2026-05-30T08:00:00Z, last converged 2026-05-29T08:00:00Z. Nothing shown "
                                         "for it is current")
    assert rep["summary"]["unreachable"] == 1 and rep["summary"]["ok"] == 1 and rep["summary"]["failed"] == 0
    page = tr.render_html(rep)
    row = page[page.index('data-host="ws-off"'):]
    row = row[:row.index("</tr>")]
    assert 'data-status="unreachable"' in row and "b-unreachable" in row and "b-ok" not in row
    assert "last known: ok" in row and "seen 2026-05-30T08:00:00Z" in row
    assert "1 unreachable" in page


def test_unreachable_wins_over_red_of_old_data():
    """Expiry of the CA set is fleet-wide: a host that is off is still 'unreachable', not red."""
    rep = tr.build_report([{"name": "ws-off", "data": None, "state": {}}], ca_set(root_days=10, inter_days=10), now=NOW)
    assert rep["hosts"][0]["status"] == "unreachable"
    assert rep["hosts"][0]["state"]["converged"] is None


def test_reached_but_not_converged_is_noted():
    state = {"last_attempt": "2026-06-01T11:00:00Z", "last_converged": "2026-05-01T11:00:00Z",
             "last_result": "failed"}
    rep = tr.build_report([{"name": "ws", "data": linux_host(), "token": token_ok(), "state": state}], ca_set(),
                          now=NOW)
    h = rep["hosts"][0]
    assert h["status"] == "ok" and rep["summary"]["not_converged"] == ["ws"]
    assert any(r["level"] == "info" and "did not complete on it (failed)" in r["text"] for r in h["reasons"])


def test_seen_only_is_not_not_converged():
    """A host only seen by report.yml or verify.yml (no converge run recorded) is neither converged nor not."""
    rep = tr.build_report([{"name": "ws", "data": linux_host(), "token": token_ok(),
                            "state": {"last_seen": "2026-06-01T11:00:00Z"}}], ca_set(), now=NOW)
    assert rep["hosts"][0]["state"]["converged"] is None and rep["summary"]["not_converged"] == []
    assert [r["level"] for r in rep["hosts"][0]["reasons"]] == []
