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
  - The paths it is given may hold environment variables (C(%ProgramFiles%\Mozilla Firefox)); they are expanded
    on the host, so Program Files moved to another drive or folder is found. C(%ProgramFiles%) means the 64-bit
    Program Files folder (C($env:ProgramW6432) when defined, so a 32-bit PowerShell gets it too), then every
    variable is expanded with C([Environment]::ExpandEnvironmentVariables). A path whose variable the host does not
    define (%ProgramFiles(x86)% on 32-bit Windows) is not looked at, but reported with C(exists=false) and a
    C(reason).
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  firefox_dirs:
    description:
      - Firefox install folders to look at besides those the host registers.
      - Environment variables are expanded on the host (C(%ProgramFiles%) is the 64-bit folder).
    type: list
    elements: str
    default: []
  gclib_paths:
    description:
      - Candidate paths of the PKCS#11 library C(gclib.dll).
      - Environment variables are expanded on the host (C(%ProgramFiles%) is the 64-bit folder).
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
    firefox_dirs: ['%ProgramFiles%\\Mozilla Firefox', 'E:\\Apps\\Mozilla Firefox']
    gclib_paths: ['%ProgramFiles%\\Gemalto\\Classic Client\\BIN\\gclib.dll',
                  '%ProgramFiles(x86)%\\Gemalto\\Classic Client\\BIN\\gclib.dll']
  register: firefox
"""

RETURN = r"""
installs:
  description:
    - C(path), C(dir), C(exists), C(machine) (PE machine type), C(version), C(kind) (machine, user, store).
    - C(dir) and C(path) as looked at, environment variables expanded (C(D:\Programmes\Mozilla Firefox));
      C(given) the O(firefox_dirs) entry as given (null for a folder the host registers); C(reason) why it was not
      looked at (an undefined environment variable), else null.
  returned: success
  type: list
  elements: dict
gclib:
  description:
    - C(path), C(exists), C(machine), C(version) of each candidate, in the order of O(gclib_paths).
    - C(path) as looked at, environment variables expanded; C(given) as given
      (C(%ProgramFiles%\Gemalto\Classic Client\BIN\gclib.dll)); C(reason) why it was not looked at (an
      undefined environment variable, C(path) then still holds it), else null.
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
  description: '{path of each existing install''s policies.json: its text, or null when absent}.'
  returned: success
  type: dict
program_files:
  description:
    - 'The host''s Program Files folders: C(x64) (C($env:ProgramW6432)) and C(x86) (the variable ProgramFiles(x86)),
      each null when the host does not define it (32-bit Windows).'
  returned: success
  type: dict
  sample: {x64: 'D:\Programmes', x86: 'D:\Programmes (x86)'}
"""
