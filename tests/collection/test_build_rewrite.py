"""scripts/build_collection.py rewrites YAML structurally: only module actions, role references and imported
playbooks found in the parsed YAML are qualified (in place, comments and layout kept); a task *named* like a role,
a variable named like a module, a comment or a string mentioning them stay as they are."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import build_collection  # noqa: E402

FQ = "tokentrust.workstation"

TASKS = """---
- name: firefox_nss                 # a task named like a role
  nss_provision:                    # the action
    databases: [/tmp/x]
  vars:
    nss_info: 1                     # a variable named like a module
    role: firefox_nss               # a variable named role
- name: Include the role
  ansible.builtin.include_role:
    name: firefox_nss
- name: A block
  block:
    - name: "nss_info"
      nss_info:
        databases: ["{{ d | tokentrust_win_path('x') }}"]
  rescue:
    - name: Import the role quoted
      ansible.builtin.import_role:
        name: 'token_verify'
- name: Mention nss_info and firefox_nss in a message
  ansible.builtin.debug:
    msg: "nss_info: firefox_nss"
"""

EXPECTED_TASKS = f"""---
- name: firefox_nss                 # a task named like a role
  {FQ}.nss_provision:                    # the action
    databases: [/tmp/x]
  vars:
    nss_info: 1                     # a variable named like a module
    role: firefox_nss               # a variable named role
- name: Include the role
  ansible.builtin.include_role:
    name: {FQ}.firefox_nss
- name: A block
  block:
    - name: "nss_info"
      {FQ}.nss_info:
        databases: ["{{{{ d | {FQ}.tokentrust_win_path('x') }}}}"]
  rescue:
    - name: Import the role quoted
      ansible.builtin.import_role:
        name: '{FQ}.token_verify'
- name: Mention nss_info and firefox_nss in a message
  ansible.builtin.debug:
    msg: "nss_info: firefox_nss"
"""

PLAYBOOK = """---
- name: Stage one
  ansible.builtin.import_playbook: ca.yml
- name: firefox_policies
  hosts: all
  vars:
    firefox_nss: {enabled: true}
  roles:
    - firefox_policies
    - role: firefox_nss
      tags: [firefox_nss]
  tasks:
    - name: token_verify
      nss_info:
        databases: []
"""

EXPECTED_PLAYBOOK = f"""---
- name: Stage one
  ansible.builtin.import_playbook: {FQ}.ca
- name: firefox_policies
  hosts: all
  vars:
    firefox_nss: {{enabled: true}}
  roles:
    - {FQ}.firefox_policies
    - role: {FQ}.firefox_nss
      tags: [firefox_nss]
  tasks:
    - name: token_verify
      {FQ}.nss_info:
        databases: []
"""


@pytest.fixture(scope="module")
def rw():
    return build_collection.Rewriter("tokentrust", "workstation")


def test_tasks_file_is_rewritten_structurally(rw):
    assert rw.yaml_text(TASKS, "roles/x/tasks/main.yml") == EXPECTED_TASKS


def test_playbook_is_rewritten_structurally(rw):
    assert rw.yaml_text(PLAYBOOK, "playbooks/x.yml", playbook=True) == EXPECTED_PLAYBOOK


def test_role_dependencies_in_meta(rw):
    meta = "---\ngalaxy_info:\n  role_name: firefox_nss\ndependencies:\n  - role: firefox_policies\n  - token_verify\n"
    assert rw.yaml_text(meta, "roles/x/meta/main.yml") == (
        f"---\ngalaxy_info:\n  role_name: firefox_nss\ndependencies:\n  - role: {FQ}.firefox_policies\n"
        f"  - {FQ}.token_verify\n")


def test_module_examples_are_rewritten_the_same_way(rw):
    src = 'EXAMPLES = r"""\n- name: nss_info\n  nss_info:\n    databases: [/tmp/d]\n"""\n'
    want = f'EXAMPLES = r"""\n- name: nss_info\n  {FQ}.nss_info:\n    databases: [/tmp/d]\n"""\n'
    assert rw.python(src, "library/x.py") == want


def test_invalid_yaml_fails_the_build_with_the_file(rw):
    with pytest.raises(build_collection.BuildError, match="roles/x/tasks/bad.yml: not valid YAML"):
        rw.yaml_text("- name: [unclosed\n", "roles/x/tasks/bad.yml")
