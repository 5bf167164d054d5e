"""playbooks/token_pin.yml over SSH with become on a fleet workstation, against the token plugged into it."""
import pytest

from tests.fleet.conftest import recap

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def test_token_pin_change_over_ssh(fleet):
    host = fleet.hosts[-1]
    module = fleet.m["token_module"]
    run = fleet.playbook("token_pin.yml", "-l", host, "-e", "token_pin_hosts=linux", "-e", "token_pin_module=" + module,
                         "-e", "token_pin_current=1234", "-e", "token_pin_puk=", "-e", "token_pin_new=8052",
                         "-e", "token_pin_new_confirm=8052")
    assert run.returncode == 0, run.stdout[-3000:]
    assert recap(run.stdout)[host]["changed"] == 1
    assert "PIN changed on token" in run.stdout and "CERTEUROPE LAB" in run.stdout
    # the key itself, read inside the workstation with OpenSC's pkcs11-tool: the new PIN logs in
    out = fleet.sh(host, "pkcs11-tool --module %s --login --pin 8052 --list-objects --type cert" % module).stdout
    assert "JEAN DUPONT" in out or "Certificate Object" in out, out
