# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The token middleware: install, legacy and other versions (role windows_token_middleware)."""
from __future__ import annotations

import fnmatch
import re

from .common import _GUID, DEFAULT_LEGACY_PRODUCTS, DEFAULT_PRODUCT_NAMES, OTHER_VERSION_MODES, WindowsPlanError
from .verify import check


# ---------------------------------------------------------------------------------------------
# middleware
# ---------------------------------------------------------------------------------------------
def _norm_name(s):
    return " ".join(str(s or "").split()).casefold()


def legacy_match(entries, patterns=DEFAULT_LEGACY_PRODUCTS, exclude_ids=(), uninstall_arguments=None):
    """Uninstall-key entries whose DisplayName matches one of `patterns` (case-insensitive,
    whitespace-normalised, `*`/`?` globs allowed), as win_package removal items.

    With `uninstall_arguments` ({key: silent switches}, the removal plan), a product that is not an MSI
    and has no QuietUninstallString nor arguments given is refused: win_package would run its
    UninstallString, an interactive uninstaller, in the WinRM session where no one can click it (it hangs).

    `entries`: [{key, display_name, display_version, windows_installer, uninstall_string,
    quiet_uninstall_string, view}] from both registry views (64 and 32-bit).
    """
    pats = [_norm_name(p) for p in patterns or [] if str(p).strip()]
    excl = {str(x).casefold() for x in exclude_ids or []}
    out, seen = [], set()
    for e in entries or []:
        name = _norm_name(e.get("display_name"))
        key = e.get("key") or ""
        if not name or not key or key.casefold() in excl:
            continue
        hit = next((p for p in pats if fnmatch.fnmatchcase(name, p)), None)
        if hit is None or key.casefold() in seen:
            continue
        seen.add(key.casefold())
        msi = bool(_GUID.match(key)) and str(e.get("windows_installer", "0")) in ("1", "True", "true")
        if not msi and not (e.get("quiet_uninstall_string") or e.get("uninstall_string")):
            raise WindowsPlanError(f"legacy product {e.get('display_name')!r} ({key}, {e.get('view', '?')}-bit view) "
                                   "has no UninstallString: remove it by hand")
        args = {str(k).casefold(): v for k, v in (uninstall_arguments or {}).items()}
        if (uninstall_arguments is not None and not msi and not e.get("quiet_uninstall_string")
                and not args.get(key.casefold())):
            raise WindowsPlanError(
                f"legacy product {e.get('display_name')!r} ({key}, {e.get('view', '?')}-bit view) is not an MSI and "
                f"has no QuietUninstallString: its UninstallString {e.get('uninstall_string')!r} would start an "
                "interactive uninstaller in the WinRM session, where no one can answer it (the run hangs). Give its "
                f"silent switches in token_middleware_legacy_uninstall_arguments ({{'{key}': '/S'}} for an NSIS "
                "uninstaller, '/VERYSILENT' for Inno Setup), or remove it by hand")
        out.append({"product_id": key, "display_name": e.get("display_name"),
                    "display_version": e.get("display_version"), "provider": "msi" if msi else "registry",
                    "view": e.get("view"), "pattern": hit})
    return out


def middleware_checks(entries, product_id=None, patterns=DEFAULT_LEGACY_PRODUCTS, state="present",
                      role="token_middleware"):
    """Checks after the run: no legacy product left, our product installed (or removed)."""
    out = []
    left = legacy_match(entries, patterns, exclude_ids=[product_id] if product_id else ())
    out.append(check("no legacy middleware", not left,
                     "none found" if not left else "still installed: "
                     + ", ".join(f"{x['display_name']} ({x['product_id']})" for x in left), role))
    if product_id:
        have = [e for e in entries or [] if str(e.get("key", "")).casefold() == product_id.casefold()]
        want = state == "present"
        name = f"{have[0].get('display_name')} {have[0].get('display_version') or ''}".strip() if have else product_id
        out.append(check(f"middleware {'installed' if want else 'removed'}", bool(have) == want,
                         f"{name} {'is' if have else 'is not'} in the Uninstall keys", role))
    return out


