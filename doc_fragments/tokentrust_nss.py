# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""Options shared by the NSS modules that write databases (nss_certificate, nss_pkcs11_module, nss_provision).

In this repository `ansible.cfg` points `doc_fragment_plugins` here and the modules name `tokentrust_nss`;
the collection build puts this file in plugins/doc_fragments/ and names it `tokentrust.workstation.tokentrust_nss`.
"""
from __future__ import annotations


class ModuleDocFragment:
    # every module that writes NSS databases
    DOCUMENTATION = r"""
options:
  backup:
    description: Copy the database files into a C(tokentrust-backup-<time>) directory of the profile before a change.
    type: bool
    default: false
  fail_fast:
    description: Stop at the first database that fails instead of completing the others.
    type: bool
    default: false
"""

    # the modules that import certificates (nss_certificate, nss_provision)
    CERTIFICATES = r"""
options:
  password:
    description: Primary password of the databases, if they have one.
    type: str
  nickname_conflict:
    description: What to do when a nickname is already used by a different certificate.
    type: str
    choices: [fail, rename]
    default: fail
"""

    # every NSS module that takes a list of databases (nss_certificate, nss_pkcs11_module, nss_info)
    DATABASES = r"""
options:
  databases:
    description:
      - NSS databases, as directory paths (C(sql:) prefix optional) or as profile entries returned by
        M(firefox_profiles_info) (dicts with C(path), C(in_use)).
      - The modules that write create a database that does not exist yet in an existing directory (as Firefox
        does) when they have something to write in it.
    type: list
    elements: raw
    required: true
requirements:
  - libnss3, libnspr4, libsmime3 (NSS 3.35 or later) on the target
  - python cffi on the target
"""
