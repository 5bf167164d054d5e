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

import grp
import os
import platform
import pwd

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.tokentrust_errors import TokentrustError, fail
from ansible.module_utils.tokentrust_facts import (
    ca_entry_name,
    ca_file_name,
    token_library_paths,
    trusted_for_tls_servers,
)
from ansible.module_utils.tokentrust_files import WriteError, with_attributes_diff, write_file
from ansible.module_utils.tokentrust_policies import (
    PolicyError,
    certificate_pem,
    default_policies_path,
    desired_policies,
    dump_policies,
    flat_security_devices,
    load_policies,
    plan_merge,
)


def _ids(module, owner, group):
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as e:
        raise PolicyError(f"unknown owner or group for the certificate files: {to_native(e)}") from None
    return uid, gid


def deploy_certificate_files(module, p):
    """Write (or remove) the certificate_set files; returns (entries, changed).

    Every entry is checked first (nothing is written when one is bad): its 'pem' must be one X.509 certificate
    whose SHA-256 matches the entry's pin when it has one; the file, named by us after the nickname in
    certificate_dir, gets that certificate re-encoded, never the text as given."""
    out, changed = [], False
    d = p["certificate_dir"]
    _ids(module, p["certificate_owner"], p["certificate_group"])  # a clear message before anything is written
    planned = []
    for i, ca in enumerate(p["certificate_set"]):
        nick = ca_entry_name(ca)  # file names and the TLS-server rule: module_utils/tokentrust_facts.py
        pem = ca.get("pem")
        if not nick or not pem:
            raise PolicyError(f"certificate_set[{i}]: needs 'nickname' (or 'name') and 'pem'")
        content = None
        if p["state"] == "present":
            content = certificate_pem(pem, f"certificate_set[{i}] ({nick})", ca.get("sha256"))[0]
        planned.append((ca, nick, os.path.join(d, ca_file_name(nick)), content))
    for ca, nick, path, content in planned:
        entry = {"name": ca.get("name") or nick, "path": path, "ssl_ca": trusted_for_tls_servers(ca.get("nss_trust"))}
        exists = os.path.isfile(path)
        if p["state"] == "absent":
            entry["action"] = "removed" if exists else "ok"
            if exists and not module.check_mode:
                os.unlink(path)
        else:
            w = write_file(module, path, content, attributes={"mode": 0o644, "owner": p["certificate_owner"],
                                                              "group": p["certificate_group"]})
            entry["action"] = "written" if w["changed"] else "ok"
        changed = changed or entry["action"] != "ok"
        out.append(entry)
    return out, changed


def run(module):
    p = module.params
    path = p["path"]
    if not path:
        path = default_policies_path(platform.system(), p["location"], p["install_dir"])
    path = os.path.realpath(path)
    if os.path.isdir(path):
        raise TokentrustError("input", f"{path} is a directory, expected the policies.json file path", path=path)

    files, files_changed = deploy_certificate_files(module, p)
    certificates = list(p["certificates"])
    # Certificates.Install lists only the set's CAs trusted for TLS servers (NSS trust 'C' in the SSL field).
    # Firefox's policy engine re-imports, at every start, each listed certificate that is not trusted as an SSL
    # CA, with trust CT,C,: listing the intermediates (trust ',,') made Firefox and every later run disagree.
    uninstalled = []
    if p["install_certificate_set"]:
        for f in files:
            (certificates if p["state"] == "absent" or f["ssl_ca"] else uninstalled).append(f["path"])
    devices = dict(p["devices"])
    device_library = None
    if p["device_name"]:
        candidates = p["device_candidates"] or token_library_paths(platform.system(), guess=True)
        device_library = next((c for c in candidates if os.path.isfile(c)), candidates[0])
        devices[p["device_name"]] = device_library
    desired = desired_policies(certificates, devices, p["import_enterprise_roots"])

    before_text = ""
    existing = {}
    if os.path.exists(path):
        with open(path, "rb") as f:
            raw = f.read()
        existing = load_policies(raw, path)   # PolicyError: nothing written
        before_text = raw.decode("utf-8")

    res = plan_merge(existing, desired, p["state"])
    if uninstalled:  # listed by an earlier version: taken out, or Firefox keeps re-trusting them
        stale = plan_merge(res.doc, desired_policies(uninstalled, {}, None), "absent")
        res.doc = stale.doc
        res.removed += [dict(e, note="not trusted for TLS servers: Firefox would re-import it with CT,C,")
                        for e in stale.removed]
    for w in res.warnings:
        module.warn(f"{path}: {w}")
    if p["check_files"] and p["state"] == "present":
        for c in p["certificates"]:  # the certificate_set files are ours: written above
            if not os.path.isfile(c):
                module.warn(f"certificate file {c} does not exist on this host: Firefox will report "
                            "'Unable to find certificate' at start-up")
        for name, lib in devices.items():
            if not os.path.isfile(lib):
                module.warn(f"library {lib} of security device {name!r} does not exist on this host: "
                            "Firefox will fail to add it")

    after_text = dump_policies(res.doc) if res.changed else before_text
    result = {
        "changed": res.changed or files_changed,
        "certificate_files": files,
        "path": path,
        "policies": res.doc.get("policies", {}),
        "flat_security_devices": flat_security_devices(res.doc),
        "restart_required": res.changed or files_changed,
        **res.as_dict(),
    }
    if device_library:
        result["device_library"] = device_library
    result.pop("warnings")
    if module._diff:
        result["diff"] = {"before": before_text, "after": after_text,
                          "before_header": path, "after_header": path}
    if res.changed or os.path.exists(path):  # never an empty file where there was none
        w = write_file(module, path, after_text, backup=p["backup"])
        if w["backup_file"]:
            result["backup_file"] = w["backup_file"]
        result["changed"] = result["changed"] or w["changed"]
        if module._diff:
            result["diff"] = with_attributes_diff(result["diff"], [(path, w)])
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            location=dict(type="str", default="system", choices=["system", "distribution"]),
            install_dir=dict(type="path"),
            certificates=dict(type="list", elements="path", default=[]),
            devices=dict(type="dict", default={}),
            device_name=dict(type="str"),
            device_candidates=dict(type="list", elements="path", default=[]),
            certificate_set=dict(type="list", elements="dict", default=[]),
            certificate_dir=dict(type="path", default="/usr/local/share/tokentrust/ca"),
            certificate_owner=dict(type="str"),
            certificate_group=dict(type="str"),
            install_certificate_set=dict(type="bool", default=True),
            import_enterprise_roots=dict(type="bool"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            backup=dict(type="bool", default=False),
            check_files=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    try:
        run(module)
    except PolicyError as e:
        if e.path:
            e.hint = "The file was left unchanged; fix or remove it and run again"
        fail(module, e, path=e.path)
    except OSError as e:
        fail(module, WriteError(e.filename or "policies.json", e))
    except Exception as e:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, e)


if __name__ == "__main__":
    main()
