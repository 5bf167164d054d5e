# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""NSS trust strings as `certutil -L` prints them, computed without NSS (pure Python, controller or target)."""
from __future__ import annotations

_ORDER = "cpCTPuwIG"


def encoded_trust(trust):
    """'CT,C,' style string -> certutil's rendering: letters in certutil's order, 'c' implied by C/T, 'p' by P."""
    fields = []
    for f in str(trust).split(","):
        letters = set(f)
        if "C" in letters or "T" in letters:
            letters.discard("c")
        if "P" in letters:
            letters.discard("p")
        fields.append("".join(ch for ch in _ORDER if ch in letters))
    return ",".join(fields)