def other_versions(entries, product_id="", names=DEFAULT_PRODUCT_NAMES, legacy=DEFAULT_LEGACY_PRODUCTS,
                   mode="fail", state="present"):
    """Classic Client installed under ANOTHER ProductCode than `product_id` (another version, or another build:
    no shared UpgradeCode handling in msiexec for it), found by DisplayName (`names`), legacy products excluded.

    msiexec refuses such an install ("Another version of this product is already installed", 1638) or, for an
    MSI without a major upgrade, installs a second copy. With mode `fail` the run stops here, before the UAC
    window and any reboot, naming the ProductCode found; `remove` returns them as removal items (removed first,
    like legacy products). Nothing is found when `product_id` is unset or already installed."""
    if mode not in OTHER_VERSION_MODES:
        raise WindowsPlanError(f"token_middleware_other_version must be one of {', '.join(OTHER_VERSION_MODES)}, "
                               f"got {mode!r}")
    pid = str(product_id or "")
    have = {str(e.get("key", "")).casefold() for e in entries or []}
    if state != "present" or not pid or pid.casefold() in have:
        return []
    legacy_keys = {x["product_id"].casefold() for x in legacy_match(entries, legacy, exclude_ids=[pid])}
    found = [x for x in legacy_match(entries, names, exclude_ids=[pid])
             if x["product_id"].casefold() not in legacy_keys]
    if found and mode == "fail":
        what = ", ".join(f"{x['display_name']} {x.get('display_version') or ''} {x['product_id']} "
                         f"({x['view']}-bit view)".replace("  ", " ") for x in found)
        raise WindowsPlanError(
            f"another version of the middleware is installed: {what}, not token_middleware_product_id {pid}: msiexec "
            "would refuse the install (1638, another version of this product is already installed) after the UAC "
            "window and its reboots. Set token_middleware_product_id to the installed ProductCode to keep it, or "
            "token_middleware_other_version: remove to uninstall it first")
    return found


def middleware_pending(entries, msi_src="", product_id="", patterns=DEFAULT_LEGACY_PRODUCTS, state="present",
                       remove_legacy=True, names=DEFAULT_PRODUCT_NAMES, other_version="fail"):
    """Whether role token_middleware will install or remove anything: {pending, reasons}.

    Read before the UAC window opens, so that `disable_for_install` only disables UAC (and reboots
    twice) when there is something to do. Without a ProductCode an install cannot be known to be
    done already: it counts as pending (set token_middleware_product_id for idempotent runs).
    """
    reasons = []
    pid = str(product_id or "")
    have = {str(e.get("key", "")).casefold() for e in entries or []}
    if state == "absent":
        if pid and pid.casefold() in have:
            reasons.append(f"{pid} is installed and token_middleware_state is absent")
    elif msi_src:
        if not pid:
            reasons.append("no token_middleware_product_id: the install cannot be known to be done")
        elif pid.casefold() not in have:
            reasons.append(f"{pid} is not installed")
            others = other_versions(entries, pid, names, patterns, other_version, state)
            if others:
                reasons.append("another version to remove first: " + ", ".join(x["product_id"] for x in others))
    if remove_legacy and (msi_src or state == "absent"):
        left = legacy_match(entries, patterns, exclude_ids=[pid] if pid else ())
        if left:
            reasons.append("legacy products installed: " + ", ".join(x["display_name"] for x in left))
    return {"pending": bool(reasons), "reasons": reasons}


def msi_source(src):
    """Kind of an MSI source: url, unc, or controller (a file copied from the controller first)."""
    s = str(src or "")
    if not s:
        raise WindowsPlanError("token_middleware_msi_src is empty: give a URL, a \\\\server\\share path or a "
                               "controller file")
    if re.match(r"^https?://", s, re.I):
        return "url"
    if s.startswith("\\\\"):
        return "unc"
    if re.match(r"^[A-Za-z]:\\", s):
        return "remote"
    return "controller"


def msi_second_hop(src, transport="ntlm", kerberos_delegation=False):
    """None when the host can read the MSI source over this WinRM transport, else why not.

    A \\\\server\\share path is a second hop: the WinRM session must pass the user's credentials on,
    which only CredSSP and Kerberos with delegation do. With NTLM, basic, certificate or Kerberos
    without delegation, win_package gets "access denied" on the share.
    """
    if msi_source(src) != "unc":
        return None
    t = str(transport or "ntlm").lower()
    if t == "credssp" or (t == "kerberos" and bool(kerberos_delegation)):
        return None
    how = "kerberos without ansible_winrm_kerberos_delegation" if t == "kerberos" else t
    return (f"token_middleware_msi_src {src} is a network share, but this host connects with WinRM {how}, which "
            "does not pass credentials on to the share (second hop): win_package would fail with access denied. "
            "Use an https:// URL or a controller file, or connect with credssp or kerberos with "
            "ansible_winrm_kerberos_delegation: true")
