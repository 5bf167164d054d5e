# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IE protected mode / trusted sites (role windows_ie_zones)."""
from __future__ import annotations

from .common import (
    _HOST,
    _SID,
    DEFAULT_TRUSTED_SITES,
    HIVE_MOUNT,
    IE_MODES,
    IE_POLICY_KEY,
    IE_PROTECTED_MODE_OFF,
    IE_PROTECTED_MODE_VALUE,
    IE_TRUSTED_ZONE,
    IE_USER_SUBKEY,
    IE_ZONE_NAMES,
    PSL_PATHS,
    WindowsPlanError,
    _entry,
)
from .verify import check


# ---------------------------------------------------------------------------------------------
# IE zones
# ---------------------------------------------------------------------------------------------
def _check_host(host):
    if not isinstance(host, str) or not _HOST.match(host):
        raise WindowsPlanError(f"trusted site {host!r} is not a host name (give a name such as "
                               "services.certeurope.fr, without scheme or path)")
    return host.lower()


def load_psl(paths=PSL_PATHS):
    """The Public Suffix List rules ({"rules", "wildcards", "exceptions"}) from the first file found, or None."""
    for path in paths or ():
        try:
            with open(path, encoding="utf-8") as f:
                return parse_psl(f.read())
        except OSError:
            continue
    return None


def parse_psl(text):
    rules, wild, exc = set(), set(), set()
    for line in text.splitlines():
        r = line.strip().split(" ")[0].lower()
        if not r or r.startswith("//"):
            continue
        if r.startswith("!"):
            exc.add(r[1:])
        elif r.startswith("*."):
            wild.add(r[2:])
        else:
            rules.add(r)
    return {"rules": rules, "wildcards": wild, "exceptions": exc}


def registrable_domain(host, psl):
    """The registrable domain of `host` by the Public Suffix List algorithm (example.co.uk for a.example.co.uk)."""
    labels = host.lower().split(".")
    suffix_len = 1  # the default rule "*"
    for i in range(len(labels)):
        cand = ".".join(labels[i:])
        if cand in psl["exceptions"]:
            suffix_len = len(labels) - i - 1
            break
        parent = ".".join(labels[i + 1:])
        if cand in psl["rules"] or (parent and parent in psl["wildcards"]):
            suffix_len = len(labels) - i
            break
    if suffix_len >= len(labels):
        return None
    return ".".join(labels[-(suffix_len + 1):])


def zonemap_domain(host, domains=None, psl=None):
    """(domain, subkey) of ZoneMap\\Domains for a host: services.certeurope.fr -> (certeurope.fr, services).

    The domain is the registrable domain (Public Suffix List), so services.example.co.uk -> (example.co.uk,
    services), not (co.uk, services.example). `domains` ({host: domain}) overrides it; without a PSL
    (`psl` None: see load_psl) a host of three labels or more needs such an override.
    """
    h = _check_host(host)
    labels = h.split(".")
    given = {str(k).lower(): str(v).lower() for k, v in (domains or {}).items()}
    if h in given:
        domain = given[h]
        if h != domain and not h.endswith("." + domain):
            raise WindowsPlanError(f"windows_ie_zones_site_domains: {domain!r} is not a parent domain of {h!r}")
    elif len(labels) <= 2:
        domain = h
    elif psl is not None:
        domain = registrable_domain(h, psl)
        if domain is None:
            raise WindowsPlanError(f"trusted site {h!r} is a public suffix, not a site")
    else:
        raise WindowsPlanError(f"cannot tell the registrable domain of {h!r} without the Public Suffix List (install "
                               "the publicsuffix package on the controller) or windows_ie_zones_site_domains "
                               f"({{'{h}': '<its domain>'}})")
    sub = h[: -len(domain) - 1] if h != domain else None
    return domain, sub or None


def _check_zones(zones):
    out = []
    for z in zones or []:
        try:
            zi = int(z)
        except (TypeError, ValueError) as e:
            raise WindowsPlanError(f"IE zone {z!r} is not a number 0-4") from e
        if zi not in IE_ZONE_NAMES:
            raise WindowsPlanError(f"IE zone {zi} does not exist (0 computer, 1 intranet, 2 trusted, 3 internet, "
                                   "4 restricted)")
        if zi not in out:
            out.append(zi)
    return out


