"""Version numbers as tuples, for feature thresholds ('0.11.1rc2+cpu' -> (0, 11, 1))."""

from __future__ import annotations


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading numeric parts of a version; () when there are none (an unknown version)."""
    parts: list[int] = []
    for piece in (text or "").strip().lstrip("vV").split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)
