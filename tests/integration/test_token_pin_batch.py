"""playbooks/token_pin.yml in batch, as docs/token.md describes it (issue 18, Why 3): the PUK and the new PIN in a
vault-encrypted file, NO terminal (stdin /dev/null, so Ansible does not prompt and leaves the string 'None' in the
prompted variables), on the lab token (SoftHSM2 behind pin_guard). The counters are read from the token (pin_guard's
state, and an independent pkcs11-tool login), never from our report. On f8c7a58 the action was a *change* with the
PIN 'None': a locked key was never unblocked and an unlocked one lost a PIN try.

Run: .venv/bin/pytest tests/integration/test_token_pin_batch.py
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.support.token_lab import BIN, PIN, PUK, PYTHON, ROOT, ansible_env, flags_of, wrong_pins

pytestmark = pytest.mark.skipif(shutil.which("softhsm2-util") is None or shutil.which("pkcs11-tool") is None,
                                reason="softhsm2 / opensc not installed")
NEW = "86420975"
SAY = "Token PIN | Say what was done"
DO = "Token PIN | Change or unblock"


@pytest.fixture()
def tok(tmp_path):
    from lab.pki import certeurope_standin
    from lab.token import create_token

    return create_token(tmp_path / "token", pin=PIN, puk=PUK, pki=certeurope_standin())


def inventory(tmp):
    inv = tmp / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {"it_desk": {"hosts": {"lab-ws": {
        "ansible_connection": "local", "ansible_python_interpreter": PYTHON}}}}}}))
    pw = tmp / "vault-pass"
    pw.write_text("lab vault password\n")
    return inv, pw


def vault_file(tmp, pw, data):
    path = tmp / "pins.vault.yml"
    path.write_text(yaml.safe_dump(data))
    subprocess.run([str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(pw), str(path)],
                   check=True, capture_output=True, env=ansible_env())
    return path


def run_batch(tmp, tok, data, *extra):
    """token_pin.yml with no terminal: stdin /dev/null, in a new session (no controlling tty)."""
    inv, pw = inventory(tmp)
    pins = vault_file(tmp, pw, data)
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), "playbooks/token_pin.yml",
                           "-e", "token_pin_module=%s" % tok.module, "-e", "@%s" % pins,
                           "--vault-password-file", str(pw), *extra],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=str(ROOT), timeout=300,
                          start_new_session=True, env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "json"}))
    data = json.loads(proc.stdout[proc.stdout.index("{"):])
    tasks = {t["task"]["name"]: t["hosts"].get("lab-ws", {}) for t in data["plays"][0]["tasks"]}
    for secret in (PIN, PUK, NEW):
        assert secret not in proc.stdout + proc.stderr
    return tasks, data["stats"]["lab-ws"], proc


def logs_in(tok, pin) -> bool:
    """An independent login (pkcs11-tool through pin_guard)."""
    proc = subprocess.run(["pkcs11-tool", "--module", str(tok.module), "--token-label", tok.label, "--login",
                           "--pin", pin, "--list-objects"], capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode == 0


def test_locked_key_is_unblocked_from_a_vault_file_without_a_terminal(tok, tmp_path):
    wrong_pins(tok, 3)
    assert "user_pin_locked" in flags_of(tok)
    tasks, stats, proc = run_batch(tmp_path, tok, {"token_pin_puk": PUK, "token_pin_new": NEW})
    assert "Not prompting as we are not in interactive mode" in proc.stderr + proc.stdout
    assert stats["failures"] == 0, proc.stdout[-3000:]
    assert tasks[DO]["changed"] is True and tasks[DO]["invocation"]["module_args"]["action"] == "unblock"
    assert tasks[DO]["puk_attempts"] == 1 and tasks[DO]["pin_attempts"] == 0
    assert "PIN unblocked with the PUK and set on token 'CERTEUROPE LAB'" in tasks[SAY]["msg"]
    assert tok.counters() == (0, 0) and flags_of(tok) == []  # from the token: unlocked, no wrong PUK
    assert logs_in(tok, NEW)


def test_unblock_on_a_key_not_blocked_spends_no_pin_try(tok, tmp_path):
    assert tok.counters() == (0, 0)
    tasks, stats, proc = run_batch(tmp_path, tok, {"token_pin_puk": PUK, "token_pin_new": NEW})
    assert stats["failures"] == 0, proc.stdout[-3000:]
    assert tasks[DO]["invocation"]["module_args"]["action"] == "unblock" and tasks[DO]["pin_attempts"] == 0
    assert tok.counters() == (0, 0) and flags_of(tok) == []  # f8c7a58: (1, 0), a PIN try spent on 'None'
    assert logs_in(tok, NEW)


def test_puk_and_current_pin_both_given_means_unblock(tok, tmp_path):
    """PUK + new PIN => unblock, never change, even when a current PIN is also in the file."""
    tasks, stats, proc = run_batch(tmp_path, tok, {"token_pin_current": "11111111", "token_pin_puk": PUK,
                                                   "token_pin_new": NEW})
    assert stats["failures"] == 0, proc.stdout[-3000:]
    assert tasks[DO]["invocation"]["module_args"]["action"] == "unblock"
    assert tok.counters() == (0, 0) and logs_in(tok, NEW)


def test_no_new_pin_without_a_terminal_presents_nothing(tok, tmp_path):
    tasks, stats, proc = run_batch(tmp_path, tok, {"token_pin_puk": PUK})
    assert stats["failures"] == 1
    check = tasks["Token PIN | Check the inputs"]
    assert check["failed"] is True and "nothing was presented to the key" in check["msg"]
    assert DO not in tasks and tok.counters() == (0, 0) and logs_in(tok, PIN)


def test_check_mode_never_says_changed(tok, tmp_path):
    tasks, stats, proc = run_batch(tmp_path, tok, {"token_pin_current": PIN, "token_pin_new": NEW}, "--check")
    assert stats["failures"] == 0, proc.stdout[-3000:]
    msg = tasks[SAY]["msg"]
    assert "PIN changed" not in msg and msg.startswith("Check mode, nothing presented to the key")
    assert tasks[DO]["pin_attempts"] == 0 and tok.counters() == (0, 0) and logs_in(tok, PIN)
