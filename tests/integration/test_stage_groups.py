"""playbooks/hosts.yml sorts EVERY host into the stage groups, whatever the fleet's size against `forks`.

Found on the 50-workstation fleet (issue 21): the sorting task skipped itself once the group `tokentrust_sorted`
existed (`'tokentrust_sorted' not in groups`); with more hosts than forks, Ansible evaluates the condition of the
later batches after the first batch's group_by took effect, so those hosts were never sorted, and site.yml left
them untouched with rc 0 (changed=19 for 50 hosts, forks 20). The guard is now per host (`group_names`).

Real ansible-playbook, local connection, N inventory hosts, hosts.yml imported twice as site.yml does (site.yml,
then firefox.yml); each host of the stage play is counted from the json callback."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


@pytest.mark.parametrize("hosts, forks", [(5, 1), (7, 3)])
def test_every_host_sorted_with_more_hosts_than_forks(tmp_path, hosts, forks):
    names = ["ws%02d" % i for i in range(hosts)]
    (tmp_path / "inventory.yml").write_text(json.dumps({"linux": {"hosts": {
        n: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable} for n in names}}}))
    hosts_yml = os.path.join(ROOT, "playbooks", "hosts.yml")
    (tmp_path / "play.yml").write_text(json.dumps([
        {"name": "sort", "ansible.builtin.import_playbook": hosts_yml},
        {"name": "sort again (firefox.yml imports it too)", "ansible.builtin.import_playbook": hosts_yml},
        {"name": "stage", "hosts": "tokentrust_firefox", "gather_facts": False,
         "tasks": [{"name": "in the stage", "ansible.builtin.debug": {"msg": "{{ group_names }}"}}]}]))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", TOKENTRUST_STATE_DIR=str(tmp_path / "state"))
    p = subprocess.run([PLAYBOOK, "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml"),
                        "-f", str(forks)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout[p.stdout.index("{"):])
    stage = [pl for pl in out["plays"] if pl["play"]["name"] == "stage"][0]
    seen = stage["tasks"][0]["hosts"]
    assert sorted(seen) == names, "hosts left out of the stage: %s" % sorted(set(names) - set(seen))
    for n in names:
        assert "tokentrust_firefox" in seen[n]["msg"] and "tokentrust_sorted" in seen[n]["msg"]
