#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pcsc_middleware
short_description: pcscd, the CCID driver, OpenSC and pcscd's polkit rule on a Debian/Ubuntu host, in one call
description:
  - Reads in one go the dpkg status of the needed and legacy packages, whether the installed pcscd is built with
    polkit (pcsc-lite 2.x, Debian 13), the polkit rule's content, pcscd's socket (systemd) or process state, the
    system bus and the PKCS#11 library's path; when all is in place it returns C(changed=false) and does nothing
    else (the check of O(verify) aside, which only reads).
  - Otherwise it does only what is missing, under its own lock (of two runs at once, the second waits, then finds the
    first one's work and changes nothing) - legacy packages removed, the missing packages installed with
    C(apt-get) (package lists updated first when apt has no candidate; C(DPkg::Lock::Timeout) waits for another
    package manager), the polkit rule written atomically, pcscd started (C(pcscd.socket) enabled and started under
    systemd; elsewhere C(service pcscd start), and the system bus first when pcscd asks polkit over it).
  - 'Where pcscd is built with polkit, clients outside an active local session are refused
    ("Process N (user: U) is NOT authorized for action: access_pcsc"). The rule lets O(polkit_users), members of
    O(polkit_groups) (and root with O(polkit_root)) use pcscd and the cards (actions C(org.debian.pcsc-lite.access_pcsc)
    and C(org.debian.pcsc-lite.access_card)), nobody else.'
  - With O(verify), pcscd must then answer root and every user of O(polkit_users) through libpcsclite (each in a
    child process that dropped to that user), and every reader holding a card must let them connect to it.
  - Hosts that are not Debian/Ubuntu are left alone with a warning (C(supported=false)).
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  state:
    description: C(present) installs and starts; C(absent) removes O(packages) and the polkit rule.
    type: str
    choices: [present, absent]
    default: present
  packages:
    description:
      - The packages that must be installed. Default pcscd, libccid, opensc and opensc-pkcs11 (the same names on
        Debian 12 and 13).
    type: list
    elements: str
    default: []
  legacy_packages:
    description: Packages removed first when installed (older middleware claiming the same readers or keys).
    type: list
    elements: str
    default: [openct, coolkey, libgclib]
  remove_legacy:
    description: Remove O(legacy_packages) that are installed.
    type: bool
    default: true
  library:
    description:
      - The PKCS#11 library that must exist after the install (returned as RV(library)). Default Debian's OpenSC
        library of this host's architecture (C(/usr/lib/<multiarch>/opensc-pkcs11.so)).
    type: path
  polkit_users:
    description:
      - The key holders allowed to use pcscd under polkit (their own sessions, no active local one).
      - A name with a control character (a newline...) or outside letters, digits, C(_ . @ -) is refused with a
        message before anything is written (it would make the rule invalid JavaScript).
    type: list
    elements: str
    default: []
  polkit_groups:
    description: Groups whose members may use pcscd under polkit.
    type: list
    elements: str
    default: []
  polkit_root:
    description:
      - Name root in the rule too. Not needed with polkitd as Debian 13 ships it, which authorizes uid 0 for every
        action by itself (measured - root over SSH with become is authorized as soon as polkitd answers on the
        system bus); for a polkit that does not.
    type: bool
    default: false
  polkit_rule:
    description: Where the rule is written.
    type: path
    default: /etc/polkit-1/rules.d/60-tokentrust-pcscd.rules
  verify:
    description: After the install, pcscd must answer root and every user of O(polkit_users).
    type: bool
    default: true
  lock_timeout:
    description:
      - Seconds to wait for our own lock and for dpkg's lock; 0 or more (a negative value is refused).
      - Our lock is C(/run/tokentrust/pcsc-middleware.lock), in a directory only root can enter (0700); when another
        run holds it past this bound the error names the process that holds it.
    type: int
    default: 300
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common
notes:
  - C(apt-get) is run directly (not python3-apt, which a minimal Debian lacks), with
    C(--no-install-recommends), C(--force-confdef) and C(--force-confold) (a changed C(/etc/default/pcscd) is kept).
seealso:
  - module: nss_provision
"""

EXAMPLES = r"""
- name: pcscd, libccid and OpenSC; alice may use the card, and root for the test login
  pcsc_middleware:
    polkit_users: [alice]
  register: middleware

- name: The library every role registers
  ansible.builtin.debug:
    msg: "{{ middleware.library }}"
"""

RETURN = r"""
library:
  description: The PKCS#11 library (it exists when nothing was to change, or after a real run).
  returned: when supported
  type: str
  sample: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
installed:
  description: Version of each package of O(packages) (and polkitd, dbus) installed after the run.
  returned: when supported
  type: dict
  sample: {pcscd: 2.3.3-1, libccid: 1.6.2-1, opensc: 0.26.1-2, opensc-pkcs11: 0.26.1-2, polkitd: 126-2}
actions:
  description: What was done (or would be, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ["apt-get install --no-install-recommends pcscd", "write /etc/polkit-1/rules.d/60-tokentrust-pcscd.rules"]
pcscd:
  description: Version, whether it is built with polkit, and its socket or process state.
  returned: when supported
  type: dict
  sample: {version: 2.3.3, polkit: true, service: {manager: sysv, running: true, system_bus: true}}
access:
  description: PC/SC through libpcsclite per user (root first) - context, readers, SCardConnect per reader.
  returned: when O(verify) and not in check mode before the install
  type: dict
  sample: {root: {ok: true, establish: SCARD_S_SUCCESS (0x00000000), readers: [{name: Virtual PCD 00 00,
           connect: SCARD_S_SUCCESS (0x00000000), card: true, refused: false}]}}
release:
  description: ID and VERSION_CODENAME from /etc/os-release.
  returned: always
  type: dict
  sample: {id: debian, codename: trixie}
supported:
  description: False on hosts that are not Debian/Ubuntu (nothing done).
  returned: always
  type: bool
"""

import contextlib
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import fail
from ansible.module_utils.tokentrust_files import write_file
from ansible.module_utils.tokentrust_middleware import (
    LEGACY,
    PACKAGES,
    Lock,
    MiddlewareError,
    access_problem,
    check_access,
    check_names,
    default_library,
    install,
    is_debian_family,
    nothing_to_do,
    os_release,
    pcscd_features,
    plan,
    read_state,
    remove,
    service_state,
    start_bus,
    start_pcscd,
)
from ansible.module_utils.tokentrust_prerequisites import probe
from ansible.module_utils.tokentrust_privsep import owner_of_uid, run_as

NSS_PACKAGES = {"cffi": "python3-cffi", "nss3": "libnss3"}  # Debian's names (role firefox_nss's vars/main.yml)


def _summary(state, rule_path):
    lines = ["%s %s" % (k, v) for k, v in sorted(state["installed"].items())]
    svc = state.get("service") or {}
    lines.append("pcscd: %s" % ("running" if svc.get("running") else "not running"))
    lines.append("%s: %s" % (rule_path, "present" if state["rule"] is not None else "absent"))
    return "\n".join(lines) + "\n"


def run(module):
    p = module.params
    if p["lock_timeout"] < 0:
        raise MiddlewareError("bad_option", "lock_timeout must be 0 or more seconds, not %d; nothing was done"
                              % p["lock_timeout"])
    check_names(p["polkit_users"], "user")
    check_names(p["polkit_groups"], "group")
    release = os_release()
    rel = {"id": release.get("ID"), "codename": release.get("VERSION_CODENAME")}
    if not is_debian_family(release):
        msg = ("pcsc_middleware: %s is not a Debian/Ubuntu host: nothing done. Install pcscd, the CCID driver and "
               "the key's PKCS#11 library with the system's own tools" % (release.get("PRETTY_NAME") or "this host"))
        module.warn(msg)
        module.exit_json(changed=False, supported=False, msg=msg, actions=[], release=rel)
    packages = list(dict.fromkeys(p["packages"] or PACKAGES))
    library = p["library"] or default_library()
    want = {"state": p["state"], "packages": packages, "legacy": p["legacy_packages"],
            "remove_legacy": p["remove_legacy"], "users": p["polkit_users"], "groups": p["polkit_groups"],
            "root": p["polkit_root"]}

    def runner(args, env=None):
        return module.run_command(args, environ_update=env or {})

    actions = []
    lock = contextlib.nullcontext() if module.check_mode else Lock(timeout=p["lock_timeout"])
    with lock:
        before = read_state(runner, packages, want["legacy"], p["polkit_rule"], library)
        todo = plan(before, want)
        changed = not nothing_to_do(todo)
        _packages(module, p, runner, todo, actions)
        polkit = before["pcscd_polkit"]
        if todo["install"] and not module.check_mode:
            polkit = pcscd_features(runner)[1]
        changed, rule_after = _rule(module, p, before, todo, polkit, changed, actions)
        if p["state"] == "present":
            changed = _services(module, runner, before, todo, polkit, actions) or changed
        after = before if module.check_mode else read_state(runner, packages, want["legacy"], p["polkit_rule"],
                                                            library)
    result = _result(module, p, before, after, todo, rule_after, changed, actions, rel, library)
    _verify(module, p, before, after, todo, library, result)
    module.exit_json(**result)


def _packages(module, p, runner, todo, actions):
    """apt-get remove, then apt-get install (only said in check mode)."""
    if todo["remove"]:
        actions.append("apt-get remove %s" % " ".join(todo["remove"]))
        if not module.check_mode:
            remove(runner, todo["remove"], p["lock_timeout"], [])
    if todo["install"]:
        actions.append("apt-get install --no-install-recommends %s" % " ".join(todo["install"]))
        if not module.check_mode:
            install(runner, todo["install"], p["lock_timeout"], actions)


def _rule(module, p, before, todo, polkit, changed, actions):
    """The polkit rule: written (when pcscd asks polkit) or removed -> (changed, the rule after)."""
    rule_after = before["rule"]
    rule = todo["rule"] or (todo["rule_pending"] if polkit or module.check_mode else None)
    if rule and p["state"] == "present":
        actions.append("write %s%s" % (p["polkit_rule"], "" if todo["rule"] or not module.check_mode
                                       else " (if the pcscd to install is built with polkit)"))
        w = write_file(module, p["polkit_rule"], rule, attributes={"owner": "root", "group": "root",
                                                                   "mode": "0644"}, default_mode=0o644)
        changed = changed or w["changed"]
        rule_after = rule
    if todo["remove_rule"]:
        actions.append("remove %s" % p["polkit_rule"])
        rule_after = None
        if not module.check_mode:
            os.unlink(p["polkit_rule"])
    return changed, rule_after


def _services(module, runner, before, todo, polkit, actions):
    """The system bus (for polkit) and pcscd started or restarted -> True when something was (to be) changed."""
    changed = False
    svc = before["service"]
    if todo["install"] and not module.check_mode:
        svc = service_state(runner)
    need_bus = polkit and svc is not None and svc["manager"] == "sysv" and not svc["system_bus"]
    restart = False
    if need_bus or (todo["start_bus"] and module.check_mode):
        if not module.check_mode:
            start_bus(runner, actions)
        else:
            actions.append("service dbus start (pcscd asks polkit over the system bus)")
        changed = True
        restart = bool(svc and svc["running"])
    pcscd_down = svc is None or not svc["running"] or (svc["manager"] == "systemd" and todo["enable_socket"])
    if restart and not module.check_mode:
        start_pcscd(runner, actions, enable_socket=False, restart=True)
    elif restart:
        actions.append("service pcscd restart (it ran without the system bus)")
    elif pcscd_down:
        what = ("systemctl enable --now pcscd.socket" if svc and svc["manager"] == "systemd"
                else "start pcscd")
        if not module.check_mode:
            start_pcscd(runner, actions, enable_socket=bool(svc and todo["enable_socket"]))
        else:
            actions.append(what)
        changed = True
    return changed


def _result(module, p, before, after, todo, rule_after, changed, actions, rel, library):
    """The module's result, with the diff when asked for."""
    result = {"changed": changed, "supported": True, "actions": actions, "release": rel, "library": library,
              "installed": after["installed"],
              "pcscd": {"version": after["pcscd_version"], "polkit": after["pcscd_polkit"],
                        "service": after["service"]}}
    if module._diff:
        planned = dict(after, rule=rule_after)
        if module.check_mode:
            planned = dict(after, rule=rule_after, installed=dict(
                {k: v for k, v in after["installed"].items() if k not in todo["remove"]},
                **{k: "(to install)" for k in todo["install"]}))
        result["diff"] = [{"before_header": "middleware", "after_header": "middleware",
                           "before": _summary(before, p["polkit_rule"]), "after": _summary(planned, p["polkit_rule"])},
                          {"before_header": p["polkit_rule"], "after_header": p["polkit_rule"],
                           "before": before["rule"] or "", "after": rule_after or ""}]
    return result


def _verify(module, p, before, after, todo, library, result):
    """The library is there after the install, and the users can reach the key (result["access"])."""
    if p["state"] == "present" and not module.check_mode:
        if not after["library_exists"]:
            raise MiddlewareError("no_library", "the PKCS#11 library %s is not there after the install" % library,
                                  hint="Set library to the path your middleware package installs")
        if p["verify"]:
            users = [u for u in p["polkit_users"] if u != "root"]
            result["access"] = check_access(users, run_as, owner_of_uid)
            problem = access_problem(result["access"], after["pcscd_polkit"])
            if problem:
                module.fail_json(msg="pcsc_middleware: " + problem, kind="access", **result)
    elif p["state"] == "present" and p["verify"] and not todo["install"] and before["library_exists"]:
        users = [u for u in p["polkit_users"] if u != "root"]
        result["access"] = check_access(users, run_as, owner_of_uid)  # read-only: also in check mode


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            packages=dict(type="list", elements="str", default=[]),
            legacy_packages=dict(type="list", elements="str", default=list(LEGACY)),
            remove_legacy=dict(type="bool", default=True),
            library=dict(type="path"),
            polkit_users=dict(type="list", elements="str", default=[]),
            polkit_groups=dict(type="list", elements="str", default=[]),
            polkit_root=dict(type="bool", default=False),
            polkit_rule=dict(type="path", default="/etc/polkit-1/rules.d/60-tokentrust-pcscd.rules"),
            verify=dict(type="bool", default=True),
            lock_timeout=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    try:
        run(module)
    except MiddlewareError as e:
        if e.kind == "no_package_source":
            also_missing(e)
        fail(module, e)
    except Exception as e:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, e)


def also_missing(e):
    """A host without a package source usually lacks more: say what the NSS modules need too (site.yml stops here,
    before role firefox_nss could say it), so that one run tells everything to install."""
    found = probe()
    pkgs = ([] if found["python_apt"] or not found["unmet"] else ["python3-apt"]) + \
        [NSS_PACKAGES[k] for k in found["unmet"]]
    if pkgs:
        e.message += ("; the NSS modules' prerequisites are missing too (%s), which apt cannot install either"
                      % ", ".join(pkgs))
        e.hint = (e.hint or "") + " (and %s)" % " ".join(pkgs)
        e.details["nss_prerequisites"] = pkgs


if __name__ == "__main__":
    main()
