"""Issue 27: the workstation as a QEMU virtual machine (lab/vm.py), what a container cannot show.

systemd as PID 1 with socket-activated pcscd, udev and a USB CCID reader (QEMU usb-ccid, the guest's libccid; the card
is the lab's PIV card behind lab/vscard.py's VSCard bridge), logind with alice logged in at the seat (tty1, seat0,
active) and an X display in her session. site.yml runs unchanged on it (inventory: a copy of inventories/example),
twice (the second changes nothing), verify.yml's test login goes USB CCID -> libccid -> pcscd -> OpenSC. The card and
reader states are made in the VM (card removed / inserted through the bridge, reader unplugged / plugged through QMP)
and asserted from verify.yml's saved result, the report, and the card's own counters (never from our report alone).
The measured times land in lab/build/pytest-vm/times.json (docs/lab.md quotes them).
"""
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from lab import piv_card
from lab import vm as vmlab
from tests.support.card import report_of
from tests.vm.conftest import OPENSC, VM_DIR, recap

pytestmark = [pytest.mark.vm, pytest.mark.slow]
USB_ID = "08e6:4433"  # QEMU's usb-ccid: a Gemalto GemPC433-Swap to the guest


def _times(**kw):
    path = VM_DIR / "times.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(kw)
    VM_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _nice(pid):
    """A process's nice value, from /proc/PID/stat (field 19, counted after the command's closing parenthesis)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])


def test_boot_systemd_udev_and_the_usb_reader_under_socket_activated_pcscd(vm):
    m = vm.m
    assert m["system_state"] in ("running", "degraded"), m["system_state"]
    _times(accel=m["accel"], image_seconds=m["image_seconds"], image_built=m["image_built"],
           boot_to_ssh_seconds=m["ssh_seconds"], boot_to_systemd_ready_seconds=m["boot_seconds"])
    assert vm.sh("ps -o comm= -p 1").stdout.strip() == "systemd"
    # QEMU and the bridge run at the priority asked (make test's two lanes ask -5: scripts/test.sh)
    want = int(os.environ.get("TOKENTRUST_VM_NICE") or os.nice(0))
    bridge = int((Path(m["dir"]) / "vscard.pid").read_text())
    assert {_nice(vmlab.qemu_pid(m)), _nice(bridge)} == {want}, (want, vmlab.qemu_pid(m), bridge)
    assert vm.sh("systemctl is-active pcscd.socket").stdout.strip() == "active"
    # the reader is a USB device the guest enumerated (udev), driven by libccid
    lsusb = vm.sh("lsusb").stdout
    assert USB_ID in lsusb and "Gemalto" in lsusb, lsusb
    assert vm.sh("udevadm info --export-db | grep -c 'ID_VENDOR_ID=08e6'").stdout.strip() != "0"
    out = vm.wait_reader(want_card=True)
    assert re.search(r"Gemalto|GemPC|433-Swap", out), out
    scan = vm.sh("timeout 10 pcsc_scan -r 2>&1", check=False).stdout
    assert "433-Swap" in scan or "Gemalto" in scan, scan
    # pcscd runs because a client knocked on the socket: the service says it was triggered by pcscd.socket (asked
    # right after a client, in the same shell: pcscd exits after 60 s idle, --auto-exit, and TCG is slow)
    show = vm.sh("opensc-tool -l >/dev/null; systemctl show pcscd.service -p TriggeredBy -p ActiveState -p MainPID"
                 ).stdout
    assert "TriggeredBy=pcscd.socket" in show and "ActiveState=active" in show, show
    # an APDU from the guest reaches the card through the bridge (listing readers sends none): SELECT of the PIV
    n0 = piv_card.apdu_count(vm.card_dir)
    sel = vm.sh("opensc-tool -s 00:A4:04:00:09:A0:00:00:03:08:00:00:10:00:00 2>&1").stdout
    assert "SW1=0x90, SW2=0x00" in sel or "90 00" in sel, sel
    assert piv_card.apdu_count(vm.card_dir) > n0


def test_alice_is_logged_in_at_the_seat_with_an_x_display(vm):
    sid = vm.sh("cat /home/alice/.tokentrust-seat/session").stdout.strip()
    assert sid, "the seat agent did not record its session"
    show = vm.sh("loginctl show-session %s -p Name -p Seat -p TTY -p Active -p State -p Type -p Class" % sid).stdout
    for want in ("Name=alice", "Seat=seat0", "TTY=tty1", "Active=yes", "State=active", "Class=user"):
        assert want in show, show
    inside = vm.seat("cat /proc/self/sessionid; echo; echo $DISPLAY; pgrep -u alice -x Xvfb")
    assert inside.returncode == 0, inside.stdout
    lines = inside.stdout.split()
    assert lines[1] == ":0" and lines[2].isdigit(), inside.stdout
    assert vm.sh("loginctl session-status %s | head -1" % sid).stdout.startswith(sid)


def test_site_yml_converges_with_socket_activated_pcscd_and_changes_nothing_the_second_time(provisioned):
    vm = provisioned
    first, second = vm.site_runs
    assert recap(first.stdout)[vm.name]["failed"] == 0
    assert recap(second.stdout)[vm.name]["changed"] == 0, second.stdout[-5000:]
    _times(site_yml_first_seconds=first.seconds, site_yml_second_seconds=second.seconds)
    # never a pcscd fighting the socket: the one pcscd is the socket-activated service's
    show = vm.sh("systemctl show pcscd.service -p MainPID -p TriggeredBy; systemctl is-active pcscd.socket").stdout
    assert "TriggeredBy=pcscd.socket" in show and show.strip().endswith("active"), show
    main = re.search(r"MainPID=(\d+)", show).group(1)
    pids = vm.sh("pgrep -x pcscd || true").stdout.split()
    assert pids in ([main], []), (pids, show)


def test_verify_logs_in_with_the_card_through_usb_ccid(provisioned, tmp_path):
    vm = provisioned
    vm.wait_reader(want_card=True)
    before, n0 = piv_card.counters(vm.card_dir), piv_card.apdu_count(vm.card_dir)
    run, saved = vm.verify(tmp_path / "out")
    assert run.returncode == 0, run.stdout[-5000:]
    assert saved["ok"] is True and saved["holder"] == piv_card.HOLDER, saved
    apdus = piv_card.apdu_count(vm.card_dir) - n0
    after = piv_card.counters(vm.card_dir)
    assert after["sign"] > before["sign"] and after["pin_tries_left"] == after["pin_tries_max"]
    model, reasons, _page = report_of(vm.name, saved)
    assert model["token"]["status"] == "ok" and not [r for r in reasons if "test login" in r], reasons
    _times(verify_yml_seconds=run.seconds, login_seconds_on_host=float(saved["seconds"]), login_apdus=apdus)


def test_alice_logs_in_with_the_card_in_her_seat_session(provisioned):
    """From inside her logind session (seat0, active): log in with the PIN and sign with the card's PIV AUTH key;
    the card's own counter says the signature was made (its state file is written at each signature)."""
    vm = provisioned
    vm.wait_reader(want_card=True)
    sign0 = piv_card.counters(vm.card_dir)["sign"]
    out = vm.seat("cat /proc/self/sessionid; echo; echo seat-login > /tmp/tokentrust-seat-data; "
                  "pkcs11-tool --module %s --login --pin %s --sign --id 01 -m SHA256-RSA-PKCS "
                  "-i /tmp/tokentrust-seat-data -o /tmp/tokentrust-seat-sig 2>&1 "
                  "&& stat -c %%s /tmp/tokentrust-seat-sig"
                  % (OPENSC, piv_card.DEFAULT_PIN))
    assert out.returncode == 0, out.stdout
    sid = vm.sh("cat /home/alice/.tokentrust-seat/session").stdout.strip()
    assert out.stdout.split()[0] == sid  # the login ran inside her seat session
    assert out.stdout.split()[-1] == "256", out.stdout  # an RSA 2048 signature
    assert piv_card.counters(vm.card_dir)["sign"] == sign0 + 1


