#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nss_pkcs11_module
short_description: Register or remove a PKCS#11 module (security device) in many NSS databases in one call
description:
  - "Registers the token's PKCS#11 library (Gemalto/Thales Classic Client C(gclib) by default, module name C(gem))
    in the C(pkcs11.txt) of every given NSS database, with the entry C(modutil -add) writes, by editing the file as
    text under the profile lock. No library the file already lists is loaded; this one is loaded only to prove it,
    in a disposable child as nobody (see below), never by the module itself."
  - Idempotent, a module with the same name and library is left alone. A module already registered under
    another name with the same library is reported (RV(databases[].other_names)), not duplicated.
  - Only entries named exactly O(name) are replaced or removed (C(gemalto) and C(gem2) stay when C(gem) is
    registered); the diff's after-state is C(pkcs11.txt) as written.
  - A library missing on the host, or not a shared object for this host (checked without loading it), cannot be
    registered; the module warns and skips (O(missing_library=warn)) or fails (O(missing_library=fail)).
  - Before it is registered the library is proved, in check mode too, in a disposable child (every inherited
    descriptor closed, dropped to C(nobody), environment cleared, 20 s deadline) that calls C(C_GetFunctionList),
    C(C_Initialize) and C(C_Finalize). One that crashes, hangs, cannot be loaded or is not PKCS#11 is not
    registered, with a message naming the file and what it did (Firefox would crash or fail at every start).
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  name:
    description: Module name shown in Firefox's security devices.
    type: str
    default: gem
  library:
    description:
      - Path of the PKCS#11 library on the target. Default per OS, on Linux C(/usr/lib/pkcs11/libgclib.so),
        on macOS C(/Library/Frameworks/Pkcs11ClassicClient.framework/Versions/A/Pkcs11ClassicClient/libgclib.dylib)
        (the one per-OS table, C(module_utils/tokentrust_facts.py)).
    type: path
  state:
    description: C(present) registers the module, C(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  missing_library:
    description: What to do when O(library) does not exist on the host and O(state=present).
    type: str
    choices: [warn, fail]
    default: warn
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_nss.databases
  - tokentrust_common
  - tokentrust_nss
seealso:
  - module: nss_certificate
"""

EXAMPLES = r"""
- name: Register the Gemalto library as security device "gem" in every profile
  nss_pkcs11_module:
    databases: "{{ __profiles.profiles }}"
    name: gem
    library: /usr/lib/pkcs11/libgclib.so
    missing_library: fail

- name: Remove it
  nss_pkcs11_module:
    databases: ["/home/jean/.mozilla/firefox/abcd.default-esr"]
    name: gem
    state: absent
"""

RETURN = r"""
databases:
  description: One entry per database.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: Database directory., type: str}
    action:
      description: >-
        C(add), C(replace) (same name, other library), C(delete), C(ok), C(registered_under_other_name)
        or C(skipped_missing_library).
      type: str
    other_names: {description: Names under which the same library is already registered., type: list}
    changed: {description: Whether this database was (or would be) changed., type: bool}
    restart_needed: {description: The profile is in use by a running Firefox., type: bool}
    error: {description: Why this database failed (it was left untouched)., type: str}
library:
  description: The library path used.
  returned: always
  type: str
  sample: /usr/lib/pkcs11/libgclib.so
failed_databases:
  description: Paths of the databases that failed.
  returned: always
  type: list
  elements: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import fail, require
from ansible.module_utils.tokentrust_options import NSS_WRITE_OPTIONS

try:
    from ansible.module_utils.tokentrust_nss import CFFI_IMPORT_ERROR
    from ansible.module_utils.tokentrust_provision import (
        apply_module,
        default_library,
        exit_databases,
        normalise_databases,
        quiet_stdout,
    )

    IMPORT_ERROR = CFFI_IMPORT_ERROR  # None when cffi imports (the guard of tokentrust_nss)
except ImportError:
    IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            NSS_WRITE_OPTIONS,
            databases=dict(type="list", elements="raw", required=True),
            name=dict(type="str", default="gem"),
            library=dict(type="path"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            missing_library=dict(type="str", choices=["warn", "fail"], default="warn"),
        ),
        supports_check_mode=True,
    )
    require(module, IMPORT_ERROR, "cffi (python3-cffi)")
    p = module.params
    library = p["library"] or default_library()
    try:
        dbs = normalise_databases(p["databases"])
        with quiet_stdout():
            results, changed, failed, warnings = apply_module(
                dbs, p["name"], library, state=p["state"], check_mode=module.check_mode,
                missing_library=p["missing_library"], backup=p["backup"], fail_fast=p["fail_fast"],
            )
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, exc, library=library, databases=[], changed=False)
    for w in warnings:
        module.warn(w)
    others = sorted({n for r in results for n in r.get("other_names", [])})
    if others:
        module.warn("library %s is already registered under another name (%s) in some databases: not registered "
                    "again as %r" % (library, ", ".join(others), p["name"]))
    exit_databases(module, results, changed, failed, len(dbs), diff_suffix="/pkcs11.txt", library=library)


if __name__ == "__main__":
    main()
