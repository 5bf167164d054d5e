"""molecule/windows: runs against a Windows VM given in TOKENTRUST_WIN_HOST, and never passes without one."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _molecule(env_extra, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRUST_WIN_")}
    env.update(PATH=BIN + os.pathsep + os.environ["PATH"], ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0",
               PY_COLORS="0", **env_extra)
    return subprocess.run([os.path.join(BIN, "molecule"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)


def test_windows_scenario_without_a_host_is_not_green():
    p = _molecule({}, "test", "-s", "windows")
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-4000:]
    assert "NOT RUN: no Windows host configured, nothing was tested" in out, out[-4000:]


@pytest.mark.skipif(not os.environ.get("TOKENTRUST_WIN_HOST"),
                    reason="no Windows VM: set TOKENTRUST_WIN_HOST/USER/PASSWORD (docs/windows.md) to run "
                           "molecule/windows against one; the Windows roles were NOT run against Windows")
def test_windows_scenario_on_a_vm():
    p = _molecule({k: v for k, v in os.environ.items() if k.startswith("TOKENTRUST_WIN_")}, "test", "-s", "windows")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert "idempotence" in out and "failed=0" in out


def test_the_scenario_hands_the_msi_product_code_and_other_version_mode_to_the_role(tmp_path):
    """The host the scenario adds carries what the environment names (no Windows needed: nothing connects)."""
    out = tmp_path / "vars.json"
    play = tmp_path / "add.yml"
    play.write_text(f"""---
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_tasks: {ROOT}/molecule/windows/tasks/add_host.yml
    - ansible.builtin.copy:
        dest: {out}
        content: "{{{{ {{'pid': hostvars['win.invalid'].token_middleware_product_id,
                       'other': hostvars['win.invalid'].token_middleware_other_version}} | to_json }}}}"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRUST_WIN_")}
    env.update(TOKENTRUST_WIN_HOST="win.invalid", TOKENTRUST_WIN_USER="u", TOKENTRUST_WIN_PASSWORD="p",
               TOKENTRUST_WIN_MSI_PRODUCT_ID="{A1B2C3D4-0000-1111-2222-333344445555}",
               TOKENTRUST_WIN_OTHER_VERSION="remove", ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    p = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
                        "-e", f"ansible_python_interpreter={sys.executable}", str(play)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    import json  # noqa: PLC0415

    assert json.loads(out.read_text()) == {"pid": "{A1B2C3D4-0000-1111-2222-333344445555}", "other": "remove"}