@pytest.mark.vm_states
def test_firefox_logs_in_with_the_card_in_alices_seat_session(provisioned, tmp_path):
    """Firefox ESR itself, started inside alice's seat session (seat0, active) on her X display, on her profile as
    site.yml provisioned it: the test page asks for a client certificate, Firefox picks the card's by itself, asks for
    the PIN with its own prompt (typed from chrome context), and the page shows the holder. The server's record and
    the card's own counters say the certificate and the signature came from the card in the USB reader."""
    from marionette_driver import Wait

    from lab.testpage import read_log
    from tests.support.firefox import LIST_MODULES, TYPE_PIN_INTO_PROMPT, SeatFirefox

    vm = provisioned
    vm.wait_reader(want_card=True)
    profile = vm.sh("sed -n 's|^Path=||p' /home/alice/.mozilla/firefox/profiles.ini | head -1", user="alice")
    profile = "/home/alice/.mozilla/firefox/" + profile.stdout.strip()
    before = piv_card.counters(vm.card_dir)
    url = vm.m["testpage"]["url"]
    t0 = time.monotonic()
    with SeatFirefox(vm.m, profile, "alice", log=str(tmp_path / "firefox.log"),
                     extra_prefs={"security.default_personal_cert": "Select Automatically"}) as ff:
        sid = vm.sh("cat /home/alice/.tokentrust-seat/session").stdout.strip()
        assert ff.session_of_firefox() == sid  # Firefox is a process of her seat session
        c = ff.client
        c.delete_session()
        c.start_session({"unhandledPromptBehavior": "ignore"})  # the token prompt is ours to answer
        with c.using_context("chrome"):
            modules = c.execute_script(LIST_MODULES)
            c.execute_script(TYPE_PIN_INTO_PROMPT, script_args=[piv_card.DEFAULT_PIN, 1])  # a second would be wrong
        assert [m for m in modules if m[1] == OPENSC and piv_card.HOLDER in m[2]], modules  # our role registered it
        c.timeout.page_load = 180
        c.navigate(url)  # may return before the page that follows the client-certificate handshake and the PIN
        Wait(c, timeout=180).until(lambda mc: mc.execute_script("return !!document.getElementById('holder')"),
                                   message="no holder on %s" % url)
        holder = c.execute_script("const e = document.getElementById('holder'); return e ? e.textContent : null")
        status = c.execute_script("const e = document.getElementById('status'); "
                                  "return e ? e.getAttribute('data-status') : null")
        with c.using_context("chrome"):
            prompt = c.execute_script("return Services.prefs.getStringPref('tokentrust.test.prompt', '')")
            prompts = c.execute_script("return Services.prefs.getIntPref('tokentrust.test.prompts', 0)")
    seconds = round(time.monotonic() - t0, 1)
    assert (holder, status) == (piv_card.HOLDER, "valid"), (holder, status)
    assert prompts == 1 and piv_card.HOLDER in prompt, prompt
    valid = [e for e in read_log(vm.m["testpage"]["log"]) if e.get("status") == "valid"]
    assert valid and valid[-1]["holder"] == piv_card.HOLDER, valid[-1:]
    after = piv_card.counters(vm.card_dir)
    assert after["sign"] > before["sign"] and after["pin_tries_left"] == after["pin_tries_max"], (before, after)
    _times(firefox_seat_login_seconds=seconds)


