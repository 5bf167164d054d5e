# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""Attributes and options shared by tokentrust's modules.

`tokentrust_common` (DOCUMENTATION): a module that changes POSIX hosts, full check and diff mode.
`tokentrust_common.info`: a module that only reads (check mode full, no diff).
`tokentrust_common.windows_info`: a PowerShell module of ours that only reads a Windows host (the probes).
`tokentrust_common.windows`: a PowerShell module of ours that changes a Windows host (check mode full, no diff).
`tokentrust_common.profiles`: the profile search options (firefox_profiles_info, nss_provision).
`tokentrust_common.token`: which token (pkcs11_token_login, pkcs11_pin).
Both go with `ansible.builtin.action_common_attributes` (which describes the attributes); a module that says more
about one attribute (details) states that attribute whole in its own `attributes:`.
The collection build names this fragment `tokentrust.workstation.tokentrust_common`.
"""
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
  diff_mode:
    support: full
"""

    INFO = r"""
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: The module never changes anything.
  diff_mode:
    support: none
"""

    WINDOWS_INFO = r"""
attributes:
  platform:
    platforms: windows
  check_mode:
    support: full
    details: The module never changes anything.
  diff_mode:
    support: none
notes:
  - A PowerShell module (C(#AnsibleRequires -CSharpUtil Ansible.Basic)), so that it can be signed and listed in
    Ansible's signed manifest (C(powershell_signatures.psd1), ansible-core 2.19+) for hosts under App Control (WDAC)
    or AppLocker, where a C(ansible.windows.win_powershell) script body runs in Constrained Language mode.
"""

    WINDOWS = r"""
attributes:
  platform:
    platforms: windows
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - A PowerShell module (C(#AnsibleRequires -CSharpUtil Ansible.Basic)), so that it can be signed and listed in
    Ansible's signed manifest (C(powershell_signatures.psd1), ansible-core 2.19+) for hosts under App Control (WDAC)
    or AppLocker, where a C(ansible.windows.win_powershell) script body runs in Constrained Language mode.
"""

    PROFILES = r"""
options:
  users:
    description:
      - User names whose homes are scanned.
      - Default every user with a real home directory and uid >= 1000 (500 on macOS), plus root.
    type: list
    elements: str
  homes:
    description:
      - Explicit home directories to scan instead of O(users); each home's owner is the directory's owner.
    type: list
    elements: path
  include_thunderbird:
    description: Also take Thunderbird profiles.
    type: bool
    default: false
  include_chromium:
    description: Also take the shared Chromium/Chrome NSS database C(~/.pki/nssdb) when it exists.
    type: bool
    default: false
"""

    TOKEN = r"""
options:
  module:
    description:
      - Path of the PKCS#11 library of the token middleware on the host.
      - Default, the first token library of the table in C(module_utils/tokentrust_facts.py) that exists on the host
        (Gemalto Classic Client, IDPrime, SafeNet Authentication Client, OpenSC), else Classic Client's path for the
        OS, Linux C(/usr/lib/pkcs11/libgclib.so), macOS
        C(/Library/Frameworks/Pkcs11ClassicClient.framework/Versions/A/Pkcs11ClassicClient/libgclib.dylib).
    type: path
  token_label:
    description:
      - Label of the token to use. Without it, the only token present is used; several tokens are an error.
    type: str
"""
