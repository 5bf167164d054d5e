"""Test support for the token tests (issue 5): lab tokens, CA set, test pages, and running our modules through
ansible-playbook or in a child process (NSS and a PKCS#11 module are per process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from cryptography.hazmat.primitives import hashes

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYTHON = sys.executable
# distinctive secrets: an occurrence in an output cannot be a coincidence (a serial, a port...)
PIN = "Qz7#pin-4821"
PUK = "Puk!90817263"


def ca_set_fact(pki: dict) -> list:
    """The tokentrust_ca_set fact (as the ca_certificates role publishes it) for a lab PKI dict."""
    out = []
    for name, issued in pki.items():
        c = issued.cert
        out.append({"name": name, "pem": issued.pem.decode(), "sha256": c.fingerprint(hashes.SHA256()).hex().upper(),
                    "role": "root" if c.issuer == c.subject else "intermediate"})
    return out


def write_pems(directory: Path, issued_list) -> list:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, issued in enumerate(issued_list):
        p = directory / f"ca{i}.pem"
        p.write_bytes(issued.pem)
        paths.append(p)
    return paths


def flags_of(tok) -> list:
    """The PIN flags of a lab token, read by the lab (a child process through pin_guard), not by our bindings."""
    from lab.token import token_info

    return token_info(tok)["pin_flags"]


def ansible_env(extra=None):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_DEPRECATION_WARNINGS="0", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    env.update(extra or {})
    return env


def run_module(tmp: Path, module: str, args: dict, secrets: dict, check: bool = False, verbose: str = "",
               json_out: bool = True):
    """Run one task of `module` with ansible-playbook on localhost (local connection, this venv's Python).

    `secrets` become extra vars (from a file) referenced as "{{ name }}" in `args`, like vault variables.
    Returns (task result dict or None, CompletedProcess)."""
    tmp.mkdir(parents=True, exist_ok=True)
    n = len(list(tmp.glob("play*.yml")))
    play = tmp / f"play{n}.yml"
    task_args = json.dumps(args)
    play.write_text(textwrap.dedent(f"""\
        - name: Token test
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Run {module}
              {module}: {task_args}
        """))
    ev = tmp / f"vars{n}.json"
    ev.write_text(json.dumps(dict(secrets, ansible_python_interpreter=PYTHON)))
    os.chmod(ev, 0o600)
    cmd = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play), "-e", f"@{ev}"]
    if check:
        cmd.append("--check")
    if verbose:
        cmd.append(verbose)
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "json"} if json_out else None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)
    if not json_out:
        return None, proc
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{"):])
    except (ValueError, json.JSONDecodeError):
        msg = f"no JSON from ansible-playbook (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        raise AssertionError(msg) from None
    return data["plays"][0]["tasks"][0]["hosts"]["localhost"], proc


def run_inproc(func: str, kwargs: dict) -> dict:
    """Call <func>(**kwargs) of the test-login / PIN workflows (tokentrust_login, tokentrust_pin_action) or of the
    bindings (tokentrust_nss.token) in a child Python process and return its JSON result."""
    code = textwrap.dedent(f"""\
        import json, sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import conftest  # noqa: F401 - makes ansible.module_utils.tokentrust_* importable
        import importlib
        for name in ("tokentrust_login", "tokentrust_pin_action", "tokentrust_nss.token"):
            where = importlib.import_module("ansible.module_utils." + name)
            if hasattr(where, {func!r}):
                break
        kwargs = json.load(sys.stdin)
        print(json.dumps(getattr(where, {func!r})(**kwargs), default=str))
        """)
    proc = subprocess.run([PYTHON, "-c", code], input=json.dumps(kwargs), capture_output=True, text=True,
                          cwd=str(ROOT), timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{func} crashed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wrong_pins(tok, n: int, so: bool = False) -> None:
    """Present `n` wrong PINs (or PUKs) with an independent tool (pkcs11-tool through pin_guard)."""
    for _ in range(n):
        cmd = ["pkcs11-tool", "--module", str(tok.module), "--token-label", tok.label]
        if so:  # an SO login needs a read-write session: --init-pin opens one
            cmd += ["--login", "--login-type", "so", "--so-pin", "0000000000", "--init-pin", "--new-pin", "975312"]
        else:
            cmd += ["--login", "--pin", "000000", "--list-objects"]
        subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def empty_module(directory: Path) -> Path:
    """A pin_guard copy bound to a SoftHSM2 store without any token: "the reader is there, no key plugged in"."""
    from lab.token import SOFTHSM_MODULE, build_pin_guard

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokens").mkdir(exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    lib = directory / "libpin_guard.so"
    lib.write_bytes(build_pin_guard().read_bytes())
    (directory / "pin_guard.conf").write_text(
        f"module = {SOFTHSM_MODULE}\nsofthsm2_conf = {conf}\nstate = {directory / 'tokens' / 'pin_guard.state'}\n")
    return lib
