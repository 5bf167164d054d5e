#!/usr/bin/python
# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pkcs11_pin
short_description: Change the PIN of the USB key, or unblock it with the PUK
version_added: "1.0.0"
description:
  - O(action=change) changes the user PIN (C(C_SetPIN) with the current PIN).
  - O(action=unblock) unblocks a locked (or forgotten) user PIN with the PUK, which is the token's Security
    Officer PIN, and sets a new user PIN (C(C_Login) as SO, then C(C_InitPIN)).
  - The new PIN is checked first (length within the token's own bounds C(ulMinPinLen)/C(ulMaxPinLen), optionally
    narrowed; characters; confirmation; different from the current PIN), so that a PIN the token would refuse
    never costs an attempt.
  - "Same guard as M(pkcs11_token_login): the PIN (for change) or the PUK (for unblock) is never presented when
    the token says final try, unless O(allow_final_try=true), nor when locked. Three wrong PUKs block the key
    for good: a PUK at its final try deserves the same care as the last PIN attempt."
  - Each secret is presented at most once per run; none is returned or logged.
  - The guard holds the same per-token lock as M(pkcs11_token_login) (keyed by the token's serial, across
    processes) from reading the counters to the end of the change or unblock, so parallel runs never present a
    PIN or PUK that one run alone would not.
  - This is an action, not a state. A second run with the same current PIN is a wrong PIN (it has changed),
    which the guard limits to one attempt; run it once per key.
author:
  - tokentrust contributors (!UNKNOWN)
requirements:
  - NSS (libnss3) on the host
options:
  action:
    description: What to do.
    type: str
    required: true
    choices: [change, unblock]
  pin:
    description: The current user PIN (O(action=change)).
    type: str
  puk:
    description: The PUK, i.e. the token's SO PIN (O(action=unblock)).
    type: str
  new_pin:
    description: The new user PIN.
    type: str
    required: true
  new_pin_confirm:
    description: The new PIN typed a second time; when given it must be equal to O(new_pin).
    type: str
  allow_final_try:
    description: Present the PIN (change) or PUK (unblock) even at its final try.
    type: bool
    default: false
  pin_charset:
    description: Characters allowed in the new PIN.
    type: str
    choices: [digits, alphanumeric, printable]
    default: printable
  pin_min_length:
    description: Minimum length of the new PIN (default, the token's C(ulMinPinLen)); may only narrow the token's.
    type: int
  pin_max_length:
    description: Maximum length of the new PIN (default, the token's C(ulMaxPinLen), capped at 16).
    type: int
  reject_weak:
    description: Refuse new PINs such as 0000 or 1234 (one repeated character or a run).
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common
  - tokentrust_common.token
attributes:
  check_mode:
    support: full
    details: Checks the new PIN and the guards; presents nothing to the token.
  diff_mode:
    support: none
seealso:
  - module: pkcs11_token_login
"""

EXAMPLES = r"""
- name: Change the PIN (values from vars_prompt or the vault)
  pkcs11_pin:
    action: change
    pin: "{{ token_pin_current }}"
    new_pin: "{{ token_pin_new }}"
    new_pin_confirm: "{{ token_pin_new_confirm }}"
    pin_charset: digits

- name: Unblock with the PUK
  pkcs11_pin:
    action: unblock
    puk: "{{ token_pin_puk }}"
    new_pin: "{{ token_pin_new }}"
    new_pin_confirm: "{{ token_pin_new_confirm }}"
"""

RETURN = r"""
changed:
  description: True when the PIN was changed or unblocked (in check mode, when it would be tried).
  returned: always
  type: bool
token:
  description: The token after the call (label, serial, flags, user_pin and so_pin states).
  returned: when a token was found
  type: dict
token_before:
  description: The token before the call.
  returned: when a token was found
  type: dict
pin_rules:
  description: The rules the new PIN was checked against (min_length, max_length, charset).
  returned: when a token was found
  type: dict
pin_attempts:
  description: How many times the current PIN was presented (0 or 1).
  returned: always
  type: int
puk_attempts:
  description: How many times the PUK was presented (0 or 1).
  returned: always
  type: int
error:
  description: On failure, kind (pin_rules, pin_locked, pin_final_try, wrong_pin, puk_locked, puk_final_try,
    wrong_puk, no_token, module_missing, ...) and message.
  returned: on failure
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import exit_report, fail, require
from ansible.module_utils.tokentrust_options import TOKEN_OPTIONS

try:
    from ansible.module_utils.tokentrust_nss import CFFI_IMPORT_ERROR
    from ansible.module_utils.tokentrust_nss.token import default_module
    from ansible.module_utils.tokentrust_pin_action import pin_action

    IMPORT_ERROR = CFFI_IMPORT_ERROR  # None when cffi imports (the guard of tokentrust_nss)
except ImportError:
    IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            TOKEN_OPTIONS,
            action=dict(type="str", required=True, choices=["change", "unblock"]),
            puk=dict(type="str", no_log=True),
            new_pin=dict(type="str", required=True, no_log=True),
            new_pin_confirm=dict(type="str", no_log=True),
            pin_charset=dict(type="str", default="printable", choices=["digits", "alphanumeric", "printable"]),
            pin_min_length=dict(type="int"),
            pin_max_length=dict(type="int"),
            reject_weak=dict(type="bool", default=True),
        ),
        required_if=[("action", "change", ("pin",)), ("action", "unblock", ("puk",))],
        supports_check_mode=True,
    )
    require(module, IMPORT_ERROR, "cffi and NSS (libnss3)")
    p = module.params
    path = p["module"] or default_module()  # type=path: ~ and $VARS already expanded by AnsibleModule
    try:
        rep = pin_action(
            path, p["action"], label=p["token_label"], pin=p["pin"], puk=p["puk"], new_pin=p["new_pin"],
            new_pin_confirm=p["new_pin_confirm"], allow_final_try=p["allow_final_try"], charset=p["pin_charset"],
            min_len=p["pin_min_length"], max_len=p["pin_max_length"], reject_weak=p["reject_weak"],
            check_mode=module.check_mode,
        )
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, exc)
    exit_report(module, rep)


if __name__ == "__main__":
    main()
