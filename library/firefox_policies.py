#!/usr/bin/python
# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: merge our certificates and PKCS#11 device into a Firefox policies.json."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: firefox_policies
short_description: Merge CA certificates and a PKCS#11 security device into Firefox's policies.json
description:
  - Adds (or removes) C(Certificates.Install), C(Certificates.ImportEnterpriseRoots) and
    C(SecurityDevices.Add) entries in a Firefox enterprise C(policies.json), without touching
    other policies or other entries of the same lists.
  - C(state=absent) removes exactly the values this task would add, and prunes the containers
    that this removal leaves empty.
  - A malformed existing file (invalid JSON or UTF-8, wrong types in the keys we manage) is an
    error and the file is left byte-for-byte unchanged.
  - The file is written atomically (temporary file in the same directory, then rename),
    as UTF-8 JSON with mode 0644; its directory is created (0755) if missing.
  - On Linux Firefox reads C(/etc/firefox/policies/policies.json) if it exists, and only
    otherwise C(<install dir>/distribution/policies.json). Debian's firefox-esr does the same
    (its install dir is C(/usr/lib/firefox-esr)).
  - A deprecated flat C(SecurityDevices) form found in the file is kept and reported; see the
    notes.
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  path:
    description:
      - The policies.json to manage. Overrides O(location) and O(install_dir).
      - Default on Linux C(/etc/firefox/policies/policies.json) (O(location=system)) or
        C(<install_dir>/distribution/policies.json) (O(location=distribution));
        on macOS C(/Applications/Firefox.app/Contents/Resources/distribution/policies.json).
    type: path
  location:
    description:
      - Which default path to use when O(path) is not given.
      - C(system) is the machine-wide C(/etc/firefox/policies/policies.json) (Linux); it wins over
        the install's C(distribution/) file, which Firefox then does not read at all.
      - C(distribution) is the install's own C(distribution/policies.json).
    type: str
    choices: [system, distribution]
    default: system
  install_dir:
    description:
      - Firefox install dir for O(location=distribution) (or the C(.app) bundle on macOS).
      - Default the first existing of C(/usr/lib/firefox-esr), C(/usr/lib/firefox),
        C(/usr/lib64/firefox), C(/opt/firefox), C(/opt/firefox-esr).
    type: path
  certificates:
    description:
      - Certificate file paths (PEM or DER) for C(Certificates.Install). Firefox imports them
        with trust C(CT,CT,) into every profile at start-up.
    type: list
    elements: path
    default: []
  certificate_set:
    description:
      - CA certificates to deploy as files and list in C(Certificates.Install), in one call with the policies
        (entries with C(nickname) or C(name), and C(pem)), such as the C(tokentrust_ca_set) fact.
      - Only the entries whose C(nss_trust) trusts them for TLS servers (C in its first field, e.g. roots with
        C(C,,)) are listed; an entry without C(nss_trust) is listed too. Firefox re-imports any other listed
        certificate with trust C(CT,C,) at every start, against the trust provisioned in the profiles, so those
        (intermediates with C(,,)) are only deployed, and taken out of C(Certificates.Install) when listed there.
      - Each is written to C(<certificate_dir>/<nickname, lower case, non-alphanumerics as _>.pem), atomically and
        only when its content differs; O(state=absent) removes exactly these files.
    type: list
    elements: dict
    default: []
  certificate_dir:
    description: Directory for the O(certificate_set) files (created 0755 when missing).
    type: path
    default: /usr/local/share/tokentrust/ca
  certificate_owner:
    description: Owner of the deployed files (default the user running the module).
    type: str
  certificate_group:
    description: Group of the deployed files (default the user's primary group, root or wheel).
    type: str
  install_certificate_set:
    description: List the O(certificate_set) files in C(Certificates.Install) (otherwise only deploy them).
    type: bool
    default: true
  devices:
    description:
      - PKCS#11 modules for C(SecurityDevices.Add), as a dict name -> library path.
    type: dict
    default: {}
  device_name:
    description:
      - Name of one more security device whose library is the first existing of O(device_candidates)
        (or the first candidate when none exists yet).
    type: str
  device_candidates:
    description:
      - Library paths for O(device_name). Empty means every token library of the OS in the table of
        C(module_utils/tokentrust_facts.py) (Gemalto Classic Client first - Linux C(/usr/lib/pkcs11/libgclib.so),
        macOS C(libgclib.dylib) in C(Pkcs11ClassicClient.framework) - then IDPrime, SafeNet Authentication Client
        and OpenSC); the first that exists on the host is registered, else the first of them.
    type: list
    elements: path
    default: []
  import_enterprise_roots:
    description:
      - Value of C(Certificates.ImportEnterpriseRoots) (only has an effect on Windows and macOS).
      - Leave unset (null) to not manage it.
    type: bool
  state:
    description: Whether our entries must be present or absent.
    type: str
    choices: [present, absent]
    default: present
  backup:
    description: Keep a timestamped copy of the previous file when it changes.
    type: bool
    default: false
  check_files:
    description:
      - Warn when a certificate file or a device library does not exist on the host
        (Firefox reports a policy failure for them at start-up).
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common
  - ansible.builtin.files
notes:
  - Firefox must be restarted to apply policies; RV(restart_required) is true when the file changed.
  - Firefox ignores the deprecated flat C(SecurityDevices) entries as soon as C(Add) or C(Delete)
    is present. In a file that only uses the flat form, our devices are added in the flat form too
    (with a warning), so the existing devices keep working.
  - A device whose library path is already registered under another name is not added again.
  - When the file changes it is rewritten with 2-space indentation; the content of other policies
    is kept as is.
seealso:
  - name: Firefox policy templates
    description: Reference of policies.json
    link: https://mozilla.github.io/policy-templates/
"""

EXAMPLES = r"""
- name: Certificates and the Gemalto token in Firefox's machine-wide policies
  firefox_policies:
    certificates:
      - /usr/local/share/tokentrust/ca/certeurope-root-ca-3.pem
    devices:
      gem: /usr/lib/pkcs11/libgclib.so

- name: Same, in Debian firefox-esr's own distribution directory
  firefox_policies:
    location: distribution
    install_dir: /usr/lib/firefox-esr
    certificates: [/usr/local/share/tokentrust/ca/certeurope-root-ca-3.pem]
    devices: {gem: /usr/lib/pkcs11/libgclib.so}
    backup: true

- name: Remove exactly what we added
  firefox_policies:
    certificates: [/usr/local/share/tokentrust/ca/certeurope-root-ca-3.pem]
    devices: {gem: /usr/lib/pkcs11/libgclib.so}
    state: absent
"""

RETURN = r"""
path:
  description: The policies.json managed (symlinks resolved).
  returned: always
  type: str
  sample: /etc/firefox/policies/policies.json
policies:
  description: The resulting C(policies) object (after the change, or as planned in check mode).
  returned: always
  type: dict
  sample: {"Certificates": {"Install": ["/usr/local/share/tokentrust/ca/root.pem"]},
           "SecurityDevices": {"Add": {"gem": "/usr/lib/pkcs11/libgclib.so"}}}
added:
  description: Entries added (C(policy), C(key), C(value)).
  returned: always
  type: list
  elements: dict
  sample: [{"policy": "SecurityDevices", "key": "gem", "value": "/usr/lib/pkcs11/libgclib.so"}]
removed:
  description: Entries removed (or replaced, with C(note=replaced)).
  returned: always
  type: list
  elements: dict
unchanged:
  description: Our entries that were already in place (with a C(note) when relevant).
  returned: always
  type: list
  elements: dict
flat_security_devices:
  description: Deprecated flat C(SecurityDevices) entries found in the resulting file.
  returned: always
  type: dict
  sample: {"opensc": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"}
backup_file:
  description: The backup copy, when O(backup=true) and the file changed.
  returned: changed and backup
  type: str
certificate_files:
  description: >-
    The O(certificate_set) files, with C(path), C(name), C(action) (C(written), C(ok), C(removed))
    and C(ssl_ca) (true: listed in C(Certificates.Install)).
  returned: always
  type: list
  elements: dict
device_library:
  description: The library chosen for O(device_name).
  returned: when O(device_name) is set
  type: str
restart_required:
  description: True when the file changed; running Firefox instances only apply policies on restart.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import fail
from ansible.module_utils.tokentrust_files import WriteError
from ansible.module_utils.tokentrust_policies import PolicyError
from ansible.module_utils.tokentrust_policies_apply import POLICIES_OPTIONS, apply_policies


def main():
    module = AnsibleModule(
        argument_spec=dict(POLICIES_OPTIONS),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    try:
        result = apply_policies(module, module.params)
    except PolicyError as e:
        if e.path:
            e.hint = "The file was left unchanged; fix or remove it and run again"
        fail(module, e, path=e.path)
    except OSError as e:
        fail(module, WriteError(e.filename or "policies.json", e))
    except Exception as e:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, e)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
