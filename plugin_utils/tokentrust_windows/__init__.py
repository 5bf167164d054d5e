# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Windows planning logic (controller only, never shipped to hosts): pure Python, no Windows needed; imports only
the floor of our module_utils and tokentrust_policies.

The Windows roles read the host with ansible.windows modules (win_reg_stat, win_certificate_info,
a read-only win_powershell probe), hand what they read to these functions through the filters of
`filter_plugins/tokentrust.py`, and apply the returned plan with ansible.windows modules (win_certificate_store,
win_regedit, win_copy, win_package, win_reboot). Decide here, act there.

Registry paths are returned in the PSDrive form that win_regedit / win_reg_stat take
(`HKLM:\\SOFTWARE\\...`, `HKU:\\<SID>\\...`). A registry entry of a plan is a dict:

    {"path": ..., "name": ..., "data": ..., "type": "string"|"dword", "state": "present"|"absent",
     "hive": <NTUSER.DAT path, only for users whose hive is not loaded>, "scope": "machine"|"user:<sid>"}

One file per role section: common (keys, WindowsPlanError, registry entries), trust_store, uac, ie_zones,
firefox (bitness, GPO registry, policies.json), middleware, private_dir, verify. This package re-exports their
public names, so `tokentrust_windows.store_plan` and `tokentrust_windows.trust_store.store_plan` are the same.
"""
from __future__ import annotations

from .common import (  # noqa: F401 - re-exported
    ARCH_BITS,
    DEFAULT_LEGACY_PRODUCTS,
    DEFAULT_PRODUCT_NAMES,
    DEFAULT_TRUSTED_SITES,
    FIREFOX_GPO_KEY,
    HIVE_MOUNT,
    IE_MODES,
    IE_POLICY_KEY,
    IE_PROTECTED_MODE_OFF,
    IE_PROTECTED_MODE_VALUE,
    IE_TRUSTED_ZONE,
    IE_USER_SUBKEY,
    IE_ZONE_NAMES,
    OTHER_VERSION_MODES,
    PE_MACHINES,
    PSL_PATHS,
    STORE_MODULE_NAMES,
    TRUST_RECORD_KEY,
    TT_KEY,
    UAC_KEY,
    UAC_MODES,
    UAC_PHASES,
    UAC_RECORD_KEY,
    UAC_RECORD_VALUE,
    UAC_VALUES,
    WindowsPlanError,
    win_path,
)
from .firefox import (  # noqa: F401 - re-exported
    SECURITY_DEVICES_ADD_SINCE,
    candidate_is_x86,
    choose_gclib,
    desired_fragment,
    expected_gclib,
    firefox_checks,
    firefox_installs,
    firefox_plan,
    firefox_target,
    firefox_version,
    gpo_conflicts,
    gpo_plan,
    gpo_present,
    gpo_values,
    pe_arch,
    policies_json,
    supports_security_devices_add,
)
from .ie_zones import (  # noqa: F401 - re-exported
    ie_checks,
    ie_gpo_advice,
    ie_plan,
    ie_urls,
    ie_users,
    load_psl,
    parse_psl,
    registrable_domain,
    zonemap_domain,
)
from .middleware import (  # noqa: F401 - re-exported
    legacy_match,
    middleware_checks,
    middleware_pending,
    msi_second_hop,
    msi_source,
    other_versions,
)
from .private_dir import (  # noqa: F401 - re-exported
    ADMIN_SIDS,
    ADMINISTRATORS_SID,
    SYSTEM_SID,
    USERS_SID,
    WELL_KNOWN_SIDS,
    private_aces,
    private_chain,
    private_dir_problems,
)
from .trust_store import (  # noqa: F401 - re-exported
    normalize_thumbprint,
    store_for,
    store_plan,
    store_thumbprints,
)
from .uac import (  # noqa: F401 - re-exported
    uac_current,
    uac_mode_values,
    uac_plan,
    uac_record_decode,
    uac_record_encode,
)
from .verify import (  # noqa: F401 - re-exported
    REG_TYPES,
    SCARD_ERRORS,
    TOKEN_NOT_VERIFIABLE,
    atr_matches,
    check,
    check_registry,
    check_stores,
    report,
    service_checks,
    token_checks,
)
