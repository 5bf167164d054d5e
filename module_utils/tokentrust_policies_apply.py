# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apply Firefox's enterprise policies on a Linux/macOS host: the CA files, then our fragment merged into
policies.json. Shared by the module firefox_policies and by nss_provision's `policies` option (the one remote call
per host of a second site.yml: the profiles and the policies in the same call).

The pure parts (build, load, validate, merge) are in tokentrust_policies, shared with the Windows helper; this file
writes, through an AnsibleModule (check mode, diff, atomic writes, warnings).
"""
from __future__ import annotations

import grp
import os
import platform
import pwd

from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_facts import (
    ca_entry_name,
    ca_file_name,
    token_library_paths,
    trusted_for_tls_servers,
)
from ansible.module_utils.tokentrust_files import with_attributes_diff, write_file
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

# firefox_policies' options (its argument_spec; nss_provision validates its `policies` dict against it)
POLICIES_OPTIONS = dict(
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
)


def validate_policies_options(value, where="policies"):
    """`value` (a dict of firefox_policies' options) checked and completed with their defaults as that module's own
    argument_spec does; TokentrustError("input") naming every bad key otherwise."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    if not isinstance(value, dict):
        raise TokentrustError("input", "%s: expected a dict of firefox_policies options, got %s"
                              % (where, type(value).__name__))
    res = ArgumentSpecValidator(POLICIES_OPTIONS).validate(dict(value))
    if res.error_messages:
        raise TokentrustError("input", "%s: %s" % (where, "; ".join(to_native(e) for e in res.error_messages)),
                              hint="it takes the options of the firefox_policies module (ansible-doc firefox_policies)")
    return res.validated_parameters


def _ids(owner, group):
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as e:
        raise PolicyError(f"unknown owner or group for the certificate files: {to_native(e)}") from None
    return uid, gid


def check_certificate_set(p):
    """Every certificate_set entry checked (nothing written yet): [(entry, nickname, file path, PEM or None)].

    Its 'pem' must be one X.509 certificate whose SHA-256 matches the entry's pin when it has one; the file, named by
    us after the nickname in certificate_dir, gets that certificate re-encoded, never the text as given."""
    _ids(p["certificate_owner"], p["certificate_group"])  # a clear message before anything is written
    planned = []
    for i, ca in enumerate(p["certificate_set"]):
        nick = ca_entry_name(ca)  # file names and the TLS-server rule: module_utils/tokentrust_facts.py
        pem = ca.get("pem")
        if not nick or not pem:
            raise PolicyError(f"certificate_set[{i}]: needs 'nickname' (or 'name') and 'pem'")
        content = None
        if p["state"] == "present":
            content = certificate_pem(pem, f"certificate_set[{i}] ({nick})", ca.get("sha256"))[0]
        planned.append((ca, nick, os.path.join(p["certificate_dir"], ca_file_name(nick)), content))
    return planned


def deploy_certificate_files(module, p, planned=None):
    """Write (or remove) the certificate_set files; returns (entries, changed)."""
    out, changed = [], False
    for ca, nick, path, content in (check_certificate_set(p) if planned is None else planned):
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


def policies_path(p):
    path = p["path"] or default_policies_path(platform.system(), p["location"], p["install_dir"])
    path = os.path.realpath(path)
    if os.path.isdir(path):
        raise TokentrustError("input", f"{path} is a directory, expected the policies.json file path", path=path)
    return path


def apply_policies(module, p, planned=None, file_attributes=None):
    """The CA files, then policies.json; returns firefox_policies' result (with `diff` when module._diff).

    `file_attributes`: policies.json's mode/owner/group (None: the module's own common file options)."""
    path = policies_path(p)
    files, files_changed = deploy_certificate_files(module, p, planned)
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
    diff = {"before": before_text, "after": after_text, "before_header": path, "after_header": path}
    if res.changed or os.path.exists(path):  # never an empty file where there was none
        w = write_file(module, path, after_text, backup=p["backup"], attributes=file_attributes)
        if w["backup_file"]:
            result["backup_file"] = w["backup_file"]
        result["changed"] = result["changed"] or w["changed"]
        diff = with_attributes_diff(diff, [(path, w)])
    if module._diff:
        result["diff"] = diff
    return result