def test_bob_over_ssh_reaches_the_card_per_the_polkit_rule(provisioned):
    """bob is not at the seat (no logind session of his). Debian 12's pcscd (1.9.9) is built without polkit: any local
    user reaches it. Debian 13's pcsc-lite 2.x asks polkit: Debian's own policy lets the active seat session in
    (alice) and refuses bob (the inventory names no one: the negative control), until our rule names him
    (token_middleware_linux_polkit_users, the role's polkit task only); the role's own check then says so too."""
    vm = provisioned
    assert vm.sh("loginctl list-sessions --no-legend | grep -c ' bob ' || true").stdout.strip() == "0"

    def bob():
        return vm.sh("pkcs11-tool --module %s -L 2>&1" % OPENSC, user="bob", check=False)

    if vm.m["suite"] == "bookworm":
        out = bob()
        assert out.returncode == 0 and piv_card.HOLDER in out.stdout, out.stdout
        return
    vm.wait_reader(want_card=True)
    refused = bob()
    assert piv_card.HOLDER not in refused.stdout, refused.stdout
    seat = vm.seat("pkcs11-tool --module %s -L 2>&1" % OPENSC)
    assert seat.returncode == 0 and piv_card.HOLDER in seat.stdout, seat.stdout  # the active seat session: allowed
    run = vm.playbook("site.yml", "--tags", "token_middleware_linux:polkit",
                      "-e", json.dumps({"token_middleware_linux_polkit_users": ["bob"]}))
    assert run.returncode == 0 and recap(run.stdout)[vm.name]["changed"] >= 1, run.stdout[-4000:]
    rule = vm.sh("cat /etc/polkit-1/rules.d/*tokentrust*").stdout
    assert '"bob"' in rule and '"alice"' not in rule, rule
    allowed = bob()
    assert allowed.returncode == 0 and piv_card.HOLDER in allowed.stdout, allowed.stdout


