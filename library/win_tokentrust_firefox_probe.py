#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
# Documentation only: the module is win_tokentrust_firefox_probe.ps1 next to this file
# (a PowerShell module, Ansible.Basic).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tokentrust_firefox_probe
short_description: Find Firefox installs, gclib.dll candidates, Firefox Group Policy and policies.json files (read-only)
description:
  - Finds the Firefox installs (given folders, Mozilla's registry keys of both views and of each loaded
    user hive, per-profile installs, the Microsoft Store build) with their architecture from the PE header,
    the given gclib.dll candidates, the Firefox Group Policy registry of the machine and of each loaded
    user hive (every subkey), and each install's distribution\\policies.json.
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  firefox_dirs:
    description: Firefox install folders to look at besides those the host registers.
    type: list
    elements: str
    default: []
  gclib_paths:
    description: Candidate paths of the PKCS#11 library C(gclib.dll).
    type: list
    elements: str
    default: []
notes:
  - Needs Full Language mode (C(System.IO.BinaryReader), C(RegistryKey)).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.windows_info
"""

EXAMPLES = r"""
- name: Probe Firefox
  win_tokentrust_firefox_probe:
    firefox_dirs: ['C:\\Program Files\\Mozilla Firefox']
    gclib_paths: ['C:\\Program Files\\Gemalto\\Classic Client\\BIN\\gclib.dll']
  register: firefox
"""

RETURN = r"""
installs:
  description: C(path), C(dir), C(exists), C(machine) (PE machine type), C(version), C(kind) (machine,
    user, store).
  returned: success
  type: list
  elements: dict
gclib:
  description: C(path), C(exists), C(machine), C(version) of each candidate.
  returned: success
  type: list
  elements: dict
gpo:
  description: 'Machine Firefox Group Policy: {relative key: {value name: data}}.'
  returned: success
  type: dict
gpo_users:
  description: 'The same per loaded user hive: {SID: {relative key: {value name: data}}}.'
  returned: success
  type: dict
policies_json:
  description: '{path of each install''s policies.json: its text, or null when absent}.'
  returned: success
  type: dict
"""
