"""The cloud mask's cloud values: the Sentinel-2 L2A scene classification's cloud classes by default, and a
user's list (CLOUD_VALUES) read and checked. Nothing here needs numpy or GDAL, so the algorithm's parameters
can be defined before the plugin's packages are installed."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .errors import InputError

# Sentinel-2 L2A scene classification (SCL): 3 cloud shadow, 8 cloud medium probability, 9 cloud high
# probability, 10 thin cirrus
DEFAULT_CLOUD_VALUES = (3.0, 8.0, 9.0, 10.0)
HINT = ("Give the cloud mask's cloud values, comma-separated: 3,8,9,10 for a Sentinel-2 L2A scene "
        "classification (SCL), 1 for a 0/1 cloud mask.")


def format_values(values: Sequence[float]) -> str:
    """(3.0, 8.0) -> '3, 8'."""
    return ", ".join(f"{v:g}" for v in values)


def check_cloud_values(values: Sequence[float]) -> tuple[float, ...]:
    """The cloud values as finite numbers; InputError for anything else (or none)."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out or not all(math.isfinite(v) for v in out):
        raise InputError(f"CLOUD_VALUES {list(values)!r} is not a list of numbers.", HINT)
    return out


def parse_cloud_values(text: str) -> tuple[float, ...]:
    """'3,8, 9;10' -> (3.0, 8.0, 9.0, 10.0); '' -> the default (the SCL cloud classes)."""
    text = (text or "").strip()
    if not text:
        return DEFAULT_CLOUD_VALUES
    parts = [p for p in re.split(r"[,;\s]+", text) if p]
    try:
        return check_cloud_values([float(p) for p in parts])
    except (ValueError, InputError):
        raise InputError(f"CLOUD_VALUES '{text}' is not a list of numbers.", HINT) from None
