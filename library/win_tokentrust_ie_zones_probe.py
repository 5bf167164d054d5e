#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
# Documentation only: the module is win_tokentrust_ie_zones_probe.ps1 next to this file
# (a PowerShell module, Ansible.Basic).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tokentrust_ie_zones_probe
short_description: Read what decides the Internet Explorer zone of sites (read-only)
description:
  - Finds the Group Policy files (local and cached domain GPOs) that own the Site to Zone Assignment List,
    whether IE Enhanced Security Configuration is on for administrators and users, and the zone Windows
    maps each URL to (MapUrlToZone) for the connecting account.
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  urls:
    description: URLs whose zone is read.
    type: list
    elements: str
    default: []
notes:
  - Needs Full Language mode (C(System.Security.Policy.Zone), C(RegistryKey)).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.windows_info
"""

EXAMPLES = r"""
- name: Probe the zones
  win_tokentrust_ie_zones_probe:
    urls: [https://services.example.org]
  register: zones
"""

RETURN = r"""
gpo_sources:
  description: Registry.pol files that set the zone list.
  returned: success
  type: list
  elements: str
esc:
  description: 'IE ESC state: C(admins), C(users) (bools).'
  returned: success
  type: dict
zones:
  description: '{URL: zone number} (0 computer to 4 restricted).'
  returned: success
  type: dict
"""
