#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
# Documentation only: the module is win_tokentrust_user_profiles.ps1 next to this file
# (a PowerShell module, Ansible.Basic).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tokentrust_user_profiles
short_description: List the user profiles of a Windows host (read-only)
description:
  - Lists ProfileList with each profile's path, whether its hive is loaded and whether its NTUSER.DAT exists,
    the connecting account's SID and the Default profile.
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options: {}
notes:
  - Needs Full Language mode (C(WindowsIdentity)).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.windows_info
"""

EXAMPLES = r"""
- name: List profiles
  win_tokentrust_user_profiles:
  register: profiles
"""

RETURN = r"""
profiles:
  description: C(sid), C(profile_path), C(loaded), C(ntuser_exists).
  returned: success
  type: list
  elements: dict
connection_sid:
  description: SID of the account the module runs as.
  returned: success
  type: str
default_profile:
  description: C(path), C(ntuser_exists) of the Default profile.
  returned: success
  type: dict
"""
