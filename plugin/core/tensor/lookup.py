"""Table lookups by 8- and 16-bit indices (`table[indices]`), at about twice the speed of a plain np.take.

np.take turns 16-bit indices into 64-bit ones for the whole array first (8 bytes per value, far more than the CPU's
cache holds), and with its default mode it checks every index and writes through a temporary copy of `out`. Here
the indices become 64-bit a cache-sized chunk at a time, in a buffer each thread keeps, and nothing is checked
(mode "clip"): a table of 2**bits entries holds every index of that many bits, so nothing is ever clipped.

How a chunk is gathered depends on the numpy build. np.take copies each value through a call to memmove where the
compiler did not inline its per-size copies: Debian trixie's numpy 2.2 (what QGIS 3.40 runs there) takes ~4x the
time of indexing, while numpy's own wheels and Debian bookworm's 1.24 take ~0.7x. The first lookup of a process
times both ways on one chunk and keeps the faster; a run makes that choice (`prepare()`) before its worker threads
start, so that the timing is not disturbed by them.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np

CHUNK = 65536  # indices per step: 512 kB as intp, within a core's L2 cache
_buffers = threading.local()

Gather = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def _take(table: np.ndarray, wide: np.ndarray, out: np.ndarray) -> None:
    np.take(table, wide, out=out, mode="clip")


def _index(table: np.ndarray, wide: np.ndarray, out: np.ndarray) -> None:
    out[...] = table[wide]


CANDIDATES: tuple[Gather, ...] = (_take, _index)
_gather: Optional[Gather] = None
_choosing = threading.Lock()


def fastest(candidates: tuple[Gather, ...] = CANDIDATES, rounds: int = 5) -> Gather:
    """The candidate that gathers one chunk of scattered indices from a float16 table fastest (best of `rounds`)."""
    table = np.zeros(1 << 16, np.float16)
    wide = np.arange(CHUNK, dtype=np.intp) * 40503 % (1 << 16)  # every index once, scattered over the table
    out = np.empty(CHUNK, np.float16)
    best: dict[Gather, float] = {}
    for _ in range(rounds):
        for gather in candidates:
            start = time.perf_counter()
            gather(table, wide, out)
            seconds = time.perf_counter() - start
            best[gather] = min(seconds, best.get(gather, seconds))
    return min(candidates, key=best.__getitem__)


def prepare() -> Gather:
    """The way this process gathers its chunks: chosen at the first call, kept from then on."""
    global _gather
    with _choosing:
        if _gather is None:
            _gather = fastest()
        return _gather


def lookup(table: np.ndarray, indices: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """`table[indices]`, in `out` when given (C-contiguous, the indices' shape, the table's dtype).

    `table` is 1-D with one entry per value of the indices' unsigned dtype (256 for uint8, 65536 for uint16).
    """
    if indices.dtype.kind != "u" or indices.dtype.itemsize > 2:
        raise TypeError(f"indices are {indices.dtype}; uint8 or uint16 is needed")
    if table.ndim != 1 or len(table) != 1 << (8 * indices.dtype.itemsize):
        raise ValueError(f"a table for {indices.dtype} indices needs {1 << (8 * indices.dtype.itemsize)} entries, "
                         f"not {table.shape}")
    if out is None:
        out = np.empty(indices.shape, table.dtype)
    elif out.shape != indices.shape or out.dtype != table.dtype or not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous, with the indices' shape and the table's dtype")
    gather = _gather or prepare()
    flat_in = np.ascontiguousarray(indices).reshape(-1)
    flat_out = out.reshape(-1)  # a view: out is C-contiguous
    buffer = getattr(_buffers, "intp", None)
    if buffer is None:
        buffer = _buffers.intp = np.empty(CHUNK, np.intp)
    for start in range(0, flat_in.size, CHUNK):
        stop = min(start + CHUNK, flat_in.size)
        wide = buffer[: stop - start]
        np.copyto(wide, flat_in[start:stop], casting="safe")
        gather(table, wide, flat_out[start:stop])
    return out
