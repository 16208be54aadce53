"""Version tuples: the numbers feature thresholds compare."""

from __future__ import annotations

import pytest

from plugin.core.versions import version_tuple


@pytest.mark.parametrize(("text", "expected"), [
    ("0.11.1rc2+cpu", (0, 11, 1)),
    ("1.2.13", (1, 2, 13)),
    ("0.32.0+cpu", (0, 32, 0)),
    ("v0.19.0", (0, 19, 0)),
    ("1.2.12.dev0", (1, 2, 12)),
    ("2", (2,)),
    ("", ()),
    ("unknown", ()),
])
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


def test_version_tuples_order_releases():
    assert version_tuple("1.2.13") > version_tuple("1.2.12") > version_tuple("1.2.11") > version_tuple("1.2")
    assert version_tuple("0.10.0") > version_tuple("0.9.2")
