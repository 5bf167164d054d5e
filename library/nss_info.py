#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nss_info
short_description: Read the certificates and PKCS#11 modules of many NSS databases (read-only)
description:
  - Opens every given NSS database read-only, in-process through tokentrust's cffi bindings to libnss3, and returns
    its certificates (nickname, SHA-256, subject, issuer, validity, trust as C(certutil -L) prints it) and its
    PKCS#11 modules (name, library, slots and tokens with their flags).
  - Optionally compares each database with an expected CA set and module, for reports and verification.
  - Never writes anything; a database that cannot be read is reported with its error and the others still are.
  - Run as root, each database is read in a forked child acting as the database's owner (see M(nss_provision)).
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  expected_certificates:
    description:
      - CA set to compare with (entries with C(name), C(sha256) and C(nss_trust) or C(trust), such as the
        C(tokentrust_ca_set) fact). Each database then gets RV(databases[].compliant).
    type: list
    elements: dict
    default: []
  expected_module:
    description: Module expected in each database, as C(name) and C(library).
    type: dict
  home_budget:
    description:
      - Seconds the databases of one owner may take together, as in M(nss_provision). A user who stops or slows
        their own workers costs the run at most this much; a database reached after its owner's budget is used up
        is reported with an error (C(TT_TIME_BUDGET)), not read. More than 0.
    type: int
    default: 180
  run_budget:
    description: Seconds the whole call may take; databases reached after it are reported, not read. More than 0.
    type: int
    default: 3600
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_nss.databases
  - tokentrust_common.info
"""

EXAMPLES = r"""
- name: What every profile trusts, compared with the CA set
  nss_info:
    databases: "{{ __profiles.profiles }}"
    expected_certificates: "{{ tokentrust_ca_set }}"
    expected_module: {name: gem, library: /usr/lib/pkcs11/libgclib.so}
  register: __nss
"""

RETURN = r"""
databases:
  description: One entry per database.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: Database directory., type: str}
    certificates: {description: "Certificates with nickname, sha256, subject, issuer, not_after, trust.", type: list}
    modules:
      description:
        - "External PKCS#11 modules registered in C(pkcs11.txt), with name and library, read as text: no library a
          profile lists is loaded (slots and tokens are not listed)."
      type: list
    missing: {description: Expected certificates absent from the database (names)., type: list}
    wrong_trust: {description: Expected certificates present with another trust (names)., type: list}
    module_ok: {description: The expected module is registered with the expected library., type: bool}
    compliant: {description: "Nothing missing, no wrong trust, module registered (when expected).", type: bool}
    error: {description: Why the database could not be read., type: str}
    error_name: {description: "C(TT_DEADLINE) (its read was killed at its budget), C(TT_TIME_BUDGET) (not read: the
                  owner's or the run's budget was used up), C(TT_REFUSED)...", type: str}
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import fail, require

try:
    from ansible.module_utils.tokentrust_nss import CFFI_IMPORT_ERROR, NSSDatabase, NSSError, read_pkcs11_txt
    from ansible.module_utils.tokentrust_privsep import ChildError, PrivilegeError, acting_owner, run_as
    from ansible.module_utils.tokentrust_provision import (
        HOME_BUDGET,
        RUN_BUDGET,
        WORK_BUDGET,
        normalise_databases,
        quiet_stdout,
    )
    from ansible.module_utils.tokentrust_trust import encoded_trust

    IMPORT_ERROR = CFFI_IMPORT_ERROR  # None when cffi imports (the guard of tokentrust_nss)
except ImportError:
    IMPORT_ERROR = traceback.format_exc()


def read_one(path, expected, module_spec):
    res = {"path": path, "certificates": [], "modules": [], "missing": [], "wrong_trust": [], "module_ok": None,
           "compliant": False, "error": None}
    try:
        # certificates with the module database closed, modules read from pkcs11.txt as text: no PKCS#11 library
        # a profile lists is ever loaded (a user's own library would run in this worker)
        with NSSDatabase(path, readonly=True, modules=False) as db:
            certs = [c.to_dict() for c in db.certificates()]
        mods = [m for m in read_pkcs11_txt(path) if not m["internal"]]
    except NSSError as exc:
        res["error"] = str(exc)
        return res
    res["certificates"] = certs
    res["modules"] = mods
    by_fp = {c["sha256"]: c for c in certs}
    for e in expected:
        fp = (e.get("sha256") or "").replace(":", "").upper()
        have = by_fp.get(fp)
        if have is None:
            res["missing"].append(e.get("name"))
        elif encoded_trust(e.get("nss_trust") or e.get("trust") or "C,,") != have["trust"]:
            res["wrong_trust"].append(e.get("name"))
    if module_spec:
        res["module_ok"] = any(m["name"] == module_spec.get("name") and
                               (not module_spec.get("library") or m["library"] == module_spec["library"])
                               for m in mods)
    res["compliant"] = not res["missing"] and not res["wrong_trust"] and res["module_ok"] is not False
    return res


def main():
    module = AnsibleModule(
        argument_spec=dict(
            databases=dict(type="list", elements="raw", required=True),
            expected_certificates=dict(type="list", elements="dict", default=[]),
            expected_module=dict(type="dict"),
            home_budget=dict(type="int", default=180),
            run_budget=dict(type="int", default=3600),
        ),
        supports_check_mode=True,
    )
    require(module, IMPORT_ERROR, "cffi (python3-cffi)")
    for k in ("home_budget", "run_budget"):
        if module.params[k] <= 0:
            module.fail_json(msg="nss_info: %s must be more than 0 seconds, not %d; nothing was read"
                             % (k, module.params[k]))
    try:
        dbs = normalise_databases(module.params["databases"])
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, exc)
    results = read_all(dbs, module.params)
    module.exit_json(changed=False, databases=results,
                     compliant=all(r["compliant"] for r in results) if results else False)


def read_all(dbs, p):
    """Each database read as its owner in a child; one owner's databases together get at most home_budget seconds,
    the whole call run_budget (a database reached after its budget is reported, not read), one read WORK_BUDGET."""
    import time

    home_budget = float(p.get("home_budget") or HOME_BUDGET)
    run_end = time.monotonic() + float(p.get("run_budget") or RUN_BUDGET)
    spent, results = {}, []
    with quiet_stdout():
        for d in dbs:
            started, key = time.monotonic(), None
            try:
                # read as the database's owner, in a child (tokentrust_privsep): root never opens a user's files
                owner = acting_owner(d["path"], d.get("owner_uid"))
                key = owner["uid"]
                left_home, left_run = home_budget - spent.get(key, 0.0), run_end - started
                if min(left_home, left_run) <= 0:
                    raise ChildError("not read: %s (%.0f s) was used up before this database was reached; the other "
                                     "databases were read" % (
                                         "the time budget of %s's profiles" % owner["name"] if left_home <= 0
                                         else "this run's time budget",
                                         home_budget if left_home <= 0 else p.get("run_budget") or RUN_BUDGET),
                                     name="TT_TIME_BUDGET", kind="deadline")
                results.append(run_as(owner, read_one, d["path"], p["expected_certificates"], p["expected_module"],
                                      deadline=min(WORK_BUDGET, left_home, left_run)))
            except (PrivilegeError, ChildError) as exc:
                results.append({"path": d["path"], "certificates": [], "modules": [], "missing": [],
                                "wrong_trust": [], "module_ok": None, "compliant": False, "error": str(exc),
                                "error_name": getattr(exc, "name", None)})
            if key is not None:
                spent[key] = spent.get(key, 0.0) + time.monotonic() - started
    return results


if __name__ == "__main__":
    main()
