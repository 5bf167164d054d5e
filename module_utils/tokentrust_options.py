# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""argument_spec pieces shared by several modules, each documented once in a doc fragment.

Pure Python (no cffi, no NSS): a module builds its argument_spec before it can tell the user that a library is
missing, so these must import everywhere.
"""
from __future__ import annotations

# the NSS modules that write databases: nss_certificate, nss_pkcs11_module, nss_provision (doc fragment
# tokentrust_nss)
NSS_WRITE_OPTIONS = dict(
    backup=dict(type="bool", default=False),
    fail_fast=dict(type="bool", default=False),
)

# the NSS modules that import certificates: nss_certificate, nss_provision (tokentrust_nss.certificates)
NSS_CERTIFICATE_OPTIONS = dict(
    nickname_conflict=dict(type="str", choices=["fail", "rename"], default="fail"),
    password=dict(type="str", no_log=True),
)

# the profile search: firefox_profiles_info, nss_provision (tokentrust_common.profiles)
PROFILE_SEARCH_OPTIONS = dict(
    users=dict(type="list", elements="str"),
    homes=dict(type="list", elements="path"),
    include_thunderbird=dict(type="bool", default=False),
    include_chromium=dict(type="bool", default=False),
)

# the token modules: pkcs11_token_login, pkcs11_pin (tokentrust_token)
TOKEN_OPTIONS = dict(
    module=dict(type="path"),
    token_label=dict(type="str", no_log=False),
    pin=dict(type="str", no_log=True),
    allow_final_try=dict(type="bool", default=False),
)
