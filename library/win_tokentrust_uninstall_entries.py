#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
# Documentation only: the module is win_tokentrust_uninstall_entries.ps1 next to this file
# (a PowerShell module, Ansible.Basic).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tokentrust_uninstall_entries
short_description: List the machine-wide Uninstall entries of both registry views (read-only)
description:
  - Lists HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall in the 64-bit and the 32-bit (WOW6432Node)
    views, every entry with a display name.
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options: {}
notes:
  - Needs Full Language mode (C(RegistryKey.OpenBaseKey) for the 32-bit view).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.windows_info
"""

EXAMPLES = r"""
- name: List installed products
  win_tokentrust_uninstall_entries:
  register: uninstall
"""

RETURN = r"""
entries:
  description: C(key), C(display_name), C(display_version), C(publisher), C(windows_installer), C(uninstall_string),
    C(quiet_uninstall_string), C(view) (64 or 32).
  returned: success
  type: list
  elements: dict
"""
