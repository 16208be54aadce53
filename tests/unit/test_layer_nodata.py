"""The values a QGIS layer adds to its raster's nodata, as ranges of one band's values (NaN bound: open)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plugin.core.layer_nodata import NodataRange, covered, describe, used

NAN = math.nan
VALUES = np.array([-10.0, 0.0, 1.0, 5.0, 10.0, 65535.0, NAN])


@pytest.mark.parametrize("rng, expected", [
    (NodataRange(1, 65535, 65535), [0, 0, 0, 0, 0, 1, 0]),
    (NodataRange(1, 0, 10), [0, 1, 1, 1, 1, 0, 0]),
    (NodataRange(1, 0, 10, include_low=False, include_high=False), [0, 0, 1, 1, 0, 0, 0]),
    (NodataRange(1, NAN, 1), [1, 1, 1, 0, 0, 0, 0]),
    (NodataRange(1, 5, NAN, include_low=False), [0, 0, 0, 0, 1, 1, 0]),
    (NodataRange(1, NAN, NAN), [1, 1, 1, 1, 1, 1, 0]),
])
def test_a_range_covers_the_values_qgis_hides(rng, expected):
    np.testing.assert_array_equal(rng.covers(VALUES), np.array(expected, bool))


def test_an_integer_band_compares_with_the_float_bounds():
    values = np.array([0, 1, 65534, 65535], np.uint16)
    np.testing.assert_array_equal(NodataRange(2, 65535, 65535).covers(values), [False, False, False, True])
    np.testing.assert_array_equal(NodataRange(2, NAN, 0.5).covers(values), [True, False, False, False])


def test_only_the_used_bands_count_and_each_range_reads_its_own_band():
    ranges = (NodataRange(7, 0, 0), NodataRange(3, 9, 9), NodataRange(1, 65535, 65535))
    kept = used(ranges, [0, 1, 2, 3])  # 0-based bands 1-4
    assert kept == (NodataRange(1, 65535, 65535), NodataRange(3, 9, 9))
    data = np.zeros((4, 2, 3), np.uint16)
    data[0, 0, 0] = 65535  # band 1
    data[2, 1, 2] = 9  # band 3
    data[1, 1, 1] = 9  # band 2: 9 is not no data there
    np.testing.assert_array_equal(covered(kept, [1, 2, 3, 4], data), [[True, False, False], [False, False, True]])


def test_the_log_names_each_bands_values():
    ranges = (NodataRange(4, 0, 10), NodataRange(1, 65535, 65535), NodataRange(1, NAN, -1, include_high=False))
    assert describe(ranges) == "band 1: 65535, (−∞, -1); band 4: [0, 10]"