def ie_plan(mode, sites=DEFAULT_TRUSTED_SITES, zones=(2, 3), scheme="https", users=None, per_user=False,
            current_policy=None, machine_policy=True, domains=None, psl="system", zonemap_gpo=False):
    """Registry entries for the IE zone settings.

    Machine policy (HKLM\\SOFTWARE\\Policies\\..., wins over every user's own settings):
    - `trusted_sites`: the sites in the Site to Zone Assignment List (ZoneMapKey, zone 2);
      Protected Mode stays as it is for the Internet zone. A 2500=3 value that
      `disable_protected_mode` left in the chosen zones (`current_policy` {zone: value}) is removed.
    - `disable_protected_mode`: the same sites, plus 2500=3 (Protected Mode off) in `zones`.
    - `keep`: nothing.
    Per user (`per_user`), for each entry of `users` ({sid, profile_path, loaded}): the same
    settings in that user's hive: HKU:\\<SID> when loaded, else the NTUSER.DAT file loaded by
    win_regedit under HKLM:\\ANSIBLE. Never the WinRM account's HKCU.

    Side effect of the machine policy: once the Site to Zone Assignment List policy is on, Windows
    uses ONLY its list: every user's own zone assignments are ignored and users cannot edit their
    lists. `machine_policy=False` leaves the machine policy out (per-user settings only).
    `domains` / `psl` pick the ZoneMap\\Domains key of a site (zonemap_domain); psl "system" loads
    the Public Suffix List of the controller.
    `zonemap_gpo`: a Group Policy owns the Site to Zone Assignment List (win_tokentrust_ie_zones_probe found it
    in a Registry.pol): its list is rewritten whole at each refresh, so nothing is written there (see
    ie_gpo_advice for the values to add to that GPO).
    """
    if mode not in IE_MODES:
        raise WindowsPlanError(f"windows_ie_zones_mode must be one of {', '.join(IE_MODES)}, got {mode!r}")
    if scheme not in ("https", "http", "*"):
        raise WindowsPlanError(f"scheme must be https, http or *, got {scheme!r}")
    hosts = [_check_host(h) for h in (sites or [])]
    zones = _check_zones(zones)
    entries = []
    if mode == "keep":
        return entries
    if not machine_policy and not per_user:
        raise WindowsPlanError("windows_ie_zones_machine_policy and windows_ie_zones_per_user are both false: "
                               "nothing would be written; use mode keep, or turn one on")
    if hosts and machine_policy and not zonemap_gpo:
        entries.append(_entry(IE_POLICY_KEY, "ListBox_Support_ZoneMapKey", 1, "dword"))
    for h in hosts if machine_policy and not zonemap_gpo else []:
        name = h if scheme == "*" else f"{scheme}://{h}"
        entries.append(_entry(IE_POLICY_KEY + "\\ZoneMapKey", name, str(IE_TRUSTED_ZONE)))
    current_policy = {int(k): v for k, v in (current_policy or {}).items()}
    for z in zones:
        path = f"{IE_POLICY_KEY}\\Zones\\{z}"
        if mode == "disable_protected_mode" and machine_policy:
            entries.append(_entry(path, IE_PROTECTED_MODE_VALUE, IE_PROTECTED_MODE_OFF, "dword"))
        elif current_policy.get(z) is not None and int(current_policy[z]) == IE_PROTECTED_MODE_OFF:
            entries.append(_entry(path, IE_PROTECTED_MODE_VALUE, None, "dword", "absent"))
    if per_user:
        if psl == "system":
            psl = load_psl()
        for u in users or []:
            entries += _ie_user_entries(mode, hosts, zones, scheme, u, domains, psl)
    return entries


def ie_urls(sites=DEFAULT_TRUSTED_SITES, scheme="https"):
    """The URLs whose effective zone is verified (MapUrlToZone): https://<site> for scheme * too."""
    return [f"{'https' if scheme == '*' else scheme}://{_check_host(h).lstrip('*.')}" for h in sites or []]


def ie_gpo_advice(sites, scheme="https", gpo_sources=()):
    """What to add to the Group Policy that owns the Site to Zone Assignment List ('' when none does)."""
    if not gpo_sources:
        return ""
    values = ", ".join(f"{h if scheme == '*' else scheme + '://' + h} = {IE_TRUSTED_ZONE}" for h in sites or [])
    return ("a Group Policy owns the Site to Zone Assignment List (found in " + ", ".join(gpo_sources)
            + "): each refresh rewrites the whole list, so tokentrust writes nothing there. Add these values to "
            "that GPO (Computer Configuration > Administrative Templates > Windows Components > Internet Explorer "
            "> Internet Control Panel > Security Page > Site to Zone Assignment List): " + values)


