#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
# Documentation only: the module is win_tokentrust_token_probe.ps1 next to this file
# (a PowerShell module, Ansible.Basic).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tokentrust_token_probe
short_description: Read the smart card side of a Windows host, without PIN (read-only)
description:
  - Reads the Smart Card service, Certificate Propagation and its Group Policy, the Smart Card Device Enumeration
    service, whether the host is an RDS session host, the readers Windows enumerated (PnP), the cards in
    them with their ATR (WinSCard, system scope) and the minidrivers registered for card ATRs (Calais, both
    registry views).
  - 'Never opens the card with a PIN: over WinRM there is no desktop for the PIN dialog.'
version_added: "1.1.0"
author:
  - tokentrust contributors (!UNKNOWN)
options: {}
notes:
  - Needs Full Language mode (WinSCard through C(Add-Type), C(RegistryKey.OpenBaseKey)).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.windows_info
"""

EXAMPLES = r"""
- name: Probe the smart card side
  win_tokentrust_token_probe:
  register: probe
"""

RETURN = r"""
service:
  description: SCardSvr as C(exists), C(status), C(start_type) (strings).
  returned: success
  type: dict
  sample:
    exists: true
    status: Running
    start_type: Manual
certprop:
  description: CertPropSvc, same keys as RV(service).
  returned: success
  type: dict
certprop_policy:
  description: 'C(enabled): the CertPropEnabled policy value, or null when not set.'
  returned: success
  type: dict
scdeviceenum:
  description: ScDeviceEnum, same keys as RV(service).
  returned: success
  type: dict
rds_session_host:
  description: True on an RDS session host (the key is redirected into user sessions).
  returned: success
  type: bool
pnp_readers:
  description: 'Smart card readers Windows enumerated: C(name), C(status), C(instance_id).'
  returned: success
  type: list
  elements: dict
scard:
  description: 'WinSCard view: C(context_error), C(list_error), C(readers) (C(name), C(present), C(event_state),
    C(atr), C(atr_length)).'
  returned: success
  type: dict
registered_cards:
  description: 'Cards registered under Calais\\SmartCards: C(name), C(view), C(atr), C(atr_mask), C(minidriver),
    C(csp), C(ksp).'
  returned: success
  type: list
  elements: dict
session:
  description: 'The module''s own session: C(interactive), C(id).'
  returned: success
  type: dict
"""
