#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
# Documentation only: the module is win_tokentrust_logged_on_users.ps1 next to this file
# (a PowerShell module, Ansible.Basic).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tokentrust_logged_on_users
short_description: List the users logged on at a Windows host (read-only)
description:
  - Owners of C(explorer.exe), one per interactive session (console or RDP). The WinRM session itself has
    no explorer.exe.
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options: {}
notes:
  - 'Constrained Language mode safe (CIM cmdlets, hashtables, casts to core types): it needs signing only
    because Ansible.Basic is compiled C#.'
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.windows_info
"""

EXAMPLES = r"""
- name: Who is logged on
  win_tokentrust_logged_on_users:
  register: sessions
"""

RETURN = r"""
users:
  description: C(user) (DOMAIN\\name) and C(session) (id).
  returned: success
  type: list
  elements: dict
"""
