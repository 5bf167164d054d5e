#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nss_certificate
short_description: Import, trust or remove CA certificates in many NSS databases (Firefox profiles) in one call
description:
  - Applies a set of certificates to every given NSS database (C(sql:) format, with C(cert9.db), C(key4.db)
    and C(pkcs11.txt)) in-process, through tokentrust's cffi bindings to libnss3. No C(certutil) processes.
  - One database is opened at a time; for each, the state is read, the changes are decided, then applied.
  - The same certificate already present with the same trust is left alone (nothing is written); a wrong trust is
    corrected; a nickname used by a different certificate is an error, or a rename with O(nickname_conflict=rename).
  - A failure in one database leaves that database exactly as it was and is reported with its path; the other
    databases still complete unless O(fail_fast=true). The module fails at the end if any database failed.
  - When run as root on users' profiles, every database file keeps the profile owner and mode.
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  certificates:
    description:
      - Certificates to apply. Each entry has C(name) (the NSS nickname) and one of C(content) (PEM text),
        C(pem) or C(path) (PEM or DER file on the target), and optionally C(trust) and C(sha256).
      - The entries of the C(tokentrust_ca_set) fact published by the ca_certificates role are accepted as they
        are (C(name), C(pem), C(nss_trust), C(sha256)).
    type: list
    elements: dict
    required: true
  trust:
    description: Default trust string (certutil syntax, SSL,S/MIME,code signing) for entries without one.
    type: str
    default: "C,,"
  state:
    description: C(present) imports with the trust; C(absent) removes the certificates (matched by content).
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_nss.databases
  - tokentrust_common
  - tokentrust_nss
  - tokentrust_nss.certificates
notes:
  - Firefox reads its certificate database at start-up; a profile in use gets the change at its next start
    (RV(databases[].restart_needed)).
seealso:
  - module: nss_pkcs11_module
  - module: firefox_profiles_info
"""

EXAMPLES = r"""
- name: Trust the validated CA set in every profile of the host
  nss_certificate:
    databases: "{{ __profiles.profiles }}"
    certificates: "{{ tokentrust_ca_set }}"

- name: Import one root with explicit trust into a shared Chromium database
  nss_certificate:
    databases: ["~jean/.pki/nssdb"]
    certificates:
      - name: CertEurope Root CA 2
        path: /usr/local/share/tokentrust/ca/certeurope_root_ca_2.pem
        trust: "CT,C,"

- name: Remove the certificates again
  nss_certificate:
    databases: ["/home/jean/.mozilla/firefox/abcd.default-esr"]
    certificates: "{{ tokentrust_ca_set }}"
    state: absent
"""

RETURN = r"""
databases:
  description: One entry per database, in input order.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: Database directory., type: str}
    changed: {description: Whether this database was (or would be) changed., type: bool}
    created: {description: Whether the database files were created by this run., type: bool}
    actions:
      description: Per certificate, C(add), C(trust) (trust corrected), C(delete) or C(ok).
      type: list
      elements: dict
    restart_needed:
      description: The profile is in use by a running Firefox that must restart to see the change.
      type: bool
    backup: {description: Backup directory when O(backup=true) and something changed., type: str}
    error: {description: Why this database failed (it was left untouched)., type: str}
  sample:
    - path: /home/jean/.mozilla/firefox/abcd.default-esr
      changed: true
      created: false
      restart_needed: false
      actions: [{name: CertEurope Root CA 2, nickname: CertEurope Root CA 2, action: add, sha256: "4214..."}]
changed_databases:
  description: Number of databases changed.
  returned: always
  type: int
failed_databases:
  description: Paths of the databases that failed.
  returned: always
  type: list
  elements: str
restart_needed:
  description: True when at least one changed profile is in use by a running Firefox.
  returned: always
  type: bool
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import fail, require
from ansible.module_utils.tokentrust_options import NSS_CERTIFICATE_OPTIONS, NSS_WRITE_OPTIONS

try:
    from ansible.module_utils.tokentrust_nss import CFFI_IMPORT_ERROR
    from ansible.module_utils.tokentrust_provision import (
        apply_certificates,
        exit_databases,
        normalise_certificates,
        normalise_databases,
        quiet_stdout,
    )

    IMPORT_ERROR = CFFI_IMPORT_ERROR  # None when cffi imports (the guard of tokentrust_nss)
except ImportError:  # cffi missing on the target
    IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            NSS_WRITE_OPTIONS,
            **NSS_CERTIFICATE_OPTIONS,
            databases=dict(type="list", elements="raw", required=True),
            certificates=dict(type="list", elements="dict", required=True),
            trust=dict(type="str", default="C,,"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        supports_check_mode=True,
    )
    require(module, IMPORT_ERROR, "cffi (python3-cffi)")
    p = module.params
    try:
        dbs = normalise_databases(p["databases"])
        certs = normalise_certificates(p["certificates"], p["trust"])
        with quiet_stdout():
            results, changed, failed = apply_certificates(
                dbs, certs, state=p["state"], check_mode=module.check_mode,
                nickname_conflict=p["nickname_conflict"], backup=p["backup"], fail_fast=p["fail_fast"],
                password=p["password"],
            )
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, exc, databases=[], changed=False)
    exit_databases(module, results, changed, failed, len(dbs))


if __name__ == "__main__":
    main()
