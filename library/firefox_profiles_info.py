#!/usr/bin/python
# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: list the Firefox (Thunderbird, Chromium) NSS profiles of the users of a host."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: firefox_profiles_info
short_description: Find every Firefox profile (and optionally Thunderbird / Chromium NSS databases) of local users
description:
  - Reads C(profiles.ini) and C(installs.ini) of every Firefox profile root of the selected users
    and returns one entry per existing profile directory, ready to feed the NSS modules
    (RV(profiles[].nss_db)).
  - "Roots looked at in each home: C(~/.mozilla/firefox), C(~/.config/mozilla/firefox) (Firefox 147+),
    snap C(~/snap/firefox/common/.mozilla/firefox), flatpak C(~/.var/app/org.mozilla.firefox/.mozilla/firefox)
    and C(~/.var/app/org.mozilla.firefox/config/mozilla/firefox), macOS C(~/Library/Application Support/Firefox);
    with O(include_thunderbird) C(~/.thunderbird) and its snap, flatpak and macOS variants;
    with O(include_chromium) the shared C(~/.pki/nssdb)."
  - Relative and absolute profile paths are supported; a malformed C(profiles.ini) is reported for
    its root (RV(roots[].error) and a warning) and the other roots are still listed.
  - Read-only; never changes anything.
version_added: "1.0.0"
author:
  - tokentrust contributors (!UNKNOWN)
options:
  check_locks:
    description: Determine whether each profile is in use by a running Firefox (RV(profiles[].in_use)).
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - tokentrust_common.info
  - tokentrust_common.profiles
notes:
  - "A profile is in use when its C(lock) symlink (C(host:+pid)) names a running pid on this host, or
    when C(.parentlock) is held (checked with C(F_GETLK), without taking the lock). RV(profiles[].lock)
    tells how it was decided."
  - Profiles listed in C(profiles.ini) whose directory does not exist are skipped with a warning.
"""

EXAMPLES = r"""
- name: Find every Firefox profile on the host
  firefox_profiles_info:
  register: __profiles

- name: Profiles of two users, Thunderbird and Chromium included
  firefox_profiles_info:
    users: [alice, bob]
    include_thunderbird: true
    include_chromium: true

- name: Lab homes (owner = the home directory's owner)
  firefox_profiles_info:
    homes: [/srv/lab/ws1/home/alice]
  register: __lab

- name: Feed the NSS modules
  ansible.builtin.debug:
    msg: "{{ __lab.profiles | map(attribute='nss_db') | list }}"
"""

RETURN = r"""
profiles:
  description: One entry per profile directory found.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Absolute profile directory.
      type: str
      sample: /home/alice/.mozilla/firefox/abcd.default-esr
    name:
      description: Name from profiles.ini.
      type: str
      sample: default-esr
    kind:
      description: C(firefox), C(firefox-snap), C(firefox-flatpak), C(thunderbird) or C(chromium).
      type: str
    root:
      description: The directory holding profiles.ini.
      type: str
    relative:
      description: IsRelative of profiles.ini.
      type: bool
    default:
      description: Default=1 in profiles.ini, or the Default of an install in installs.ini.
      type: bool
    default_for_installs:
      description: Install hashes that use it as their default profile.
      type: list
      elements: str
    format:
      description: C(sql) (cert9.db, key4.db, pkcs11.txt), C(dbm) (cert8.db, secmod.db only) or C(none) yet.
      type: str
    in_use:
      description: Whether a running Firefox holds the profile lock (absent when O(check_locks=false)).
      type: bool
    lock:
      description: How RV(profiles[].in_use) was decided.
      type: str
      sample: "lock symlink -> 127.0.1.1:+4242: pid 4242 is running"
    owner:
      description: The user the home belongs to (C(name), C(uid), C(gid)).
      type: dict
      sample: {"name": "alice", "uid": 1000, "gid": 1000}
    path_owner:
      description: Owner of the profile directory itself (C(name), C(uid), C(gid)).
      type: dict
    nss_db:
      description: NSS database spec for our NSS modules.
      type: str
      sample: "sql:/home/alice/.mozilla/firefox/abcd.default-esr"
roots:
  description: Every profile root found, with its profile count and parse error (null when fine).
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/home/alice/.mozilla/firefox", "kind": "firefox", "user": "alice", "profiles": 2, "error": null}]
  contains:
    path: {description: The profile root directory., type: str}
    kind:
      description: Which application and packaging, C(firefox), C(firefox-snap), C(firefox-flatpak), C(thunderbird)...
      type: str
    user: {description: Owner of the home it was found in., type: str}
    profiles: {description: Number of profiles listed in its profiles.ini., type: int}
    error: {description: Why its profiles.ini could not be read (null when fine)., type: str}
homes:
  description: The homes scanned with their owner.
  returned: always
  type: list
  elements: dict
refused:
  description:
    - Profiles refused by the privilege model, with C(path), C(owner) and C(reason) (a C(profiles.ini) Path
      or a symlink leading outside the owner's home, a profile owned by another user). They are not listed in
      RV(profiles).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.tokentrust_errors import run
from ansible.module_utils.tokentrust_options import PROFILE_SEARCH_OPTIONS
from ansible.module_utils.tokentrust_profiles import find_profiles


def main():
    module = AnsibleModule(
        argument_spec=dict(PROFILE_SEARCH_OPTIONS, check_locks=dict(type="bool", default=True)),
        mutually_exclusive=[("users", "homes")],
        supports_check_mode=True,
    )
    p = module.params
    res = run(module, lambda: find_profiles(users=p["users"], homes=p["homes"],
                                            include_thunderbird=p["include_thunderbird"],
                                            include_chromium=p["include_chromium"], locks=p["check_locks"]))
    for w in res.pop("warnings"):
        module.warn(w)
    module.exit_json(changed=False, **res)


if __name__ == "__main__":
    main()
