"""Version numbers as tuples, for feature thresholds."""

from __future__ import annotations

import re

_LEADING_NUMBERS = re.compile(r"v?(\d+(?:\.\d+)*)")


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading dotted numbers of a version: '0.11.1rc2+cpu' -> (0, 11, 1); '' -> ().

    Suffixes (pre-release, local build such as +cpu) are ignored, so a threshold compares releases.
    """
    m = _LEADING_NUMBERS.match(text.strip())
    return tuple(int(n) for n in m.group(1).split(".")) if m else ()
