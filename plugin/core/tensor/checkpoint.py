"""A long tensor run's finished rows, kept on disk so that the same job run again goes on where it stopped.

A Sentinel-2 tile takes ~30 minutes on a CPU. A run stopped by QGIS closing or crashing, a cancel, a server that
stayed away or Ctrl+C in the batch would otherwise start again from the first tile. Once a run has taken
KEEP_AFTER_S, each finished row band is kept beside the output:

    .floodmapper-resume-<fingerprint>/   (in the output's folder)
        state.json            the job's fingerprint, the next row band, the figures so far
        rows-<y0>.npy         class rows of the map (uint8, nodata 255), one file per finished band
        probability-<y0>.npy  water-probability rows (float32), when the job writes them
        carry-<row>.npz       blended scores (float32, scores.py) and validity of the rows band <row>, the next
                              one, is owed (none without overlap)

The fingerprint covers everything the rows depend on (the input file's size and time, or those of the product or
band file it was stacked from; the bands, scaling, model and spec, tiling, the area's pixels, the scores blended),
not the output's name: a flood-extent run, which maps into a temporary file, goes on too. A job that differs starts
afresh; the folder goes when its map is complete, or after STALE_AFTER_S untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

log = logging.getLogger("floodmapper.tensor")

KEEP_AFTER_S = 60.0  # a run that has taken this long keeps its finished rows
STALE_AFTER_S = 14 * 24 * 3600.0  # a kept run nobody went on with in two weeks is removed
PREFIX = ".floodmapper-resume-"
STATE = "state.json"


def fingerprint(**parts: Any) -> str:
    """A digest of what a run's rows depend on (JSON-able values; numpy arrays by their bytes)."""
    digest = hashlib.sha256()
    for key in sorted(parts):
        value = parts[key]
        digest.update(key.encode())
        if isinstance(value, np.ndarray):
            digest.update(str((value.dtype, value.shape)).encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def file_identity(path: str) -> list:
    """A local file's path, size and modification time (an edited or replaced input is another input); a URL's
    text alone."""
    try:
        st = os.stat(path)
    except OSError:
        return [path]
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


@dataclass
class Resumed:
    """What an earlier run of the same job left: the next row band, the rows done, the blend carried over."""

    next_row: int
    rows_done: int  # map rows 0 .. rows_done-1 are kept
    bands: list[int]  # the first map row of each kept file, in order
    carry: Optional[tuple[np.ndarray, np.ndarray]]
    stats: dict


class Checkpoint:
    """The kept rows of one job (by its fingerprint) in the output's folder."""

    def __init__(self, output_path: str, key: str, probability: bool) -> None:
        self.folder = os.path.join(os.path.dirname(os.path.abspath(output_path)), PREFIX + key)
        self.key = key
        self.probability = probability
        self.active = False  # rows are being kept
        self.bands: list[int] = []
        self.rows_done = 0
        remove_stale(os.path.dirname(self.folder))

    def load(self) -> Optional[Resumed]:
        """The earlier run's rows, when they are there, whole and of this job; from then on rows are kept."""
        try:
            with open(os.path.join(self.folder, STATE), encoding="utf-8") as fh:
                state = json.load(fh)
            if state.get("key") != self.key or state.get("probability") != self.probability:
                return None
            bands = [int(y0) for y0 in state["bands"]]
            for y0 in bands:
                for path in self._row_files(y0)[:2 if self.probability else 1]:
                    if not os.path.isfile(path):
                        raise FileNotFoundError(f"{os.path.basename(path)} is missing")
            carry = None
            if state.get("carry"):
                with np.load(self._carry_file(int(state["next_row"]))) as kept:
                    carry = (kept["acc"], kept["valid"])
            resumed = Resumed(int(state["next_row"]), int(state["rows_done"]), bands, carry, dict(state["stats"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if os.path.isdir(self.folder):
                log.warning("the kept rows in %s cannot be used (%s); the map is made from the start",
                            self.folder, exc)
            return None
        self.active, self.bands, self.rows_done = True, list(bands), resumed.rows_done
        return resumed

    def rows(self, y0: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The kept class (and probability) rows starting at map row `y0`."""
        files = self._row_files(y0)
        classes = np.load(files[0])
        return classes, (np.load(files[1]) if self.probability else None)

    def start(self) -> None:
        """Keep rows from now on (the folder made; an older one of this job replaced)."""
        if os.path.isdir(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
        os.makedirs(self.folder, exist_ok=True)
        self.active, self.bands, self.rows_done = True, [], 0

    def keep(self, y0: int, classes: np.ndarray, probability: Optional[np.ndarray]) -> None:
        """Map rows y0.. (written to the map already) kept; they count once `flushed` records them."""
        files = self._row_files(y0)
        _save(files[0], classes)
        if self.probability and probability is not None:
            _save(files[1], probability)

    def flushed(self, next_row: int, rows_done: int, bands: list[int],
                carry: Optional[tuple[np.ndarray, np.ndarray]], stats: dict) -> None:
        """The state after a band: written under a temporary name and moved into place, so a crash at any point
        leaves the state before or after it."""
        if carry is not None:  # named by its band: the state before this one still names its own carry
            tmp = os.path.join(self.folder, "carry.tmp.npz")
            with open(tmp, "wb") as fh:
                np.savez(fh, acc=carry[0], valid=carry[1])
            os.replace(tmp, self._carry_file(next_row))
        state = {"key": self.key, "probability": self.probability, "next_row": next_row, "rows_done": rows_done,
                 "bands": bands, "carry": carry is not None, "stats": stats, "saved": time.time()}
        tmp = os.path.join(self.folder, STATE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
        os.replace(tmp, os.path.join(self.folder, STATE))
        for row in range(max(0, next_row - 2), next_row):  # the carries the state no longer names
            try:
                os.remove(self._carry_file(row))
            except FileNotFoundError:
                pass
        self.bands, self.rows_done = list(bands), rows_done

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.active = False

    def _carry_file(self, row: int) -> str:
        return os.path.join(self.folder, f"carry-{row}.npz")

    def _row_files(self, y0: int) -> tuple[str, str]:
        return (os.path.join(self.folder, f"rows-{y0}.npy"), os.path.join(self.folder, f"probability-{y0}.npy"))


def _save(path: str, array: np.ndarray) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def remove_stale(folder: str, older_than: float = STALE_AFTER_S) -> list[str]:
    """Remove kept runs in `folder` that nobody went on with for `older_than` seconds."""
    removed = []
    now = time.time()
    try:
        names = [n for n in os.listdir(folder) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(folder, name)
        try:
            if now - os.stat(path).st_mtime >= older_than:
                shutil.rmtree(path)
                removed.append(path)
        except OSError as exc:
            log.warning("could not remove the kept rows %s: %s", path, exc)
    return removed


class KeptRows:
    """A run's side of its checkpoint: the rows an earlier run kept, put back into the new map; each finished band
    kept once the run has taken KEEP_AFTER_S (the rows written before then read back from the map)."""

    CHUNK = 512  # rows per file when the rows written before are kept all at once

    def __init__(self, checkpoint: Checkpoint, writer: Any, n_rows: int, height: int, started: float,
                 progress: Any) -> None:
        self.checkpoint = checkpoint
        self.writer = writer  # MapWriter: read_rows, replay, stats
        self.n_rows = n_rows
        self.height = height
        self.started = started
        self.progress = progress
        self.broken = False  # keeping failed once (a full disk): the run goes on without

    def resume(self) -> Optional[Resumed]:
        """The earlier run's rows and figures in the map, or None (the run starts from the first tile)."""
        resumed = self.checkpoint.load()
        if resumed is None:
            return None
        for y0 in resumed.bands:
            self.writer.replay(y0, *self.checkpoint.rows(y0))
        self.writer.stats.restore(resumed.stats)
        self.progress.info(f"Going on from an earlier run of this job that stopped: its first {resumed.rows_done} map "
                           f"rows (of {self.height}) were kept ({self.checkpoint.folder}); the tiles from row band "
                           f"{resumed.next_row + 1} of {self.n_rows} on are sent")
        return resumed

    def flushed(self, next_row: int, first: int, end: int, carry: Optional[tuple[np.ndarray, np.ndarray]]) -> None:
        """Map rows first..end-1 were written and band `next_row` is owed `carry`: kept, once worth it."""
        if self.broken:
            return
        try:
            if not self.checkpoint.active:
                if next_row >= self.n_rows or time.monotonic() - self.started < KEEP_AFTER_S:
                    return
                self.checkpoint.start()
                bands = list(range(0, end, self.CHUNK))
                for y0 in bands:
                    self.checkpoint.keep(y0, *self.writer.read_rows(y0, min(end, y0 + self.CHUNK)))
                self.progress.info(f"This run is long: its finished rows are kept in {self.checkpoint.folder}, so "
                                   "that the same job run again after a stop goes on from there")
            else:
                bands = list(self.checkpoint.bands)
                if end > first:
                    self.checkpoint.keep(first, *self.writer.read_rows(first, end))
                    bands.append(first)
            self.checkpoint.flushed(next_row, end, bands, carry, self.writer.stats.state())
        except Exception as exc:  # noqa: BLE001 - OSError, a GDAL read error: the map itself is unaffected
            self.broken = True
            self.checkpoint.remove()
            self.progress.warning(f"The finished rows cannot be kept in {self.checkpoint.folder} ({exc}); the run "
                                  "goes on, but after a stop it would start again from the first tile.")

    def stopped(self) -> str:
        """What a run that stopped leaves for the next one, said in its error ("" when nothing is kept)."""
        if not self.checkpoint.active or not self.checkpoint.rows_done:
            return ""
        return (f" Its first {self.checkpoint.rows_done} map rows (of {self.height}) are kept in "
                f"{self.checkpoint.folder}: run the same job again to go on from there.")

    def done(self) -> None:
        """The map is complete: its kept rows go."""
        self.checkpoint.remove()