@pytest.mark.vm_states
def test_card_pulled_during_the_login(provisioned, tmp_path):
    vm = provisioned
    vm.wait_reader(want_card=True)
    before = piv_card.counters(vm.card_dir)
    # the login's signature (keys 9A/9C): Debian 13's OpenSC probes the 9B admin key with GENERAL AUTHENTICATE first
    piv_card.set_delay(vm.card_dir, piv_card.INS["general_authenticate"], seconds=60, p2=(0x9A, 0x9C))
    out = {}
    try:
        t = threading.Thread(target=lambda: out.update(zip(("run", "saved"), vm.verify(tmp_path / "out"))))
        t.start()
        deadline = time.monotonic() + 600
        while not piv_card.delaying(vm.card_dir):
            assert time.monotonic() < deadline and t.is_alive(), "the login never reached GENERAL AUTHENTICATE"
            time.sleep(0.2)
        assert vmlab.card_remove(vm.m)["inserted"] is False
        t.join(900)
    finally:
        piv_card.clear_delay(vm.card_dir)
        vmlab.card_insert(vm.m)
    run, saved = out["run"], out["saved"]
    assert run.returncode != 0 and saved["ok"] is False, run.stdout[-4000:]
    assert saved["error"]["card_state"] == "card_pulled", saved["error"]
    model, reasons, _page = report_of(vm.name, saved)
    assert model["token"]["card_state"] == "card_pulled" and "What to do: put the key back" in reasons[0], reasons
    after = piv_card.counters(vm.card_dir)
    assert after["pin_tries_left"] == after["pin_tries_max"] and after["sign"] == before["sign"]
    vm.wait_reader(want_card=True)


@pytest.mark.vm_states
def test_reader_unplugged_then_plugged_back(provisioned, tmp_path):
    vm = provisioned
    vmlab.reader_unplug(vm.m)
    try:
        deadline = time.monotonic() + 60
        while USB_ID in vm.sh("lsusb").stdout:
            assert time.monotonic() < deadline, "the guest still lists the reader after device_del"
            time.sleep(1)
        before = piv_card.counters(vm.card_dir)
        run, saved = vm.verify(tmp_path / "unplugged")
        assert run.returncode != 0 and saved["ok"] is False, run.stdout[-4000:]
        assert saved["error"]["card_state"] == "no_reader", saved["error"]
        model, reasons, _page = report_of(vm.name, saved)
        assert model["token"]["card_state"] == "no_reader" and "What to do: " in reasons[0], reasons
        assert piv_card.counters(vm.card_dir) == before
    finally:
        vmlab.reader_plug(vm.m)
    vm.wait_reader(want_card=True)
    assert USB_ID in vm.sh("lsusb").stdout
    run, saved = vm.verify(tmp_path / "plugged")
    assert run.returncode == 0 and saved["ok"] is True, run.stdout[-4000:]


@pytest.mark.vm_states
def test_card_inserted_after_provisioning(provisioned, tmp_path):
    """site.yml with the card out of the reader, then verify says "reader without a key"; the card inserted, verify
    passes with no site.yml in between."""
    vm = provisioned
    vmlab.card_remove(vm.m)
    vm.wait_reader(want_card=False)
    site = vm.playbook("site.yml")
    assert site.returncode == 0 and recap(site.stdout)[vm.name]["failed"] == 0, site.stdout[-4000:]
    run, saved = vm.verify(tmp_path / "out")
    assert run.returncode != 0 and saved["error"]["card_state"] == "no_card", saved
    model, reasons, _page = report_of(vm.name, saved)
    assert "reader without a key" in reasons[0] and "What to do: insert the key" in reasons[0], reasons
    vmlab.card_insert(vm.m)
    vm.wait_reader(want_card=True)
    run, saved = vm.verify(tmp_path / "in")
    assert run.returncode == 0 and saved["ok"] is True and saved["holder"] == piv_card.HOLDER, run.stdout[-4000:]


def test_apdu_round_trips_over_usb_ccid(vm):
    """The time of one APDU round trip, guest to card and back (pcscd -> libccid -> USB -> QEMU's usb-ccid -> chardev
    -> lab/vscard.py -> the card): one opensc-tool process sending 1 and then 41 SELECTs; the difference over 40."""
    vm.wait_reader(want_card=True)
    select = "00:A4:04:00:09:A0:00:00:03:08:00:00:10:00:00"

    def timed(n):
        p = vm.sh("s=$(date +%%s.%%N); opensc-tool %s >/dev/null 2>&1; e=$(date +%%s.%%N); echo \"$s $e\""
                  % " ".join(["-s " + select] * n))
        start, end = map(float, p.stdout.split())
        return end - start

    n0 = piv_card.apdu_count(vm.card_dir)
    one, many = timed(1), timed(41)
    assert piv_card.apdu_count(vm.card_dir) - n0 >= 42  # every SELECT reached the card
    per_apdu = (many - one) / 40
    assert 0 < per_apdu < 5, per_apdu
    _times(apdu_round_trip_ms=round(per_apdu * 1000, 1))
