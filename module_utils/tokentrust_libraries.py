# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""Where the USB key's middleware puts its PKCS#11 library, per OS: the ONE table every module and role uses.

    from ansible.module_utils.tokentrust_libraries import default_library, library_candidates
    default_library()            # this host's Gemalto / Thales Classic Client library (None: no default known)
    library_candidates("Darwin") # every known place, most likely first

Keys are ``platform.system()`` values. The first entry of each list is the default; the others are places older
or repackaged installs use (looked up by modules that probe the host, e.g. firefox_policies).

macOS: Classic Client installs a framework; its PKCS#11 library is
``/Library/Frameworks/Pkcs11ClassicClient.framework/Versions/A/Pkcs11ClassicClient/libgclib.dylib`` (the path the
Web eID project's libelectronic-id uses for LuxTrust / Luxembourg eID cards on the same middleware). An earlier copy
of this table said ``.../Versions/A/Libraries/libgclib.dylib``: no public material names that path, so it is not
listed.
"""
from __future__ import annotations

import platform

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
        "C:\\Program Files\\Gemalto\\Classic Client\\BIN\\gclib.dll",
        "C:\\Program Files (x86)\\Gemalto\\Classic Client\\BIN\\gclib.dll",
        "C:\\Program Files\\Thales\\Classic Client\\BIN\\gclib.dll",
    ],
}


def library_candidates(system=None):
    """Every known path of the middleware's PKCS#11 library on `system` (default: this host), default first."""
    return list(GEMALTO_CLASSIC_CLIENT.get(system or platform.system(), []))


def default_library(system=None):
    """The default PKCS#11 library path on `system` (default: this host); None when no default is known."""
    found = library_candidates(system)
    return found[0] if found else None
