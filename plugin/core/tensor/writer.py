"""The tensor transport's outputs: the stitched scores of each row band written as class-map rows (and
optional water-probability rows) into temporary GeoTIFFs, moved into place together at the end.

The rows go to the files in whole rows of the files' blocks. GDAL compresses and writes a write of whole blocks at
once, during the run; it keeps the blocks of any other write in its cache and compresses them all when the file is
closed, after the last tile (a 10980x10980 water-probability map: seconds). The rows of a band short of a whole row
of blocks wait for the next band's (`_Held`); the map's last rows end the last row of blocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..classes import NODATA
from ..errors import OutputError
from ..model_spec import ModelSpec
from ..output import AtomicOutputs, output_profile, verify_written, write_failed
from ..provenance import describe_map
from ..stats import StatsAccumulator
from . import scores as tile_scores

if TYPE_CHECKING:
    from ..area_of_interest import Area

log = logging.getLogger("floodmapper.tensor")

PROBABILITY_NODATA = -1.0


@dataclass
class _Held:
    """Rows y0.. of each file (classes, then probability), not yet written: fewer than a row of blocks."""

    y0: int
    rows: list[np.ndarray]

    @property
    def end(self) -> int:
        return self.y0 + self.rows[0].shape[0]


class MapWriter:
    """Class (and probability) rows into temporary files beside the targets; commit() or discard()."""

    def __init__(self, ds: Any, output_path: str, probability_path: str, spec: ModelSpec,
                 area: Optional[Area] = None, tags: Optional[dict[str, str]] = None) -> None:
        """The maps on `ds`'s grid, or on the `area`'s (the input's grid cut to its window), with the provenance
        metadata `tags`."""
        import rasterio
        from rasterio.errors import RasterioError

        self.spec = spec
        grid = ds if area is None else area.grid(ds.crs)
        self.stats = StatsAccumulator(ds.crs.to_wkt() if ds.crs else None, grid.transform)
        self.outputs = AtomicOutputs([output_path] + ([probability_path] if probability_path else []),
                                     keep=ds.name)
        self.files: list[Any] = []
        self.held: Optional[_Held] = None
        try:
            # w+: rows written can be read back, to be kept for a run that goes on later (checkpoint.py)
            self.files.append(rasterio.open(self.outputs.temps[0], "w+", **output_profile(grid)))
            if probability_path:
                self.files.append(rasterio.open(self.outputs.temps[1], "w+", **output_profile(
                    grid, dtype="float32", nodata=PROBABILITY_NODATA)))
            for f, band in zip(self.files, ("water", "water probability")):
                describe_map(f, tags, band)
        except RasterioError as exc:
            self.discard()
            raise OutputError(f"Cannot create the output next to {output_path}: {exc}.",
                              "Choose a folder you can write to, with free space.") from None
        except BaseException:  # an interrupt (Ctrl+C) while the files are made: they go too
            self.discard()
            raise

    def sink(self, row0: int, scores: np.ndarray, valid: np.ndarray) -> None:
        """Rows row0.. of the map from their blended scores [channels, rows, width] (scores.py) and validity."""
        from rasterio.windows import Window

        spec = self.spec
        h, w = valid.shape
        window = Window(0, row0, w, h)
        classes = tile_scores.water(scores, spec).astype(np.uint8)  # CLASS_WATER = 1, CLASS_NOT_WATER = 0
        self.stats.add(window, classes, valid)
        invalid = None if valid.all() else ~valid  # rows without nodata need no masking pass
        if invalid is not None:
            classes[invalid] = NODATA
        prob = None
        if len(self.files) > 1:
            prob = tile_scores.probability(scores, spec)
            if invalid is not None:
                prob[invalid] = PROBABILITY_NODATA
        self._put(row0, [classes] if prob is None else [classes, prob])

    def read_rows(self, y0: int, y1: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Map rows y0..y1-1 as made so far: classes (nodata 255) and, when written, the water probability."""
        from rasterio.windows import Window

        held = self.held
        split = y1 if held is None else max(y0, min(y1, held.y0))  # rows from split on are held, not in the files
        rows = [f.read(1, window=Window(0, y0, f.width, split - y0)) for f in self.files]
        if split < y1:
            rows = [np.concatenate([r, h[split - held.y0:y1 - held.y0]]) for r, h in zip(rows, held.rows)]
        return rows[0], rows[1] if len(rows) > 1 else None

    def replay(self, y0: int, classes: np.ndarray, probability: Optional[np.ndarray]) -> None:
        """Rows an earlier run of the same job made, written as they were (their figures: `stats.restore`)."""
        self._put(y0, [classes] if len(self.files) < 2 or probability is None else [classes, probability])

    def _put(self, y0: int, rows: list[np.ndarray]) -> None:
        """Rows y0.. of each file, written up to the last whole row of blocks they complete; the rest held."""
        held, self.held = self.held, None
        if held is not None and held.end == y0 and len(held.rows) == len(rows):
            y0, rows = held.y0, [np.concatenate([h, r]) for h, r in zip(held.rows, rows)]
        elif held is not None:  # not followed by its next rows: written as they are
            self._write(held.y0, held.rows)
        end = y0 + rows[0].shape[0]
        block = self.files[0].block_shapes[0][0]
        cut = end if end >= self.files[0].height else max(y0, end - end % block)
        if cut > y0:
            self._write(y0, [r[:cut - y0] for r in rows])
        if cut < end:
            self.held = _Held(cut, [r[cut - y0:] for r in rows])

    def _write(self, y0: int, rows: list[np.ndarray]) -> None:
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        try:
            for f, r in zip(self.files, rows):
                f.write(r, 1, window=Window(0, y0, r.shape[1], r.shape[0]))
        except (RasterioError, OSError) as exc:
            raise write_failed(self.outputs.targets[0], exc) from None

    def commit(self) -> None:
        from rasterio.errors import RasterioError

        try:
            if self.held is not None:  # rows that did not reach the map's end (none when every band came)
                held, self.held = self.held, None
                self._write(held.y0, held.rows)
            for f in self.files:
                f.close()
        except OutputError:
            self.discard()
            raise
        except (RasterioError, OSError) as exc:
            self.discard()
            raise write_failed(self.outputs.targets[0], exc) from None
        self.files = []
        try:
            for tmp, target in zip(self.outputs.temps, self.outputs.targets):
                verify_written(tmp, target)
        except OutputError:
            self.discard()
            raise
        self.outputs.commit()

    def discard(self) -> None:
        """Remove the temporary files. Closing first may fail on a full disk; the files go either way."""
        from rasterio.errors import RasterioError

        self.held = None
        for f in self.files:
            try:
                f.close()
            except (RasterioError, OSError) as exc:  # the error being raised already says what failed
                log.debug("closing a discarded output failed: %s", exc)
        self.files = []
        self.outputs.discard()
