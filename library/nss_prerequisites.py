#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nss_prerequisites
short_description: What tokentrust's NSS modules need on a host (cffi, libnss3), found read-only
description:
  - Looks, without needing them and without changing anything, whether the host's own Python has cffi and whether
    libnss3 can be found; also the OS family and whether python3-apt is there (what installing them takes).
  - Role firefox_policies asks it before any change, so that a host that could not take the profiles' part is
    left untouched. M(nss_provision) gives the same answer by itself (with C(prerequisites=report)),
    so role firefox_nss needs no separate call.
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
options: {}
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.info
seealso:
  - module: nss_provision
"""

EXAMPLES = r"""
- name: What the NSS modules need
  nss_prerequisites:
  register: found

- name: Say what is missing
  ansible.builtin.debug:
    msg: "{{ found.prerequisites.unmet }}"
"""

RETURN = r"""
prerequisites:
  description:
    - C(unmet) lists what is missing (C(cffi), C(nss3)); C(family) (Debian, RedHat, Linux, Darwin...), C(python)
      (the interpreter that runs the modules) and C(python_apt) tell how to install it.
  returned: always
  type: dict
  sample: {family: Debian, python: /usr/bin/python3, cffi: false, nss3: true, python_apt: false, unmet: [cffi],
           needs: [cffi for Python]}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_prerequisites import probe


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    module.exit_json(changed=False, prerequisites=probe())


if __name__ == "__main__":
    main()