def ie_checks(urls, probe, per_user=False, machine_policy=True, role="windows_ie_zones"):
    """The zone Windows applies to each URL (MapUrlToZone, from win_tokentrust_ie_zones_probe), and IE Enhanced
    Security Configuration when the sites were written per user (ESC ignores per-user zone keys)."""
    probe = probe or {}
    zones = probe.get("zones") or {}
    out = []
    # Per-user only: the sites are in each user's own list, and MapUrlToZone over WinRM answers for the WinRM
    # account, which that mode skips on purpose: its answer says nothing about the users (their values are
    # checked in their hives instead).
    for u in (urls or []) if machine_policy or not per_user else []:
        z = zones.get(u)
        name = IE_ZONE_NAMES.get(z, "unknown") if isinstance(z, int) else "not read"
        detail = f"Windows maps {u} to zone {z} ({name})"
        if z != IE_TRUSTED_ZONE:
            detail += f", not {IE_TRUSTED_ZONE} ({IE_ZONE_NAMES[IE_TRUSTED_ZONE]})"
            if probe.get("gpo_sources"):
                detail += "; a Group Policy owns the Site to Zone Assignment List: add the site there"
        out.append(check(f"IE zone of {u}", z == IE_TRUSTED_ZONE, detail, role))
    esc = probe.get("esc") or {}
    if per_user and not machine_policy:
        on = [w for w in ("admins", "users") if esc.get(w)]
        out.append(check("IE Enhanced Security Configuration off", not on,
                         "off" if not on else f"on for {' and '.join(on)}: it ignores per-user zone assignments; "
                         "turn it off (Server Manager > Local Server) or use the machine policy "
                         "(windows_ie_zones_machine_policy: true)", role))
    return out


def _ie_user_entries(mode, hosts, zones, scheme, user, domains=None, psl=None):
    sid = user.get("sid", "")
    profile = (user.get("profile_path") or "").rstrip("\\")
    default = sid in ("Default", ".DEFAULT_PROFILE")
    if not default and not _SID.match(sid):
        raise WindowsPlanError(f"user SID {sid!r} is not a local, domain or Entra ID user SID "
                               "(S-1-5-21-... or S-1-12-1-...)")
    if user.get("loaded") and not default:
        base, hive = f"HKU:\\{sid}\\{IE_USER_SUBKEY}", None
    else:
        if not profile:
            raise WindowsPlanError(f"user {sid}: hive not loaded and no profile_path to load NTUSER.DAT from")
        base, hive = f"{HIVE_MOUNT}\\{IE_USER_SUBKEY}", profile + "\\NTUSER.DAT"
    scope = f"user:{sid}"
    out = []
    for h in hosts:
        domain, sub = zonemap_domain(h, domains, psl)
        path = f"{base}\\ZoneMap\\Domains\\{domain}" + (f"\\{sub}" if sub else "")
        out.append(_entry(path, scheme, IE_TRUSTED_ZONE, "dword", scope=scope, hive=hive))
    if mode == "disable_protected_mode":
        for z in zones:
            out.append(_entry(f"{base}\\Zones\\{z}", IE_PROTECTED_MODE_VALUE, IE_PROTECTED_MODE_OFF, "dword",
                              scope=scope, hive=hive))
    return out


def ie_users(profiles, include_default=True, exclude_sids=(), default_profile=None):
    """User profiles from win_tokentrust_user_profiles ({sid, profile_path, loaded, ntuser_exists}) that get
    per-user settings. A hive that is not loaded is only used when its NTUSER.DAT exists (stale ProfileList
    entries, FSLogix / User Profile Disk profiles have none there). The Default profile is ProfileList's
    `Default` (`default_profile` {path, ntuser_exists}), not a hard-coded C:\\Users\\Default."""
    out = []
    for p in profiles or []:
        sid = p.get("sid", "")
        if not (_SID.match(sid) and sid not in exclude_sids and p.get("profile_path")):
            continue
        if not p.get("loaded") and not p.get("ntuser_exists"):
            continue
        out.append({"sid": sid, "profile_path": p["profile_path"], "loaded": bool(p.get("loaded"))})
    if include_default:
        d = default_profile or {}
        if d.get("path") and d.get("ntuser_exists"):
            out.append({"sid": "Default", "profile_path": d["path"], "loaded": False})
    return out
