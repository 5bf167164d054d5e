#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
# Documentation only: the module is win_tokentrust_private_dir_probe.ps1 next to this file
# (a PowerShell module, Ansible.Basic).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tokentrust_private_dir_probe
short_description: Read kind and owner SID of folders (read-only)
description:
  - 'For each path: whether it exists, is a folder, is a reparse point, and its owner as a SID (account
    names are localized) with the translated name.'
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  paths:
    description: Paths to read, typically the chain of an admin-only folder.
    type: list
    elements: str
    default: []
notes:
  - Needs Full Language mode (C(Get-Acl) owner as C(SecurityIdentifier)).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.windows_info
"""

EXAMPLES = r"""
- name: Read the chain
  win_tokentrust_private_dir_probe:
    paths: ['C:\\ProgramData\\tokentrust']
  register: chain
"""

RETURN = r"""
folders:
  description: C(path), C(exists), C(isdir), C(reparse), C(owner_sid), C(owner_name).
  returned: success
  type: list
  elements: dict
"""
