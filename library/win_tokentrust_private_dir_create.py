#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
# Documentation only: the module is win_tokentrust_private_dir_create.ps1 next to this file
# (a PowerShell module, Ansible.Basic).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tokentrust_private_dir_create
short_description: Create an admin-only folder with its final ACL, or bring an existing one to it
description:
  - 'Creates the folder WITH its final ACL in the same call (it never exists with the ACL it would inherit),
    or replaces an existing folder''s ACL: protected DACL, full control for Administrators (S-1-5-32-544)
    and SYSTEM (S-1-5-18), read for O(read_sids), owner Administrators.'
  - 'A folder that exists although the caller''s probe found it missing (O(existed) false) was made by someone
    else in between: the module fails and changes nothing.'
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  path:
    description: The folder.
    type: str
    required: true
  read_sids:
    description: SIDs given read access (ReadAndExecute).
    type: list
    elements: str
    default: []
  existed:
    description: Whether the caller's probe found the folder; false and a folder there is a refusal.
    type: bool
    default: false
notes:
  - Needs Full Language mode (C(DirectorySecurity), C(FileSystemAccessRule)).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.windows
"""

EXAMPLES = r"""
- name: Make the folder admin-only
  win_tokentrust_private_dir_create:
    path: 'C:\\ProgramData\\tokentrust'
    read_sids: [S-1-5-32-545]
    existed: false
"""

RETURN = r"""
path:
  description: The folder.
  returned: success
  type: str
created:
  description: Whether the folder was (or, in check mode, would be) created.
  returned: success
  type: bool
fixed:
  description: Whether an existing folder's ACL was (would be) replaced.
  returned: success
  type: bool
"""
