#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nss_provision
short_description: Every Firefox/NSS profile of a host, the CA set and the token's PKCS#11 module, in one call
description:
  - The one module call per host that the firefox_nss role makes. It finds the profiles of the given homes or
    users (as M(firefox_profiles_info) does), then, for each profile, opens its NSS database once, in-process
    through tokentrust's cffi bindings to libnss3, applies the certificates (as M(nss_certificate)) and registers
    the PKCS#11 module (as M(nss_pkcs11_module)).
  - The module database (C(pkcs11.txt)) is read and edited as text under the profile lock; no PKCS#11 library is
    loaded by the module, neither one a profile lists (a user's own library never runs in a root-started run) nor
    the token library; the token library is checked to be a shared object for this host, then proved in a
    disposable child as C(nobody) (C_GetFunctionList, C_Initialize, C_Finalize, 20 s deadline) and not registered
    when it crashes, hangs or is not PKCS#11 (as M(nss_pkcs11_module)). Only modules named exactly O(module_name)
    are touched.
  - Profiles still in the legacy dbm format are skipped and reported. A failing profile is left untouched and
    reported with its path; the others complete unless O(fail_fast=true); the module then fails at the end.
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
requirements:
  - libnss3, libnspr4, libsmime3 on the target (Firefox's own NSS is used when the Firefox install ships one)
  - python cffi on the target
options:
  databases:
    description: Explicit NSS database directories instead of discovery.
    type: list
    elements: raw
  certificates:
    description:
      - Certificates, as for M(nss_certificate) (C(name) plus C(content), C(pem) or C(path); optional C(trust),
        C(sha256)); the C(tokentrust_ca_set) fact is accepted as it is.
    type: list
    elements: dict
    default: []
  trust:
    description: Default trust string for entries without one.
    type: str
    default: "C,,"
  state:
    description:
      - C(present) applies, C(absent) removes the certificates (and the module, unless O(module_state) says
        otherwise).
    type: str
    choices: [present, absent]
    default: present
  module_name:
    description: Security device name of the PKCS#11 module.
    type: str
    default: gem
  module_library:
    description: PKCS#11 library path (default per OS, Gemalto Classic Client).
    type: path
  module_state:
    description: C(present), C(absent), or C(ignore) to leave modules alone. Default follows O(state).
    type: str
    choices: [present, absent, ignore]
  missing_library:
    description: When the library does not exist on the host, C(warn) and skip the module, or C(fail).
    type: str
    choices: [warn, fail]
    default: warn
  lock_timeout:
    description:
      - Seconds to wait for another tokentrust run working on the same profile (runs take a per-profile lock).
        After that the profile fails as busy, unchanged.
    type: int
    default: 60
  prerequisites:
    description:
      - What to do when what the module needs on the host (python cffi for the host's Python, libnss3) is
        missing. Either way nothing is changed and RV(prerequisites) says what is missing.
      - C(fail) fails the task. C(report) returns without failing, so that the caller installs them and calls
        again (role firefox_nss does this, so one call per host is enough when they are there).
    type: str
    choices: [fail, report]
    default: fail
  policies:
    description:
      - Firefox's enterprise policies as well, in the same call, as a dict of the options of M(firefox_policies)
        (for example C(certificate_set), C(device_name), C(location)), checked as that module checks them, before
        any profile is touched. The CA files and C(policies.json) are then written after the profiles, unless a
        profile failed (as when the policies were a task of their own after this one), and RV(policies_result) is
        what M(firefox_policies) returns.
      - This makes a second C(site.yml) one remote call per host (role firefox_nss takes the policies that role
        firefox_policies hands it, see C(playbooks/firefox.yml)). Nothing is written when prerequisites are
        missing, the policies included.
    type: dict
notes:
  - Privilege model. Run as root, the module never opens a file inside a user's home itself; each home is
    scanned, and each profile provisioned, in a forked child that has dropped to the owner's uid, gid and groups.
    Profiles that resolve outside their owner's home, or are owned by another user, are refused and reported as
    failed (RV(refused)). Database files that are symbolic links are refused.
  - A profile's failure is reported for that profile only. A token library that is not a shared object for this
    host costs the module registration only (a warning with O(missing_library=warn), a failure with C(fail)).
  - Bounds (issue 22). Every worker starts clean (no descriptor of root's, stdin/stdout/stderr on /dev/null) and
    has a deadline, after which it is killed. Database files must be regular files (a FIFO or device is refused
    without blocking) of sane size (64 MiB; C(pkcs11.txt) 1 MiB). One home's profiles together get at most 180 s,
    a run 3600 s; what is not done then is reported failed with the reason. A home that cannot be scanned fails
    the task. See C(docs/security.md).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common
  - tokentrust_common.profiles
  - tokentrust_nss
  - tokentrust_nss.certificates
seealso:
  - module: firefox_profiles_info
  - module: nss_certificate
  - module: nss_pkcs11_module
"""

EXAMPLES = r"""
- name: CA set and token module in every profile of every user of the host
  nss_provision:
    certificates: "{{ tokentrust_ca_set }}"
    module_name: gem
    module_library: /usr/lib/pkcs11/libgclib.so

- name: One lab home
  nss_provision:
    homes: [/srv/lab/home-01]
    certificates: "{{ tokentrust_ca_set }}"
    module_library: /srv/lab/token/libpin_guard.so
    missing_library: fail
"""

RETURN = r"""
profiles:
  description: The profiles found (as M(firefox_profiles_info) returns them).
  returned: always
  type: list
  elements: dict
databases:
  description: One entry per profile database.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: Profile directory., type: str}
    changed: {description: Whether it was (or would be) changed., type: bool}
    certificates:
      description: "Per certificate: name, nickname, sha256 and action (add, trust, delete, ok)."
      type: list
    module: {description: "The module: name, library, action, other_names.", type: dict}
    restart_needed: {description: A running Firefox holds the profile and must restart., type: bool}
    skipped: {description: Why the profile was left alone (legacy format)., type: str}
    error: {description: Why this profile failed (it was left untouched)., type: str}
changed_databases:
  description: Number of databases changed.
  returned: always
  type: int
failed_databases:
  description: Paths of the databases that failed.
  returned: always
  type: list
  elements: str
policies_result:
  description:
    - What M(firefox_policies) returns (its C(path), C(added), C(certificate_files), C(restart_required)...), for the
      O(policies) applied in this call.
  returned: when O(policies) is given and applied
  type: dict
restart_needed:
  description: True when a changed profile is in use by a running Firefox.
  returned: always
  type: bool
refused:
  description: Profiles refused by the privilege model (path and reason); each also fails the task.
  returned: always
  type: list
  elements: dict
prerequisites:
  description:
    - What the host lacks for the module, found read-only (nothing was changed). Absent when nothing is missing.
    - C(unmet) lists the missing ones (C(cffi), C(nss3)); C(family), C(python) and C(python_apt) tell the caller
      how to install them.
  returned: when something the module needs is missing
  type: dict
  sample: {family: Debian, python: /usr/bin/python3, cffi: false, nss3: true, python_apt: false, unmet: [cffi],
           needs: [cffi for Python]}
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import TokentrustError, fail
from ansible.module_utils.tokentrust_files import WriteError
from ansible.module_utils.tokentrust_options import (
    NSS_CERTIFICATE_OPTIONS,
    NSS_WRITE_OPTIONS,
    PROFILE_SEARCH_OPTIONS,
)
from ansible.module_utils.tokentrust_policies_apply import (
    apply_policies,
    check_certificate_set,
    policies_path,
    validate_policies_options,
)
from ansible.module_utils.tokentrust_prerequisites import message as prerequisites_message
from ansible.module_utils.tokentrust_prerequisites import probe as prerequisites_probe

try:
    from ansible.module_utils.tokentrust_nss import CFFI_IMPORT_ERROR
    from ansible.module_utils.tokentrust_profiles import find_profiles
    from ansible.module_utils.tokentrust_provision import (
        default_library,
        exit_databases,
        normalise_certificates,
        normalise_databases,
        provision,
        quiet_stdout,
        require_nss,
    )

    IMPORT_ERROR = CFFI_IMPORT_ERROR  # None when cffi imports (the guard of tokentrust_nss)
except ImportError:
    IMPORT_ERROR = traceback.format_exc()


def _missing_prerequisites():
    """The read-only probe of tokentrust_prerequisites when cffi or NSS cannot be loaded, else None."""
    if IMPORT_ERROR:
        found = prerequisites_probe()
        return found if found["unmet"] else None
    detail = require_nss()
    if detail:
        found = prerequisites_probe(nss3=False)
        found["detail"] = detail
        return found
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            NSS_WRITE_OPTIONS,
            **PROFILE_SEARCH_OPTIONS,
            **NSS_CERTIFICATE_OPTIONS,
            databases=dict(type="list", elements="raw"),
            certificates=dict(type="list", elements="dict", default=[]),
            trust=dict(type="str", default="C,,"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            module_name=dict(type="str", default="gem"),
            module_library=dict(type="path"),
            module_state=dict(type="str", choices=["present", "absent", "ignore"]),
            missing_library=dict(type="str", choices=["warn", "fail"], default="warn"),
            lock_timeout=dict(type="int", default=60),
            prerequisites=dict(type="str", choices=["fail", "report"], default="fail"),
            policies=dict(type="dict"),
        ),
        mutually_exclusive=[("databases", "homes"), ("databases", "users")],
        supports_check_mode=True,
    )
    p = module.params
    _check_prerequisites(module, p)
    pol, planned = _check_policies(module, p)
    found, dbs, results, changed, failed, warnings = _provision(module, p)
    _warn(module, found, warnings, results)
    extra, extra_diff = {}, []
    if pol is not None and not failed:  # as when the policies were a task of their own after this one
        changed, extra_diff = _apply_policies(module, pol, planned, results, changed, found, extra)
    exit_databases(module, results, changed, failed, len(dbs), profiles=found["profiles"],
                   refused=found.get("refused", []), extra_diff=extra_diff, **extra)


def _check_prerequisites(module, p):
    """cffi and NSS: an import error of our own fails as it is; a missing prerequisite is reported or fails."""
    missing = _missing_prerequisites()
    if IMPORT_ERROR and not missing:  # cffi and NSS are there: an import error of our own, shown as it is
        module.fail_json(msg="nss_provision: cannot import tokentrust's module_utils", exception=IMPORT_ERROR)
    if missing:
        empty = dict(changed=False, prerequisites=missing, profiles=[], refused=[], databases=[], failed_databases=[],
                     changed_databases=0, restart_needed=False)
        if p["prerequisites"] == "report":
            module.exit_json(**empty)
        fail(module, TokentrustError("prerequisites", "%s. Nothing was changed" % prerequisites_message(missing),
                                     hint="install them (role firefox_nss does when firefox_nss_install_packages "
                                          "is true), then run again"), **empty)


def _check_policies(module, p):
    """The policies option, checked in full before any profile is touched -> (options, planned) or (None, None)."""
    pol = planned = None
    if p["policies"] is not None:  # checked in full before any profile is touched
        try:
            pol = validate_policies_options(p["policies"])
            planned = check_certificate_set(pol)
            policies_path(pol)
        except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
            fail(module, exc, changed=False, databases=[], profiles=[], refused=[])
    return pol, planned


def _provision(module, p):
    """Find the databases (given, or the profiles found) and provision them.

    -> (found, dbs, results, changed, failed, warnings)."""
    found = {"profiles": [], "warnings": []}
    try:
        if p["databases"] is not None:
            dbs = normalise_databases(p["databases"])
        else:
            found = find_profiles(users=p["users"], homes=p["homes"], include_thunderbird=p["include_thunderbird"],
                                  include_chromium=p["include_chromium"])
            dbs = normalise_databases(found["profiles"])
            dbs += [{"path": r["path"], "refused": r["reason"], "in_use": False} for r in found.get("refused", [])]
        certs = normalise_certificates(p["certificates"], p["trust"])
        library = p["module_library"] or default_library()
        mstate = p["module_state"] or p["state"]
        spec = {"name": p["module_name"], "library": library, "state": mstate, "missing_library": p["missing_library"]}
        with quiet_stdout():
            results, changed, failed, warnings = provision(
                dbs, certs, spec, state=p["state"], check_mode=module.check_mode,
                nickname_conflict=p["nickname_conflict"], backup=p["backup"], fail_fast=p["fail_fast"],
                password=p["password"], lock_timeout=p["lock_timeout"],
            )
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, exc, changed=False, databases=[], profiles=found["profiles"], refused=found.get("refused", []))
    return found, dbs, results, changed, failed, warnings


def _warn(module, found, warnings, results):
    """The finder's and the provisioning's warnings, and Firefox to restart where it runs."""
    for w in list(found.get("warnings", [])) + warnings:
        module.warn(w)
    in_use = [r["path"] for r in results if r["restart_needed"]]
    if in_use:
        module.warn("Firefox is running on %s: it loads security devices at start-up, so ask the user to restart "
                    "Firefox (nothing is lost: the change is on disk, and certificates are already seen)"
                    % ", ".join(in_use))


def _apply_policies(module, pol, planned, results, changed, found, extra):
    """policies.json after the profiles; sets extra["policies_result"] -> (changed, extra_diff)."""
    try:
        pr = apply_policies(module, pol, planned, file_attributes={})
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        if isinstance(exc, OSError):
            exc = WriteError(exc.filename or "policies.json", exc)
        done = [{k: v for k, v in r.items() if k not in ("before", "after", "module_before", "module_after")}
                for r in results]  # the profiles were done: say so with the policies' failure
        fail(module, exc, changed=changed, databases=done, failed_databases=[], profiles=found["profiles"],
             refused=found.get("refused", []))
    if pr["restart_required"] and not module.check_mode:
        module.warn("Firefox policies changed in %s: running Firefox instances apply them when restarted (new "
                    "profiles get them at first start)" % pr["path"])
    d = pr.pop("diff", None)
    extra_diff = d if isinstance(d, list) else [d] if d else []
    extra["policies_result"] = pr
    changed = changed or pr["changed"]
    return changed, extra_diff


if __name__ == "__main__":
    main()
