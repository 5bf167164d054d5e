# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""What the NSS modules need on a host, found without needing it: no cffi, no NSS, no write.

`probe()` is the one read-only look at the host that both `nss_prerequisites` (firefox_policies asks it before
any change) and `nss_provision` (which reports instead of failing when they are missing, with
`prerequisites: report`) give back; role firefox_nss turns it into package names and installs them.
"""
from __future__ import annotations

import ctypes.util
import importlib.util
import platform
import sys

# What each prerequisite is, for messages (role firefox_nss maps the keys to package names by OS family).
WHAT = {"nss3": "the NSS library (libnss3)", "cffi": "cffi for Python"}


def os_family():
    """Debian, RedHat, Linux (another distribution), Darwin...: from /etc/os-release, without fact gathering."""
    fam = platform.system()
    if fam != "Linux":
        return fam
    ids = ""
    try:
        with open("/etc/os-release", encoding="utf-8", errors="replace") as f:
            for line in f:
                k, _sep, v = line.strip().partition("=")
                if k in ("ID", "ID_LIKE"):
                    ids += " " + v.strip('"').lower()
    except OSError:
        pass
    words = set(ids.split())
    if {"debian", "ubuntu"} & words:
        return "Debian"
    if {"rhel", "fedora", "centos"} & words:
        return "RedHat"
    return "Linux"


def probe(nss3=None):
    """{family, python, cffi, nss3, python_apt, unmet, needs}: unmet lists the keys of WHAT that are missing, needs
    says what they are.

    nss3: whether NSS is known to load (True/False) when the caller has already tried; None looks it up.
    """
    cffi = importlib.util.find_spec("cffi") is not None
    if nss3 is None:
        nss3 = bool(ctypes.util.find_library("nss3"))
    out = {"family": os_family(), "python": sys.executable, "cffi": cffi, "nss3": bool(nss3),
           "python_apt": importlib.util.find_spec("apt") is not None}
    out["unmet"] = [k for k in ("nss3", "cffi") if not out[k]]
    out["needs"] = [WHAT[k] for k in out["unmet"]]
    return out


def message(found):
    """One line: what is missing, and for which Python."""
    return "%s missing for %s (the NSS modules run on the host's own Python)" % (
        ", ".join(found["needs"]), found["python"])
