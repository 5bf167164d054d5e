# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Windows planning logic: pure Python, no Windows needed (imports only our module_utils).

The Windows roles read the host with ansible.windows modules (win_reg_stat, win_certificate_info,
a read-only win_powershell probe), hand what they read to these functions through the filters of
`filter_plugins/tokentrust.py`, and apply the returned plan with ansible.windows modules
(win_certificate_store, win_regedit, win_copy, win_package, win_reboot). Decide here, act there.

Registry paths are returned in the PSDrive form that win_regedit / win_reg_stat take
(`HKLM:\\SOFTWARE\\...`, `HKU:\\<SID>\\...`). A registry entry of a plan is a dict:

    {"path": ..., "name": ..., "data": ..., "type": "string"|"dword", "state": "present"|"absent",
     "hive": <NTUSER.DAT path, only for users whose hive is not loaded>, "scope": "machine"|"user:<sid>"}

Sections: trust stores, UAC, IE zones, Firefox (bitness, GPO registry, policies.json), middleware,
verification.
"""
from __future__ import annotations

import fnmatch
import json
import re

from ansible.module_utils import tokentrust_policies as pol
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


# ---------------------------------------------------------------------------------------------
# admin-only folders (role windows_private_dir)
# ---------------------------------------------------------------------------------------------
# Well-known accounts by SID only: their names are localized (a French Windows names its Administrators group
# Administrateurs),
# and ansible-core's Ansible.ModuleUtils.SID translates a name with the host's own language.
ADMINISTRATORS_SID = "S-1-5-32-544"
SYSTEM_SID = "S-1-5-18"
USERS_SID = "S-1-5-32-545"
ADMIN_SIDS = (ADMINISTRATORS_SID, SYSTEM_SID)
WELL_KNOWN_SIDS = {ADMINISTRATORS_SID: "the Administrators group", SYSTEM_SID: "the local system account",
                   USERS_SID: "the Users group"}
_ANY_SID = re.compile(r"^S-1-\d+(-\d+)+$")


def _sid(value, what):
    v = str(value or "").strip()
    if not _ANY_SID.match(v):
        raise WindowsPlanError(f"{what}: {value!r} is not a SID: give accounts as SIDs (S-1-5-32-544 for the "
                               "Administrators group, S-1-5-18 for the system account, S-1-5-32-545 for Users): "
                               "account names are localized and fail on a Windows in another language")
    return v.upper()


def private_aces(readers=()):
    """The explicit ACL of an admin-only folder: full control for Administrators and SYSTEM, read for
    `readers` (SIDs)."""
    out = [{"sid": s, "rights": "FullControl"} for s in ADMIN_SIDS]
    for r in readers or ():
        s = _sid(r, "windows_private_dir_readers")
        if s not in ADMIN_SIDS:
            out.append({"sid": s, "rights": "ReadAndExecute"})
    return out


def private_chain(path):
    """The folders to create admin-only for `path`: itself and its parents from the drive's second
    level down (C:\\ProgramData\\tokentrust\\certs -> [C:\\ProgramData\\tokentrust, ...\\certs]); the
    drive and its top-level folder (C:\\ProgramData, owned by the system) are not touched."""
    p = str(path or "").replace("/", "\\").rstrip("\\")
    m = re.match(r"^([A-Za-z]:)((?:\\[^\\]+)+)$", p)
    if not m or any(part in ("", ".", "..") for part in m.group(2).split("\\")[1:]):
        raise WindowsPlanError(f"{path!r} is not an absolute local Windows folder (C:\\...): give a folder such as "
                               "C:\\ProgramData\\tokentrust\\certs")
    parts = m.group(2).split("\\")[1:]
    start = 2 if len(parts) > 1 else 1
    return [m.group(1) + "\\" + "\\".join(parts[:i]) for i in range(start, len(parts) + 1)]


def private_dir_problems(folders, owners=ADMIN_SIDS):
    """Why folders of the chain cannot be trusted, from files/private_dir_probe.ps1's `folders` (owner read
    as a SID); empty list: all fine."""
    ok = {_sid(o, "windows_private_dir_owners") for o in owners or ()}
    allowed = " or ".join(f"{o} ({WELL_KNOWN_SIDS[o]})" if o in WELL_KNOWN_SIDS else o for o in sorted(ok))
    out = []
    for f in folders or []:
        where = f.get("path")
        if not f.get("exists"):
            continue
        if f.get("reparse") or not f.get("isdir"):
            kind = "a link or junction" if f.get("reparse") else "not a folder"
            out.append(f"{where} exists but is {kind}: remove it (and check what put it there), then run again")
        elif str(f.get("owner_sid") or "").upper() not in ok:
            who = f.get("owner_sid") or "an unknown account"
            if f.get("owner_name"):
                who = f"{f['owner_name']} ({who})"
            out.append(f"{where} exists and is owned by {who}, not by {allowed}: a standard user can create "
                       "folders in ProgramData, so its content cannot be trusted. Check it, delete it, then run again")
    return out


# ---------------------------------------------------------------------------------------------
# trust stores
# ---------------------------------------------------------------------------------------------
def normalize_thumbprint(value):
    t = re.sub(r"[\s:]", "", str(value or "")).upper()
    if not _HEX40.match(t):
        raise WindowsPlanError(f"{value!r} is not a SHA-1 thumbprint (40 hex digits, colons allowed)")
    return t


def store_for(ca):
    """LocalMachine store of one CA of the set: `windows_store` when given, else Root/CA by role."""
    name = ca.get("name", "?")
    ws = ca.get("windows_store")
    if ws is not None:
        if ws not in ("Root", "CA"):
            raise WindowsPlanError(f"CA {name!r}: windows_store must be Root or CA, got {ws!r}")
        return ws
    role = ca.get("role")
    if role == "root":
        return "Root"
    if role == "intermediate":
        return "CA"
    raise WindowsPlanError(f"CA {name!r}: cannot choose a store: role is {role!r} (root|intermediate) "
                           "and windows_store is not set; check the ca_certificates output")


def _removal(thumb, store, name):
    if store not in STORE_MODULE_NAMES:
        raise WindowsPlanError(f"record {TRUST_RECORD_KEY}\\{thumb} names store {store!r}, not Root or CA: "
                               "fix or delete that value")
    return {"thumbprint": thumb, "store": store, "store_name": STORE_MODULE_NAMES[store], "name": name}


def store_thumbprints(results):
    """{"Root": [...], "CA": [...]} from looped win_certificate_info results (item = system store name).

    A store name other than Root / CA is refused: win_certificate_info reads an unknown name as an
    empty store, which would make every certificate look missing.
    """
    back = {v: k for k, v in STORE_MODULE_NAMES.items()}
    out = {}
    for r in results or []:
        if r.get("item") not in back:
            raise WindowsPlanError(f"win_certificate_info was looped over store {r.get('item')!r}: read the system "
                                   f"stores {', '.join(back)} (an unknown name reads as an empty store)")
        out[back[r["item"]]] = [c["thumbprint"] for c in r.get("certificates") or []]
    return out


def store_plan(ca_set, present=None, recorded=None, remove_stale=False, state="present"):
    """What to put in / take out of LocalMachine\\Root and LocalMachine\\CA.

    `present`: {"Root": [thumbprints], "CA": [...]} read from the host (win_certificate_info);
    `recorded`: {thumbprint: store} of our record key (what we installed earlier).
    A certificate that was in the store before us is not recorded, so `absent` / stale removal
    never takes out a certificate that Windows or an administrator put there.
    """
    if state not in ("present", "absent"):
        raise WindowsPlanError(f"state must be present or absent, got {state!r}")
    present = {k: {normalize_thumbprint(t) for t in (v or [])} for k, v in (present or {}).items()}
    recorded = {normalize_thumbprint(t): s for t, s in (recorded or {}).items()}
    install, keep, seen = [], {}, set()
    for ca in ca_set or []:
        if not isinstance(ca, dict):
            raise WindowsPlanError(f"CA set entries must be dicts, got {ca!r}")
        thumb = normalize_thumbprint(ca.get("sha1"))
        if thumb in seen:
            continue
        seen.add(thumb)
        store = store_for(ca)
        if not (ca.get("pem") or ca.get("der_path") or ca.get("pem_path")):
            raise WindowsPlanError(f"CA {ca.get('name', thumb)!r} has neither pem nor der_path/pem_path")
        already = thumb in present.get(store, set())
        ours = recorded.get(thumb) == store
        item = {
            "thumbprint": thumb, "store": store, "store_name": STORE_MODULE_NAMES[store], "name": ca.get("name", thumb),
            "file": thumb + (".cer" if ca.get("der_path") else ".pem"),
            "src": ca.get("der_path") or ca.get("pem_path"), "pem": ca.get("pem"),
            "file_type": "der" if ca.get("der_path") else "pem",
            "already_present": already, "ours": ours, "expired": bool(ca.get("expired")),
        }
        install.append(item)
        if ours or not already:
            keep[thumb] = store
    remove, record_remove = [], []
    if state == "absent":
        for item in install:
            if item["ours"]:
                remove.append(_removal(item["thumbprint"], item["store"], item["name"]))
        gone = {i["thumbprint"] for i in install}
        for thumb, store in sorted(recorded.items()):
            if thumb not in gone and remove_stale:
                remove.append(_removal(thumb, store, thumb))
        record_remove = sorted(t for t in recorded if t in gone or remove_stale)
        return {"install": [], "remove": remove, "record": {}, "record_remove": record_remove}
    for thumb, store in sorted(recorded.items()):
        if thumb in seen:
            continue
        if remove_stale:
            remove.append(_removal(thumb, store, thumb))
            record_remove.append(thumb)
    record_add = {t: s for t, s in keep.items() if recorded.get(t) != s}
    return {"install": install, "remove": remove, "record": record_add, "record_remove": record_remove}


# ---------------------------------------------------------------------------------------------
# UAC
# ---------------------------------------------------------------------------------------------
def uac_mode_values(mode, disable_lua=True):
    if mode == "enabled":
        return {"EnableLUA": 1, "ConsentPromptBehaviorAdmin": 5, "PromptOnSecureDesktop": 1}
    if mode in ("disabled", "disable_for_install"):
        return {"EnableLUA": 0 if disable_lua else 1, "ConsentPromptBehaviorAdmin": 0, "PromptOnSecureDesktop": 0}
    raise WindowsPlanError(f"UAC mode {mode!r} has no fixed values")


def uac_current(properties):
    """{name: int|None} from win_reg_stat `properties` of the UAC key (None = value absent)."""
    out = {}
    for name in UAC_VALUES:
        p = (properties or {}).get(name)
        if p is None:
            out[name] = None
            continue
        raw = p.get("raw_value", p.get("value")) if isinstance(p, dict) else p
        try:
            out[name] = int(raw)
        except (TypeError, ValueError) as e:
            raise WindowsPlanError(f"{UAC_KEY}\\{name} holds {raw!r}, not a number: fix it by hand first") from e
    return out


def uac_record_encode(values, mode):
    return json.dumps({"version": 1, "mode": mode, "values": {k: values.get(k) for k in UAC_VALUES}},
                      sort_keys=True)


def uac_record_decode(text):
    """The recorded original values, or None when there is no record."""
    if text in (None, ""):
        return None
    where = f"{UAC_RECORD_KEY}\\{UAC_RECORD_VALUE}"
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise WindowsPlanError(f"{where} is not readable JSON ({e}): restore UAC by hand, then delete it") from e
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise WindowsPlanError(f"{where} has an unknown format: restore UAC by hand, then delete it")
    vals = doc.get("values")
    if not isinstance(vals, dict) or set(vals) != set(UAC_VALUES):
        raise WindowsPlanError(f"{where} does not hold {', '.join(UAC_VALUES)}: restore UAC by hand, then delete it")
    for k, v in vals.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise WindowsPlanError(f"{where}: {k} is {v!r}, not a number or null")
    return dict(vals)


def uac_plan(mode, phase, current, record_text=None, disable_lua=True, install_pending=True):
    """The UAC steps for one phase; `before` runs before the install, `after` after it.

    Crash safety: the original values are written on the host (one REG_SZ value, one atomic write)
    BEFORE anything is changed, and never overwritten while it exists; any later run that finds
    the record (phase `after`, or mode `keep`) restores exactly those values (absent ones deleted)
    and deletes the record.

    `install_pending` (disable_for_install, phase `before`): whether the middleware role has anything
    to install or remove on this host (`middleware_pending`). When it has not, UAC is left alone (no
    record, no disable, no reboot), so a run with nothing to install changes nothing; a leftover
    record of an interrupted run is restored instead.
    """
    if mode not in UAC_MODES:
        raise WindowsPlanError(f"windows_uac_mode must be one of {', '.join(UAC_MODES)}, got {mode!r}")
    if phase not in UAC_PHASES:
        raise WindowsPlanError(f"UAC phase must be before or after, got {phase!r}")
    current = {k: (current or {}).get(k) for k in UAC_VALUES}
    record = uac_record_decode(record_text)
    plan = {"record_write": None, "record_delete": False, "target": None, "set": [], "reboot": False,
            "messages": [], "restore": False}
    if mode == "disable_for_install":
        if phase == "before" and not install_pending:
            if record is not None:
                plan["target"], plan["record_delete"], plan["restore"] = record, True, True
                plan["messages"].append("nothing to install; restoring the UAC values recorded by an earlier, "
                                        "interrupted run")
            else:
                plan["messages"].append("disable_for_install: nothing to install or remove on this host, "
                                        "UAC left as it is")
        elif phase == "before":
            if record is None:
                plan["record_write"] = uac_record_encode(current, mode)
            else:
                plan["messages"].append("a record of the original UAC values from an earlier, interrupted run "
                                        "exists: kept as is (it holds the values to restore)")
            plan["target"] = uac_mode_values(mode, disable_lua)
        elif record is not None:
            plan["target"], plan["record_delete"], plan["restore"] = record, True, True
        else:
            plan["messages"].append("no UAC record on the host: nothing to restore")
    elif mode == "keep":
        if record is not None:
            plan["target"], plan["record_delete"], plan["restore"] = record, True, True
            plan["messages"].append("restoring the UAC values recorded by an earlier, interrupted run")
    elif phase == "before":
        plan["target"] = uac_mode_values(mode, disable_lua)
        if record is not None:
            plan["record_delete"] = True
            plan["messages"].append(f"explicit mode {mode!r} replaces the UAC record of an interrupted run")
    if plan["target"] is not None:
        for name in UAC_VALUES:
            want = plan["target"][name]
            if current[name] != want:
                plan["set"].append(_entry(UAC_KEY, name, want, "dword", "absent" if want is None else "present"))
    expected = plan["target"]
    if expected is None and mode in ("enabled", "disabled"):
        expected = uac_mode_values(mode, disable_lua)
    plan["expected"] = [_entry(UAC_KEY, n, v, "dword", "absent" if v is None else "present")
                        for n, v in (expected or {}).items()]
    plan["record_expected"] = ("absent" if (phase == "after" or mode != "disable_for_install" or not install_pending)
                               else "present")
    plan["reboot"] = any(e["name"] == "EnableLUA" for e in plan["set"])
    plan["changed"] = bool(plan["set"] or plan["record_write"] or plan["record_delete"])
    return plan


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
    `zonemap_gpo`: a Group Policy owns the Site to Zone Assignment List (files/ie_zones_probe.ps1 found it
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
    """The zone Windows applies to each URL (MapUrlToZone, from files/ie_zones_probe.ps1), and IE Enhanced
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
    """User profiles from files/user_profiles.ps1 ({sid, profile_path, loaded, ntuser_exists}) that get
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


# ---------------------------------------------------------------------------------------------
# Firefox: bitness, GPO registry, policies.json
# ---------------------------------------------------------------------------------------------
def pe_arch(machine):
    """Architecture of a PE image from IMAGE_FILE_HEADER.Machine (int, '0x8664' or '34404')."""
    if isinstance(machine, str):
        try:
            machine = int(machine, 16) if machine.lower().startswith("0x") else int(machine)
        except ValueError as e:
            raise WindowsPlanError(f"PE machine {machine!r} is not a number") from e
    if machine not in PE_MACHINES:
        raise WindowsPlanError(f"unknown PE machine type 0x{int(machine):04X}")
    return PE_MACHINES[machine]


def _arch_label(arch):
    return f"{ARCH_BITS[arch]}-bit ({arch})"


def _arch_of(item, what):
    """Architecture of a probe item ({machine}: the PE header's) or of a planned one ({arch})."""
    if "machine" not in item and item.get("arch"):
        if item["arch"] not in ARCH_BITS:
            raise WindowsPlanError(f"{what} {item.get('path')}: unknown architecture {item['arch']!r}")
        return item["arch"]
    if item.get("machine") is None:
        raise WindowsPlanError(f"{what} {item.get('path')}: no PE machine type read (is it a PE file?)")
    return pe_arch(item["machine"])


def choose_gclib(firefox, candidates):
    """The gclib.dll that this Firefox can load.

    `firefox`: {path, machine|arch}; `candidates`: [{path, exists, machine|arch}] in preference
    order. Returns {path, arch}. The first existing candidate of the same architecture wins; if
    only other architectures exist, the error names both sides (a 64-bit Firefox cannot load a
    32-bit gclib.dll, nor the reverse).
    """
    fx_arch = _arch_of(firefox, "Firefox")
    found = [c for c in candidates or [] if c.get("exists")]
    for c in found:
        if _arch_of(c, "gclib.dll") == fx_arch:
            return {"path": c["path"], "arch": fx_arch}
    fx = f"Firefox {firefox.get('path')} is {_arch_label(fx_arch)}"
    if found:
        others = "; ".join(f"{c['path']} is {_arch_label(_arch_of(c, 'gclib.dll'))}" for c in found)
        raise WindowsPlanError(
            f"gclib.dll bitness mismatch: {fx}, but {others}. Firefox cannot load a PKCS#11 library of "
            f"another bitness: install the {ARCH_BITS[fx_arch]}-bit Classic Client (token_middleware_msi) "
            "or the Firefox build that matches it")
    looked = ", ".join(c.get("path", "?") for c in candidates or []) or "(no candidate paths)"
    raise WindowsPlanError(f"no gclib.dll found for {fx}; looked at: {looked}. Install Classic Client "
                           "(role token_middleware) or set windows_firefox_policies_gclib_paths")


def expected_gclib(firefox, candidates):
    """Where gclib.dll WILL be for this Firefox when none is installed yet (check mode before the
    middleware install): the first candidate in the Program Files folder of Firefox's bitness."""
    fx_arch = _arch_of(firefox, "Firefox")
    want_x86 = ARCH_BITS[fx_arch] == 32
    for c in candidates or []:
        if ("(x86)" in c.get("path", "")) == want_x86:
            return {"path": c["path"], "arch": fx_arch, "assumed": True}
    raise WindowsPlanError(f"no gclib.dll candidate path for a {_arch_label(fx_arch)} Firefox")


def firefox_plan(probe, certificate_paths, device_name="gem", import_enterprise_roots=True, prefer="auto",
                 state="present", assume_missing_dll=False, security_device=True):
    """Everything the Firefox policy role applies, from one read-only probe of the host.

    `probe`: {installs: [{path, dir, exists, machine}], gclib: [{path, exists, machine}],
    gpo: {relative key: {name: data}}, policies_json: {path: text|null}}.
    Returns {target, installs, desired_by_install, json: [{path, dir, text, changed, warnings}],
    registry: [entries], conflicts, warnings}.
    """
    installs = firefox_installs(probe.get("installs"))
    if not installs:
        raise WindowsPlanError("no Firefox install found on the host (looked in Program Files, Program Files (x86), "
                               "the Mozilla registry keys of the machine and of loaded user hives, each profile's "
                               "AppData\\Local\\Mozilla Firefox and the Microsoft Store packages): install Firefox "
                               "first, or set windows_firefox_policies_firefox_dirs")
    warnings = []
    for i in installs:
        if not security_device:
            i["gclib"] = None
            continue
        add_ok = supports_security_devices_add(i.get("version"))
        if add_ok is False:
            raise WindowsPlanError(
                f"Firefox {i['path']} is version {i.get('version')}: SecurityDevices.Add needs Firefox 114 or "
                "ESR 102.12 and later, this one would ignore it. Update Firefox (ESR 115 or later), or set "
                "windows_firefox_policies_security_device: false")
        if add_ok is None:  # no ProductVersion read (None) is as unknown as an odd one: never passed silently
            warnings.append(f"Firefox {i['path']}: version {i.get('version')!r} unreadable; SecurityDevices.Add "
                            "needs Firefox 114 / ESR 102.12 or later: check Help > About Firefox on this host")
        try:
            i["gclib"] = choose_gclib(i, probe.get("gclib"))["path"]
        except WindowsPlanError:
            if not assume_missing_dll or any(c.get("exists") for c in probe.get("gclib") or []):
                raise
            i["gclib"] = expected_gclib(i, probe.get("gclib"))["path"]
            warnings.append(f"gclib.dll not installed yet; assuming {i['gclib']} (check mode)")
    target = firefox_target(gpo_present(probe.get("gpo")), prefer, [i["kind"] for i in installs])
    if prefer == "auto" and target == "registry":
        warnings.append("Firefox " + ", ".join(f"{i['path']} ({i['kind']})" for i in installs
                                               if i["kind"] != "machine")
                        + ": a Microsoft Store or per-user install, whose folder cannot hold a policies.json "
                          "users cannot change: the policies go to the machine GPO registry instead")

    def fragment(dll):
        return desired_fragment(certificate_paths, {device_name: dll} if dll else {}, import_enterprise_roots)

    out = {"target": target, "installs": installs, "json": [], "registry": [], "conflicts": [], "warnings": warnings,
           "gpo_values": []}
    if target == "registry" and gpo_present(probe.get("gpo")):
        warnings.append("target registry on a host with Firefox Group Policy: if a GPO manages "
                        "Certificates\\Install or SecurityDevices\\Add, each Group Policy refresh replaces those "
                        "lists and removes our values; add them to the GPO instead")
    if target == "registry":
        dlls = sorted({i["gclib"] for i in installs if i["gclib"]})
        if len(dlls) > 1:
            raise WindowsPlanError(
                "Firefox installs of different bitness need different gclib.dll files ("
                + ", ".join(f"{i['path']} -> {i['gclib']}" for i in installs)
                + "), but the GPO registry holds one SecurityDevices path for all: set "
                  "windows_firefox_policies_target to json, or remove one Firefox")
        desired = fragment(dlls[0] if dlls else None)
        out["desired"] = desired
        out["registry"] = gpo_plan(probe.get("gpo"), desired, state)
    else:
        existing = probe.get("policies_json") or {}
        for i in installs:
            desired = fragment(i["gclib"])
            r = policies_json(existing.get(i["policies_json"]), desired, state, i["policies_json"])
            out["json"].append({"path": i["policies_json"], "dir": i["distribution"], "text": r["text"],
                                "changed": r["changed"], "warnings": r["warnings"], "desired": desired})
            out["warnings"] += r["warnings"]
        if state == "present":
            desired = out["json"][0]["desired"]
            scopes = [("HKLM", probe.get("gpo"))] + [
                (f"HKU\\{sid}", d) for sid, d in sorted((probe.get("gpo_users") or {}).items())]
            found = {}
            for scope, dump in scopes:
                for c in gpo_conflicts(dump, desired):
                    found.setdefault(c, []).append(scope)
            out["conflicts"] = sorted(found)
            # what to add to the GPO so that the policy holds our entries (the registry form of the fragment)
            out["gpo_values"] = gpo_values({k: desired[k] for k in out["conflicts"]})
            for c in out["conflicts"]:
                out["warnings"].append(
                    f"Group Policy ({', '.join(found[c])}) already sets the Firefox policy {c}: it wins over "
                    f"policies.json, so our {c} entries have no effect. Add them to that GPO: "
                    + "; ".join(v["value"] for v in out["gpo_values"] if v["policy"] == c))
    return out


def firefox_checks(plan, probe_after, state="present", role="windows_firefox_policies"):
    """Checks after the run: the policy holds our entries, the DLL exists and matches Firefox."""
    out = []
    if plan["target"] == "registry":
        left = gpo_plan(probe_after.get("gpo"), plan["desired"], state)
        out.append(check(f"Firefox GPO registry {state}", not left,
                         "as planned" if not left else f"{len(left)} value(s) differ: "
                         + ", ".join(f"{e['path']}\\{e['name']}" for e in left), role))
    else:
        texts = probe_after.get("policies_json") or {}
        for j in plan["json"]:
            try:
                r = policies_json(texts.get(j["path"]), j["desired"], state, j["path"])
                ok, detail = not r["changed"], "as planned" if not r["changed"] else "our entries are not all there"
            except WindowsPlanError as e:
                ok, detail = False, str(e)
            out.append(check(f"policies.json {j['path']}", ok, detail, role))
    if state == "present":
        for c in plan.get("conflicts") or []:
            out.append(check(f"Firefox policy {c} not overridden by Group Policy", False,
                             f"Group Policy sets {c}, so our policies.json entries for it have no effect; add to the "
                             "GPO: " + "; ".join(v["value"] for v in plan.get("gpo_values") or [] if v["policy"] == c),
                             role))
    gclib = {c["path"]: c for c in probe_after.get("gclib") or []}
    for i in plan["installs"]:
        if not i.get("gclib") or state == "absent":
            continue
        c = gclib.get(i["gclib"], {})
        try:
            ok = bool(c.get("exists")) and _arch_of(c, "gclib.dll") == i["arch"]
            detail = f"{i['gclib']} {'is' if ok else 'is NOT'} a {_arch_label(i['arch'])} DLL present for {i['path']}"
        except WindowsPlanError as e:
            ok, detail = False, str(e)
        out.append(check(f"gclib.dll for {i['path']}", ok, detail, role))
    return out


def firefox_installs(probe_installs):
    """Firefox installs from the probe, each with its architecture and distribution folder."""
    out, seen = [], set()
    for i in probe_installs or []:
        if not i.get("exists", True) or i["path"].casefold() in seen:
            continue
        seen.add(i["path"].casefold())
        d = i.get("dir") or i["path"].rsplit("\\", 1)[0]
        out.append({"path": i["path"], "dir": d, "arch": _arch_of(i, "Firefox"),
                    "distribution": d + "\\distribution", "policies_json": d + "\\distribution\\policies.json",
                    "version": i.get("version"), "kind": i.get("kind") or "machine"})
    return out


def firefox_target(gpo_present, prefer="auto", kinds=()):
    """Where our policies go: `json` (distribution\\policies.json) unless `registry` is asked for, or a
    Firefox of `kinds` is a Microsoft Store build (its folder under WindowsApps cannot be written) or a
    per-user install (its folder belongs to the user, who could rewrite a policies.json there): those read
    the machine GPO registry, which only administrators write.

    `auto` never writes into HKLM\\SOFTWARE\\Policies\\Mozilla\\Firefox, even on a host with Firefox
    GPO policies: that key belongs to Group Policy, whose list policies (Certificates\\Install,
    SecurityDevices\\Add) are not additive, so each refresh would wipe our values and each run re-add
    them. Policies that Group Policy already sets are reported as conflicts instead (gpo_conflicts).
    """
    if prefer not in ("auto", "json", "registry"):
        raise WindowsPlanError(f"windows_firefox_policies_target must be auto, json or registry, got {prefer!r}")
    if prefer == "auto":
        return "registry" if {"store", "user"} & set(kinds or ()) else "json"
    return prefer


def gpo_present(dump):
    """True when the GPO key HKLM\\SOFTWARE\\Policies\\Mozilla\\Firefox holds any value."""
    return any(bool(v) for v in (dump or {}).values())


# SecurityDevices.Add / Delete: Firefox 114, ESR 102.12 (mozilla/policy-templates); older ones only
# know the deprecated flat form.
SECURITY_DEVICES_ADD_SINCE = ((114, 0), (102, 12))


def firefox_version(text):
    """(major, minor) of a Firefox ProductVersion ("128.5.0", "115.0esr"), or None when unreadable."""
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?", str(text or ""))
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def supports_security_devices_add(version):
    v = firefox_version(version)
    if v is None:
        return None
    new, esr = SECURITY_DEVICES_ADD_SINCE
    return v >= new or (v[0] == esr[0] and v >= esr)


def gpo_values(fragment):
    """The GPO registry values (mozilla/policy-templates form) that carry `fragment`: what an administrator
    adds to the GPO when Group Policy owns a policy. [{policy, value: "Software\\...\\Name = data"}]"""
    out = []
    for e in gpo_plan({}, fragment):
        rel = e["path"][len(FIREFOX_GPO_KEY) + 1:]
        out.append({"policy": rel.split("\\")[0],
                    "value": f"Software\\Policies\\Mozilla\\Firefox\\{rel}\\{e['name']} = {e['data']}"})
    return out


def gpo_conflicts(dump, desired):
    """Top-level policies we want that the GPO registry already sets: GPO wins for those."""
    tops = {k.split("\\")[0] for k, v in (dump or {}).items() if v and k}
    tops |= set((dump or {}).get("", {}) or {})
    return sorted(p for p in desired if p in tops)


def _reg_value(value, where):
    if isinstance(value, bool):
        return int(value), "dword"
    if isinstance(value, int):
        return value, "dword"
    if isinstance(value, str):
        return value, "string"
    raise WindowsPlanError(f"{where}: cannot render {value!r} as a registry value")


def _numbered(values):
    return [kv[1] for kv in sorted((int(k), v) for k, v in (values or {}).items() if str(k).isdigit())]


def gpo_plan(dump, desired, state="present", key=FIREFOX_GPO_KEY):
    """win_regedit entries that put the `desired` fragment into the Firefox GPO registry.

    `dump`: {relative key path: {value name: data}} of the existing GPO key ("" = the key itself).
    Lists (Certificates\\Install) are numbered values 1..n: ours are appended after the existing
    ones, `absent` removes ours and renumbers the rest. Scalars and dict entries are set; `absent`
    removes them only when they still hold our value.
    """
    if state not in ("present", "absent"):
        raise WindowsPlanError(f"state must be present or absent, got {state!r}")
    dump = dump or {}
    entries = []

    def walk(rel, obj):
        have = dump.get(rel, {}) or {}
        path = key + ("\\" + rel if rel else "")
        for name, value in obj.items():
            sub = f"{rel}\\{name}" if rel else name
            if isinstance(value, dict):
                walk(sub, value)
            elif isinstance(value, list):
                entries.extend(_list_entries(key + "\\" + sub, dump.get(sub, {}) or {}, value, state))
            else:
                data, vtype = _reg_value(value, sub)
                cur = have.get(name)
                if state == "present":
                    if cur is None or _reg_norm(cur) != data:
                        entries.append(_entry(path, name, data, vtype))
                elif cur is not None and _reg_norm(cur) == data:
                    entries.append(_entry(path, name, None, vtype, "absent"))

    walk("", desired or {})
    return entries


def _reg_norm(v):
    return int(v) if isinstance(v, bool) else v


def _list_entries(path, have, wanted, state):
    existing = _numbered(have)
    for v in wanted:
        if not isinstance(v, str):
            raise WindowsPlanError(f"{path}: list items must be strings, got {v!r}")
    if state == "present":
        final = existing + [v for v in dict.fromkeys(wanted) if v not in existing]
    else:
        final = [v for v in existing if v not in wanted]
    out = []
    for i, v in enumerate(final, 1):
        if have.get(str(i)) != v:
            out.append(_entry(path, str(i), v))
    for k in sorted((k for k in have if str(k).isdigit() and int(k) > len(final)), key=int):
        out.append(_entry(path, str(k), None, "string", "absent"))
    return out


def desired_fragment(certificate_paths, devices, import_enterprise_roots=None):
    """The shared Firefox policy fragment (module_utils/tokentrust_policies.desired_policies)."""
    try:
        return pol.desired_policies(certificate_paths, devices, import_enterprise_roots)
    except pol.PolicyError as e:
        raise WindowsPlanError(str(e)) from e


def policies_json(existing_text, desired, state="present", path="policies.json"):
    """New policies.json text for one install: {text, changed, added, removed, warnings}."""
    try:
        doc = pol.load_policies(existing_text or "", path)
        res = pol.plan_merge(doc, desired, state)
    except pol.PolicyError as e:
        raise WindowsPlanError(f"{e}: fix or remove that file, then run again") from e
    # Nothing of ours changed -> the file is left as it is (an administrator's formatting is kept).
    return {"text": pol.dump_policies(res.doc), "changed": res.changed, "doc": res.doc, **res.as_dict()}


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


# ---------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------
def check(name, ok, detail="", role=""):
    return {"name": name, "ok": bool(ok), "detail": detail, "role": role}


def check_stores(plan, present, role="windows_trust_store"):
    present = {k: {normalize_thumbprint(t) for t in (v or [])} for k, v in (present or {}).items()}
    out = []
    for i in plan.get("install", []):
        ok = i["thumbprint"] in present.get(i["store"], set())
        out.append(check(f"store {i['store']}: {i['name']}", ok,
                         f"{i['thumbprint']} {'present' if ok else 'MISSING'} in LocalMachine\\{i['store']}", role))
    for r in plan.get("remove", []):
        ok = r["thumbprint"] not in present.get(r["store"], set())
        state = "absent" if ok else "STILL PRESENT"
        out.append(check(f"store {r['store']}: {r['name']} removed", ok,
                         f"{r['thumbprint']} {state} in LocalMachine\\{r['store']}", role))
    return out


# win_regedit `type` -> the type win_reg_stat reports: a DWORD 1 and a REG_SZ "1" compare equal as strings,
# but Windows reads UAC's EnableLUA or a zone's 2500 only as a DWORD, so the type is part of the check.
REG_TYPES = {"string": "REG_SZ", "expandstring": "REG_EXPAND_SZ", "multistring": "REG_MULTI_SZ", "dword": "REG_DWORD",
             "qword": "REG_QWORD", "binary": "REG_BINARY", "none": "REG_NONE"}


def check_registry(entries, observed, role=""):
    """`observed`: one win_reg_stat result per entry, in the same order; value and type must both match."""
    if len(entries or []) != len(observed or []):
        raise WindowsPlanError(f"{len(entries or [])} planned registry entries but {len(observed or [])} observed")
    out = []
    for e, o in zip(entries or [], observed or []):
        exists = bool(o.get("exists"))
        have = o.get("raw_value", o.get("value"))
        where = f"{e['path']}\\{e['name']}" + (f" (hive {e['hive']})" if e.get("hive") else "")
        if e["state"] == "absent":
            ok, detail = not exists, f"{where} {'absent' if not exists else f'still {have!r}'}"
        else:
            want_type = REG_TYPES.get(str(e.get("type") or "string").casefold(), str(e.get("type")).upper())
            have_type = o.get("type")
            ok = exists and str(have) == str(e["data"]) and have_type == want_type
            detail = f"{where} = {have!r} ({have_type})" + ("" if ok else f", expected {e['data']!r} ({want_type})")
        out.append(check(where, ok, detail, role))
    return out


# ---------------------------------------------------------------------------------------------
# the key, as far as a WinRM session can see it (role windows_verify, files/token_probe.ps1)
# ---------------------------------------------------------------------------------------------
SCARD_ERRORS = {0x8010001D: "SCARD_E_NO_SERVICE", 0x8010002E: "SCARD_E_NO_READERS_AVAILABLE",
                0x8010000A: "SCARD_E_TIMEOUT", 0x80100017: "SCARD_E_READER_UNAVAILABLE",
                0x80100011: "SCARD_E_INVALID_VALUE", 0x80100066: "SCARD_W_UNRESPONSIVE_CARD"}
# What the test login of the manual does and a WinRM session cannot: said in every report.
TOKEN_NOT_VERIFIABLE = (
    "PIN entry: the CSP/KSP and Classic Client ask for the PIN in a dialog on the user's desktop; a WinRM "
    "session has no desktop (session 0, network logon), so no operation needing the PIN is attempted",
    "signing or TLS client authentication with the key (the manual's test login in a browser)",
    "certificate propagation of the card's certificates to the user's personal store (user session only)",
    "what the logged-on user's Firefox shows: the security device loads at the user's next Firefox start",
)


def _scard_error(code):
    if code in (None, ""):
        return None
    try:
        n = int(str(code), 16) if str(code).lower().startswith("0x") else int(code)
    except ValueError:
        return str(code)
    return f"0x{n:08X} ({SCARD_ERRORS.get(n, 'unknown')})"


def atr_matches(atr, registered_atr, mask=None):
    """Windows' ATR match of a card against a Calais\\SmartCards entry: same length and
    (atr & mask) == (registered & mask) byte by byte (hex strings; no mask = exact)."""
    try:
        a, r = bytes.fromhex(atr or ""), bytes.fromhex(registered_atr or "")
        m = bytes.fromhex(mask) if mask else b"\xff" * len(r)
    except ValueError:
        return False
    if not a or len(a) != len(r) or len(m) != len(r):
        return False
    return all((x & k) == (y & k) for x, y, k in zip(a, r, m))


def token_checks(probe, role="windows_verify", token=True):
    """Checks of the smart card side from the read-only token probe: services (always), then with `token`
    (the key is plugged in during the run) reader, token inserted, minidriver registered for the token's ATR.
    Nothing here needs the PIN."""
    probe = probe or {}
    out = service_checks(probe, role)
    if not token:
        return out
    return out + _token_present_checks(probe, role)


def service_checks(probe, role="windows_verify"):
    """The services and the policy the key needs, whether it is plugged in or not: Smart Card (SCardSvr),
    Certificate Propagation (CertPropSvc) and its Group Policy switch, Smart Card Device Enumeration."""
    out = []
    svc = probe.get("service") or {}
    svc_ok = bool(svc.get("exists")) and svc.get("start_type") != "Disabled"
    out.append(check("smart card service", svc_ok,
                     f"SCardSvr {svc.get('status')}, start {svc.get('start_type')}" if svc.get("exists")
                     else "SCardSvr (Smart Card service) does not exist", role))
    cp = probe.get("certprop") or {}
    cp_ok = bool(cp.get("exists")) and cp.get("start_type") == "Automatic" and cp.get("status") == "Running"
    out.append(check("certificate propagation service", cp_ok,
                     f"CertPropSvc {cp.get('status')}, start {cp.get('start_type')}"
                     + ("" if cp_ok else ": it copies the key's certificates into the user's personal store when the "
                        "key is inserted (what 'Tout enregistrer' of Classic Client Toolbox does by hand); set it to "
                        "Automatic and start it (role token_middleware, token_middleware_certprop)")
                     if cp.get("exists") else "CertPropSvc (Certificate Propagation) does not exist", role))
    # Group Policy "Turn on certificate propagation from smart card" (SmartCard.admx: HKLM\SOFTWARE\Policies\
    # Microsoft\Windows\CertProp, CertPropEnabled; 0 = disabled): with it off, CertPropSvc runs and copies nothing.
    pol = (probe.get("certprop_policy") or {}).get("enabled")
    out.append(check("certificate propagation policy", pol != 0,
                     "not set by Group Policy (propagation on)" if pol is None else
                     f"CertPropEnabled = {pol}" + ("" if pol != 0 else
                                                   ": Group Policy 'Turn on certificate propagation from smart card' "
                                                   "is disabled, so the key's certificates never reach the user's "
                                                   "store; ask the GPO owner to enable it"), role))
    # Smart Card Device Enumeration Service (ScDeviceEnum): creates the device nodes of inserted cards; disabled,
    # Windows does not see the card as a device (minidriver, certificate propagation).
    de = probe.get("scdeviceenum") or {}
    de_ok = bool(de.get("exists")) and de.get("start_type") != "Disabled"
    out.append(check("smart card device enumeration service", de_ok,
                     f"ScDeviceEnum {de.get('status')}, start {de.get('start_type')}"
                     + ("" if de_ok else ": disabled, Windows does not enumerate inserted cards; set it back to "
                                         "Manual (trigger start)")
                     if de.get("exists") else "ScDeviceEnum (Smart Card Device Enumeration Service) does not exist",
                     role))
    return out


def _token_present_checks(probe, role):
    out = []
    if probe.get("rds_session_host"):
        out.append(check("smart card reader", True, "not visible over WinRM on an RDS host: the key is redirected "
                         "into the user's remote session, which a WinRM session cannot see; check it from that "
                         "session (certutil -scinfo)", role))
        return out
    sc = probe.get("scard") or {}
    err = _scard_error(sc.get("context_error")) or _scard_error(sc.get("list_error"))
    readers = sc.get("readers") or []
    pnp = probe.get("pnp_readers") or []
    if readers:
        out.append(check("smart card reader", True, "readers: " + ", ".join(r.get("name", "?") for r in readers), role))
    else:
        why = f"WinSCard: {err}" if err else "WinSCard lists no reader"
        seen = ", ".join(f"{p.get('name')} ({p.get('status')})" for p in pnp)
        out.append(check("smart card reader", False, why + (f"; Plug and Play sees: {seen}" if seen
                                                            else "; no smart card reader in Plug and Play either: "
                                                                 "is the token plugged in?"), role))
    cards = [r for r in readers if r.get("present") and r.get("atr")]
    out.append(check("token inserted", bool(cards),
                     "; ".join(f"card in {r['name']}, ATR {r['atr']}" for r in cards) if cards
                     else "no card in any reader", role))
    registered = probe.get("registered_cards") or []
    for r in cards:
        hits = [c for c in registered if atr_matches(r["atr"], c.get("atr"), c.get("atr_mask"))
                and (c.get("minidriver") or c.get("ksp") or c.get("csp"))]
        detail = ("; ".join(f"{c['name']} ({c.get('view')}-bit): minidriver {c.get('minidriver') or '-'}, "
                            f"KSP {c.get('ksp') or '-'}, CSP {c.get('csp') or '-'}" for c in hits) if hits
                  else f"no Calais\\SmartCards entry matches ATR {r['atr']}: Windows has no minidriver for this "
                       "token (install or repair Classic Client)")
        out.append(check(f"minidriver for the token in {r['name']}", bool(hits), detail, role))
    return out


def report(host, checks, extra=None):
    """The per-host `tokentrust_windows_report` fact for the fleet report."""
    checks = list(checks or [])
    failed = [c["name"] for c in checks if not c.get("ok")]
    out = {"host": host, "platform": "windows", "ok": not failed, "checks": checks, "failed": failed,
           "summary": f"{len(checks) - len(failed)}/{len(checks)} checks passed"}
    out.update(extra or {})
    return out
