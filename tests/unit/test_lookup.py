"""Table lookups by 8- and 16-bit indices: the same values as numpy's own indexing, in every chunk and thread, by
either way of gathering a chunk; the faster way is the one kept."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from plugin.core.tensor import lookup as lookup_module
from plugin.core.tensor.lookup import CANDIDATES, CHUNK, _index, fastest, lookup


@pytest.fixture(params=CANDIDATES, ids=lambda gather: gather.__name__.strip("_"))
def gather(request, monkeypatch):
    """Each way of gathering a chunk in turn, whichever this numpy build runs faster."""
    monkeypatch.setattr(lookup_module, "_gather", request.param)
    return request.param


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_lookup_equals_indexing_across_chunk_edges(dtype, size, gather):
    rng = np.random.default_rng(1)
    n = 1 << (8 * np.dtype(dtype).itemsize)
    table = rng.standard_normal(n).astype(np.float32)
    indices = rng.integers(0, n, size).astype(dtype)
    indices[-1] = n - 1  # the table's last entry, and its first, are reached
    indices[0] = 0
    np.testing.assert_array_equal(lookup(table, indices), table[indices])


def test_lookup_writes_into_out_and_keeps_the_shape(gather):
    table = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)  # every float16, NaN included
    indices = np.arange(1 << 17, dtype=np.uint32).astype(np.uint16).reshape(2, 256, 256)[:, ::-1]  # not contiguous
    out = np.empty((2, 256, 256), np.float16)
    assert lookup(table, indices, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint16), indices)  # bit for bit


def test_threads_each_get_their_own_values(gather):
    table = np.arange(1 << 16, dtype=np.float32) * 0.5
    rng = np.random.default_rng(2)
    parts = [rng.integers(0, 1 << 16, (6, 512, 512)).astype(np.uint16) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda idx: lookup(table, idx), parts))
    for idx, got in zip(parts, results):
        np.testing.assert_array_equal(got, idx * np.float32(0.5))


def test_a_table_that_does_not_cover_the_indices_is_refused():
    with pytest.raises(ValueError, match="65536 entries"):
        lookup(np.zeros(256, np.float32), np.zeros(4, np.uint16))
    with pytest.raises(TypeError, match="uint8 or uint16"):
        lookup(np.zeros(256, np.float32), np.zeros(4, np.int8))
    with pytest.raises(ValueError, match="C-contiguous"):
        lookup(np.zeros(256, np.float32), np.zeros((4, 4), np.uint8), out=np.zeros((4, 4), np.float32).T[:, ::2])


def _slow(table, wide, out):
    time.sleep(0.01)
    _index(table, wide, out)


@pytest.mark.parametrize("candidates", [(_slow, _index), (_index, _slow)], ids=["second", "first"])
def test_the_faster_way_is_kept_wherever_it_is_listed(candidates):
    assert fastest(candidates, rounds=3) is _index


def test_the_first_lookup_chooses_once_for_the_process(monkeypatch):
    calls = []

    def choose():
        calls.append(1)
        return CANDIDATES[-1]

    monkeypatch.setattr(lookup_module, "_gather", None)
    monkeypatch.setattr(lookup_module, "fastest", choose)
    table = np.arange(256, dtype=np.float32)
    indices = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(lookup(table, indices), table)
    np.testing.assert_array_equal(lookup(table, indices[::-1]), table[::-1])
    assert calls == [1] and lookup_module._gather is CANDIDATES[-1]
