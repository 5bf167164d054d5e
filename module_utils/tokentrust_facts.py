# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The facts tokentrust relies on, kept once: names, paths, patterns and per-OS libraries.

Pure data and pure functions, importing nothing of Ansible: modules and module_utils import it as
``ansible.module_utils.tokentrust_facts``; roles reach it through the ``tokentrust_*`` filters of
``filter_plugins/tokentrust.py``, never through a Jinja copy.

- The middleware's PKCS#11 library per OS (``GEMALTO_CLASSIC_CLIENT``, ``library_candidates``, ``default_library``)
  and every token library of the key family (``TOKEN_LIBRARIES``, ``find_token_library``): tokentrust_token_library.
- NSS trust strings (``NSS_TRUST_LETTERS``, ``NSS_TRUST_RE``, ``is_nss_trust``).
- CA file names (``ca_file_stem``, ``ca_file_name``, ``ca_files``) and which CAs Firefox's policies install
  (``trusted_for_tls_servers``).
- Where Firefox reads policies.json (``LINUX_SYSTEM_POLICIES``, ``LINUX_INSTALL_DIRS``, ``MACOS_APP``,
  ``distribution_policies``, ``policies_candidates``).

macOS: Classic Client installs a framework; its PKCS#11 library is
``/Library/Frameworks/Pkcs11ClassicClient.framework/Versions/A/Pkcs11ClassicClient/libgclib.dylib`` (the path the
Web eID project's libelectronic-id uses for LuxTrust / Luxembourg eID cards on the same middleware). An earlier copy
of this table said ``.../Versions/A/Libraries/libgclib.dylib``: no public material names that path, so it is not
listed.
"""
from __future__ import annotations

import ntpath
import platform
import posixpath
import re

# ---------------------------------------------------------------------------------------------------------------
# The middleware's PKCS#11 library, per OS
# ---------------------------------------------------------------------------------------------------------------
# Keys are platform.system() values. The first entry of each list is the default; the others are places older or
# repackaged installs use (looked up by what probes the host: firefox_policies, the Windows Firefox plan, which
# also picks the DLL of Firefox's bitness among them, so both Program Files trees are listed).
# Windows paths are written with environment variables (%ProgramFiles%, %ProgramFiles(x86)%, %SystemRoot%): Program
# Files may be on another drive or folder, so the host's own values are used, expanded ON THE HOST by the probe
# (library/win_tokentrust_firefox_probe.ps1; there %ProgramFiles% is the 64-bit folder, $env:ProgramW6432, even in a
# 32-bit PowerShell). A variable the host does not define (%ProgramFiles(x86)% on 32-bit Windows) is no path.
GEMALTO_CLASSIC_CLIENT = {
    "Linux": [
        "/usr/lib/pkcs11/libgclib.so",
        "/usr/lib64/pkcs11/libgclib.so",
        "/usr/lib/ClassicClient/libgclib.so",
    ],
    "Darwin": [
        "/Library/Frameworks/Pkcs11ClassicClient.framework/Versions/A/Pkcs11ClassicClient/libgclib.dylib",
        "/usr/local/lib/ClassicClient/libgclib.dylib",
    ],
    "Windows": [
        "%ProgramFiles%\\Gemalto\\Classic Client\\BIN\\gclib.dll",
        "%ProgramFiles%\\Thales\\Classic Client\\BIN\\gclib.dll",
        "%ProgramFiles(x86)%\\Gemalto\\Classic Client\\BIN\\gclib.dll",
        "%ProgramFiles(x86)%\\Thales\\Classic Client\\BIN\\gclib.dll",
    ],
}
# Another Unix-like OS with no entry: its packages lay the library out as on Linux (guess=True).
_GUESS_FOR_UNKNOWN = "Linux"

# Every token library this key family really ships with, per OS, in the order a host is searched (the first that
# exists on the host is the default of tokentrust_token_library): the manual's Classic Client first, then Thales'
# IDPrime library, SafeNet Authentication Client's eToken library, and the distribution's OpenSC. Each path is cited.
# - Classic Client: GEMALTO_CLASSIC_CLIENT above (docs/token.md; macOS: web-eid/libelectronic-id).
# - IDPrime (SafeNet Authentication Client 10.x ships libIDPrimePKCS11 beside libeTPkcs11): Linux /usr/lib and
#   /usr/lib/pkcs11 (the SAC 10.8 .deb's usr/lib, NixOS/nixpkgs pkgs/by-name/pc/pcsc-safenet/package.nix; the
#   B-Trust BISS setup checks /usr/lib/pkcs11/libIDPrimePKCS11.so), /usr/lib64 on RPM systems; macOS
#   /Library/Frameworks/eToken.framework/Versions/A/libIDPrimePKCS11.dylib; Windows the SAC x64 folder
#   (C:\Program Files\SafeNet\Authentication\SAC\x64\IDPrimePKCS1164.dll on a default install, written
#   %ProgramFiles%\... here) and System32 (IDPrimePKCS11.dll, %SystemRoot%\System32\...).
# - SafeNet Authentication Client (eToken): Linux /usr/lib/libeTPkcs11.so (SafeNet Authentication Client (Linux)
#   Administrator Guide 007-013842-001; the same .deb), /usr/lib/pkcs11/libeTPkcs11.so; macOS
#   /usr/local/lib/libeTPkcs11.dylib and eToken.framework's libeToken.dylib (open-eid/browser-token-signing
#   common/PKCS11Path.cpp); Windows C:\Windows\System32\eTPKCS11.dll (SAC Windows Administrator Guide; written
#   %SystemRoot%\System32\eTPKCS11.dll here).
# - OpenSC: Debian/Ubuntu multiarch /usr/lib/<triplet>/opensc-pkcs11.so and .../pkcs11/opensc-pkcs11.so (package
#   opensc-pkcs11's file list, Debian 12 and 13), Fedora/RHEL /usr/lib64/opensc-pkcs11.so and
#   /usr/lib64/pkcs11/opensc-pkcs11.so (package opensc); macOS /Library/OpenSC/lib/opensc-pkcs11.so
#   (open-eid/browser-token-signing common/PKCS11Path.cpp); Windows C:\Program Files\OpenSC Project\OpenSC\pkcs11\
#   opensc-pkcs11.dll (OpenSC/OpenSC win32/OpenSC.wxs.in, INSTALLDIR_PKCS11; written %ProgramFiles%\... here).
TOKEN_LIBRARIES = (
    ("Classic Client", GEMALTO_CLASSIC_CLIENT),
    ("IDPrime", {
        "Linux": ["/usr/lib/libIDPrimePKCS11.so", "/usr/lib/pkcs11/libIDPrimePKCS11.so",
                  "/usr/lib64/libIDPrimePKCS11.so"],
        "Darwin": ["/Library/Frameworks/eToken.framework/Versions/A/libIDPrimePKCS11.dylib"],
        "Windows": ["%ProgramFiles%\\SafeNet\\Authentication\\SAC\\x64\\IDPrimePKCS1164.dll",
                    "%SystemRoot%\\System32\\IDPrimePKCS11.dll"],
    }),
    ("SafeNet Authentication Client", {
        "Linux": ["/usr/lib/libeTPkcs11.so", "/usr/lib/pkcs11/libeTPkcs11.so", "/usr/lib64/libeTPkcs11.so"],
        "Darwin": ["/usr/local/lib/libeTPkcs11.dylib",
                   "/Library/Frameworks/eToken.framework/Versions/Current/libeToken.dylib"],
        "Windows": ["%SystemRoot%\\System32\\eTPKCS11.dll"],
    }),
    ("OpenSC", {
        "Linux": ["/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
                  "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so",
                  "/usr/lib/aarch64-linux-gnu/pkcs11/opensc-pkcs11.so",
                  "/usr/lib64/opensc-pkcs11.so", "/usr/lib64/pkcs11/opensc-pkcs11.so"],
        "Darwin": ["/Library/OpenSC/lib/opensc-pkcs11.so"],
        "Windows": ["%ProgramFiles%\\OpenSC Project\\OpenSC\\pkcs11\\opensc-pkcs11.dll"],
    }),
)


def token_library_candidates(system=None, guess=False):
    """[(middleware, path)] of every token library known on `system` (default: this host), in search order."""
    system = system or platform.system()
    if guess and all(system not in table for _name, table in TOKEN_LIBRARIES):
        system = _GUESS_FOR_UNKNOWN
    return [(name, path) for name, table in TOKEN_LIBRARIES for path in table.get(system, [])]


def token_library_paths(system=None, guess=False):
    """The paths of token_library_candidates() (the firefox_policies role's candidates: first existing wins)."""
    return [path for _name, path in token_library_candidates(system, guess)]


def find_token_library(system=None, guess=False, exists=None):
    """(middleware, path) of the first token library of the table that exists on THIS host (regular file, symlinks
    followed), None when none does."""
    exists = exists or posixpath.isfile
    for name, path in token_library_candidates(system, guess):
        if exists(path):
            return name, path
    return None


def library_candidates(system=None, guess=False):
    """Every known path of the middleware's PKCS#11 library on `system` (default: this host), default first.
    An OS without an entry has none, or Linux's with `guess` (the modules that must name one library)."""
    system = system or platform.system()
    if system not in GEMALTO_CLASSIC_CLIENT and guess:
        system = _GUESS_FOR_UNKNOWN
    return list(GEMALTO_CLASSIC_CLIENT.get(system, []))


def default_library(system=None, guess=False, exists=None):
    """The default PKCS#11 library path. With no `system` (a module on the host itself): the first token library of
    TOKEN_LIBRARIES found on this host, else Classic Client's default. With a `system` (a controller naming a host's
    OS): Classic Client's default for it. None when no default is known."""
    if system is None:
        found = find_token_library(None, guess, exists)
        if found:
            return found[1]
    found = library_candidates(system, guess)
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------------------------
# NSS trust strings
# ---------------------------------------------------------------------------------------------------------------
# certutil's trust letters, as `certutil -H` documents them under -t trustargs (tests/unit/test_facts.py reads
# them from the installed certutil and checks each against certutil -M): p prohibited, P trusted peer, c valid CA,
# T trusted CA for client certificates, C trusted CA for server certificates, u user certificate, w send warning,
# g step-up. NSS's CERT_DecodeTrustString also takes an undocumented 'i' (invisible CA): not accepted here.
NSS_TRUST_LETTERS = "pPcTCuwg"
NSS_TRUST_RE = re.compile(r"^[{0}]*,[{0}]*,[{0}]*$".format(NSS_TRUST_LETTERS))
NSS_TRUST_HELP = ("three comma-separated fields for SSL, e-mail and object signing, made of certutil's trust "
                  "letters %s (examples: 'C,,' 'CT,C,C' ',,')" % " ".join(NSS_TRUST_LETTERS))


def is_nss_trust(value):
    """True when `value` is a certutil trust string (three fields of certutil's letters, no spaces)."""
    return isinstance(value, str) and bool(NSS_TRUST_RE.match(value))


def trusted_for_tls_servers(nss_trust):
    """Whether a CA entry is trusted to issue TLS server certificates: 'C' in the SSL field of its NSS trust, or no
    trust given at all (Firefox then uses its own default for Certificates.Install, CT,CT,)."""
    return nss_trust is None or "C" in str(nss_trust).split(",", maxsplit=1)[0]


# ---------------------------------------------------------------------------------------------------------------
# CA file names
# ---------------------------------------------------------------------------------------------------------------
def ca_file_stem(name):
    """A file name stem for a CA name: 'Certeurope Root CA 2' -> 'certeurope_root_ca_2' (lower case, every run of
    other characters one '_', none at the ends; 'ca' when nothing is left)."""
    stem = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    return stem or "ca"


def ca_file_name(name, suffix=".pem"):
    return ca_file_stem(name) + suffix


def ca_entry_name(ca):
    """The name a CA-set entry's files are named after: its nickname, else its name (an empty or null nickname
    counts as none). None when it has neither."""
    for key in ("nickname", "name"):
        value = ca.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def ca_files(ca_set, directory, only_tls_server_cas=False):
    """[{name, path, ssl_ca}] of the files a CA set is deployed as in `directory` (the firefox_policies module writes
    them, the fleet report looks for them). `only_tls_server_cas`: the ones listed in Certificates.Install."""
    out = []
    for ca in ca_set or []:
        nick = ca_entry_name(ca)
        if nick is None:
            continue
        ssl_ca = trusted_for_tls_servers(ca.get("nss_trust"))
        if only_tls_server_cas and not ssl_ca:
            continue
        out.append({"name": ca.get("name") or nick, "path": posixpath.join(directory, ca_file_name(nick)),
                    "ssl_ca": ssl_ca})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Where the controller keeps what tokentrust writes (CA cache, reports)
# ---------------------------------------------------------------------------------------------------------------
def project_dir(playbook_dir, cwd):
    """The directory of the project a playbook belongs to, where the controller-side files go (.cache/ca, reports/):
    the parent of a playbooks/ directory (this repository, or a project laid out the same way), the playbook's own
    directory otherwise; for a playbook of an installed collection (inside an ansible_collections/ tree, possibly
    read-only and shared by every project), the directory ansible-playbook runs in (`cwd`), never the collection."""
    parts = posixpath.normpath(playbook_dir).split("/")
    if "ansible_collections" in parts:
        return cwd
    if parts[-1] == "playbooks":
        return posixpath.dirname(posixpath.normpath(playbook_dir))
    return posixpath.normpath(playbook_dir)


# ---------------------------------------------------------------------------------------------------------------
# Where Firefox reads policies.json
# ---------------------------------------------------------------------------------------------------------------
# Linux: Firefox reads /etc/firefox/policies/policies.json if it exists ("SysConfD" is /etc/ plus the lower-cased
# application name, which is "Firefox" also for Debian's firefox-esr), and ONLY otherwise
# <install dir>/distribution/policies.json. macOS: the app bundle's distribution dir.
LINUX_SYSTEM_POLICIES = "/etc/firefox/policies/policies.json"
LINUX_INSTALL_DIRS = (
    "/usr/lib/firefox-esr",      # Debian/Ubuntu firefox-esr
    "/usr/lib/firefox",          # Debian/Ubuntu/Arch firefox
    "/usr/lib64/firefox",        # Fedora/RHEL/SUSE
    "/opt/firefox",              # Mozilla tarball (conventional place)
    "/opt/firefox-esr",
)
MACOS_APP = "/Applications/Firefox.app"
# Windows: Mozilla Firefox in each Program Files folder of the host (64-bit, and 32-bit for a 32-bit build), wherever
# those folders are: environment variables, expanded on the host (see GEMALTO_CLASSIC_CLIENT above).
WINDOWS_FIREFOX_DIRS = (
    "%ProgramFiles%\\Mozilla Firefox",
    "%ProgramFiles(x86)%\\Mozilla Firefox",
)


def firefox_install_dirs(system):
    """The folders Firefox is usually installed in on `system` (Linux: most likely first)."""
    return list({"Linux": LINUX_INSTALL_DIRS, "Darwin": (MACOS_APP,), "Windows": WINDOWS_FIREFOX_DIRS}.get(system, ()))


def distribution_policies(install_dir, system="Linux"):
    """<install dir>/distribution/policies.json (macOS: inside the .app bundle, Windows: with backslashes)."""
    if system == "Darwin":
        return posixpath.join(install_dir, "Contents", "Resources", "distribution", "policies.json")
    if system == "Windows":
        return ntpath.join(install_dir, "distribution", "policies.json")
    return posixpath.join(install_dir, "distribution", "policies.json")


def policies_candidates(system, path=None, install_dir=None):
    """The policies.json files Firefox may read on `system`, in its order (the first that exists is the one it
    reads): an explicit `path` alone; else Linux's system file, then <install dir>/distribution of `install_dir` or
    of every known install dir; macOS the app bundle's. Another OS: none known ([])."""
    if path:
        return [path]
    if system == "Darwin":
        return [distribution_policies(install_dir or MACOS_APP, system)]
    if system == "Linux":
        return [LINUX_SYSTEM_POLICIES] + [distribution_policies(d) for d in
                                          ([install_dir] if install_dir else LINUX_INSTALL_DIRS)]
    return []
