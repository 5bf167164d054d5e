# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared by every section: the registry keys and constants, WindowsPlanError, registry entries, paths."""
from __future__ import annotations

import re

from ansible.module_utils.tokentrust_errors import TokentrustError

TT_KEY = "HKLM:\\SOFTWARE\\tokentrust"
TRUST_RECORD_KEY = TT_KEY + "\\TrustStore"
UAC_RECORD_KEY = TT_KEY + "\\UAC"
UAC_RECORD_VALUE = "Original"
UAC_KEY = "HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Policies\\System"
UAC_VALUES = ("EnableLUA", "ConsentPromptBehaviorAdmin", "PromptOnSecureDesktop")
UAC_MODES = ("keep", "disable_for_install", "enabled", "disabled")
UAC_PHASES = ("before", "after")
FIREFOX_GPO_KEY = "HKLM:\\SOFTWARE\\Policies\\Mozilla\\Firefox"
IE_POLICY_KEY = "HKLM:\\SOFTWARE\\Policies\\Microsoft\\Windows\\CurrentVersion\\Internet Settings"
IE_USER_SUBKEY = "Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings"
IE_MODES = ("keep", "trusted_sites", "disable_protected_mode")
IE_ZONE_NAMES = {0: "Local computer", 1: "Local intranet", 2: "Trusted sites", 3: "Internet", 4: "Restricted sites"}
IE_PROTECTED_MODE_VALUE = "2500"
IE_PROTECTED_MODE_OFF = 3
IE_TRUSTED_ZONE = 2
# our store names -> the store_name given to win_certificate_info / win_certificate_store: the SYSTEM
# store names. win_certificate_info passes store_name unchanged to X509Store(string, location), so the
# .NET enum name "CertificateAuthority" would open an (empty) store of that name and hide every
# intermediate; only win_certificate_store maps CertificateAuthority -> CA. "CA" works for both.
STORE_MODULE_NAMES = {"Root": "Root", "CA": "CA"}
HIVE_MOUNT = "HKLM:\\ANSIBLE"  # where win_regedit loads the `hive:` file

# IMAGE_FILE_HEADER.Machine -> architecture (https://learn.microsoft.com/windows/win32/debug/pe-format)
PE_MACHINES = {0x014C: "x86", 0x8664: "x64", 0xAA64: "arm64", 0x01C4: "arm"}
ARCH_BITS = {"x86": 32, "arm": 32, "x64": 64, "arm64": 64}

# gclib.dll candidates and Firefox install dirs: facts of module_utils/tokentrust_facts.py (GEMALTO_CLASSIC_CLIENT,
# WINDOWS_FIREFOX_DIRS), which the roles' defaults take through the tokentrust_* filters.
DEFAULT_LEGACY_PRODUCTS = ("GemSafe Standard Edition", "GemSafe Libraries", "Classic Client 5.1.5")
# DisplayNames of the product itself, under any ProductCode (another version, another build of the same MSI)
DEFAULT_PRODUCT_NAMES = ("Classic Client*", "Thales Classic Client*")
OTHER_VERSION_MODES = ("fail", "remove")
DEFAULT_TRUSTED_SITES = ("services.certeurope.fr", "services2.certeurope.fr")

_HEX40 = re.compile(r"^[0-9A-F]{40}$")
_GUID = re.compile(r"^\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}$")
_HOST = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")
# user SIDs: local and AD accounts (S-1-5-21-...), Microsoft Entra ID accounts (S-1-12-1-...)
_SID = re.compile(r"^S-1-(5-21|12-1)(-\d+)+$")
PSL_PATHS = ("/usr/share/publicsuffix/public_suffix_list.dat", "/usr/share/publicsuffix/effective_tld_names.dat")


class WindowsPlanError(TokentrustError, ValueError):
    """An input that cannot be planned: the message says what, where and what to do."""

    def __init__(self, message):
        super().__init__("windows_plan", message)


def _entry(path, name, data=None, vtype="string", state="present", scope="machine", hive=None):
    e = {"path": path, "name": name, "data": data, "type": vtype, "state": state, "scope": scope}
    if hive:
        e["hive"] = hive
    return e


def win_path(base, names):
    """`base\\name` for one name or a list of names, with exactly one backslash between them.

    Joining in Jinja (`dir ~ '\\\\'`) gives one or two backslashes depending on the YAML quoting
    and the ansible-core version (two under 2.19 in a folded scalar), so the roles join here.
    """
    base = str(base or "").replace("/", "\\").rstrip("\\")
    if not base:
        raise WindowsPlanError("empty folder given for a Windows path")

    def one(name):
        n = str(name or "").replace("/", "\\").strip("\\")
        if not n or ".." in n.split("\\"):
            raise WindowsPlanError(f"{name!r} is not a file name to put under {base}")
        return base + "\\" + n

    return [one(n) for n in names] if isinstance(names, (list, tuple)) else one(names)
