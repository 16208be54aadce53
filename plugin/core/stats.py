"""Water statistics of a class map: pixel counts, and the water area from each pixel's area in m²."""

from __future__ import annotations

import math
import re
from typing import Optional, Union

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from .classes import CLASS_FLOOD, CLASS_PERMANENT, NODATA
from .jobs import Stats
from .raster import iter_windows

_ELLIPSOID = re.compile(r'(?:SPHEROID|ELLIPSOID)\["[^"]*",\s*([0-9.eE+-]+),\s*([0-9.eE+-]+)')
WGS84 = (6378137.0, 298.257223563)


def _ellipsoid(crs: CRS) -> tuple[float, float]:
    """(semi-major axis in metres, eccentricity) of the CRS's ellipsoid; WGS84 if the WKT does not say."""
    match = _ELLIPSOID.search(crs.to_wkt())
    a, inv_f = (float(match.group(1)), float(match.group(2))) if match else WGS84
    f = 1.0 / inv_f if inv_f else 0.0
    return a, math.sqrt(max(f * (2.0 - f), 0.0))


def _authalic_q(phi: np.ndarray, e: float) -> np.ndarray:
    """q(φ) of the authalic latitude: the area from the equator to φ per radian of longitude is a²·q/2."""
    s = np.sin(phi)
    if e < 1e-12:
        return 2.0 * s
    es = e * s
    return (1.0 - e * e) * (s / (1.0 - es * es) - np.log((1.0 - es) / (1.0 + es)) / (2.0 * e))


class PixelArea:
    """Area in m² of the pixels of a window: exact on the ellipsoid for geographic CRSs, not degrees²."""

    def __init__(self, crs_wkt: Optional[str], transform: Affine) -> None:
        self.transform = transform
        self.known = bool(crs_wkt)
        self.constant: Optional[float] = None
        if not crs_wkt:
            return
        crs = CRS.from_wkt(crs_wkt)
        self.geographic = crs.is_geographic
        if not self.geographic:
            _, factor = crs.linear_units_factor
            self.constant = abs(transform.determinant) * factor * factor
            return
        _, to_radians = crs.units_factor
        self.to_rad = float(to_radians) if to_radians else math.pi / 180.0
        self.a, self.e = _ellipsoid(crs)
        self.north_up = transform.b == 0 and transform.d == 0

    def rows(self, window: Window) -> Union[float, np.ndarray]:
        """Pixel area for the window: a scalar, a (rows, 1) column (north-up geographic) or a full array."""
        if not self.known:
            return float("nan")
        if self.constant is not None:
            return self.constant
        t = self.transform
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if self.north_up:
            edges = (t.f + t.e * np.arange(r0, r0 + h + 1, dtype="float64")) * self.to_rad
            edges = np.clip(edges, -math.pi / 2, math.pi / 2)
            q = _authalic_q(edges, self.e)
            dlon = abs(t.a) * self.to_rad
            return (0.5 * self.a * self.a * dlon * np.abs(np.diff(q)))[:, None]
        # Rotated grid (rare): local ellipsoid scale at each pixel centre times the pixel's angular area.
        rows, cols = np.mgrid[r0 : r0 + h, c0 : c0 + w] + 0.5
        lat = (t.d * cols + t.e * rows + t.f) * self.to_rad
        s2 = np.sin(lat) ** 2
        e2 = self.e * self.e
        meridional = self.a * (1 - e2) / (1 - e2 * s2) ** 1.5
        normal = self.a / np.sqrt(1 - e2 * s2)
        return abs(t.determinant) * self.to_rad**2 * meridional * normal * np.cos(lat)


    def of_polygon(self, rings: list[list[tuple[float, float]]], pixels: int) -> float:
        """Area in m² of a polygon traced along this grid's pixel edges (exterior ring first, then holes) of
        `pixels` pixels: the same as the sum of its pixels' areas."""
        if not self.known:
            return float("nan")
        if self.constant is not None:
            return pixels * self.constant
        if not self.north_up:  # rotated geographic grid (rare): the pixel area where the polygon starts
            x, y = rings[0][0]
            col, row = ~self.transform * (x, y)
            return pixels * float(np.mean(self.rows(Window(max(int(col), 0), max(int(row), 0), 1, 1))))
        # Green's theorem on the authalic sphere: along an edge the area to the equator changes by a²·q(φ)/2 per
        # radian of longitude; pixel edges run along meridians (no change) and parallels (φ constant).
        total = 0.0
        for i, ring in enumerate(rings):
            xy = np.asarray(ring, dtype="float64") * self.to_rad
            lon, lat = xy[:, 0], np.clip(xy[:, 1], -math.pi / 2, math.pi / 2)
            q = _authalic_q(lat, self.e)
            ring_m2 = abs(float(np.sum(np.diff(lon) * (q[:-1] + q[1:]) / 2.0))) * 0.5 * self.a * self.a
            total += ring_m2 if i == 0 else -ring_m2
        return total


def area_of(mask: np.ndarray, cell: Union[float, np.ndarray], count: Optional[int] = None) -> float:
    """m² of the pixels `mask` holds, with `cell` the window's pixel areas from PixelArea.rows: a scalar, a
    (rows, 1) column (each row's pixels counted, then multiplied by its area) or a full array. `count`: the
    pixels `mask` holds, when the caller has counted them already."""
    if np.isscalar(cell):
        return (int(np.count_nonzero(mask)) if count is None else count) * float(cell)
    if cell.shape[1] == 1:
        return float(np.count_nonzero(mask, axis=1) @ cell[:, 0])
    return float((mask * cell).sum())


class StatsAccumulator:
    def __init__(self, crs_wkt: Optional[str], transform: Affine) -> None:
        self.area = PixelArea(crs_wkt, transform)
        self.water = 0
        self.valid = 0
        self.water_m2 = 0.0

    def add(self, window: Window, classes: np.ndarray, valid: np.ndarray) -> None:
        water = valid & ((classes == CLASS_FLOOD) | (classes == CLASS_PERMANENT))  # both are water
        n_water = int(np.count_nonzero(water))  # counts bytes, where sum() would add them up as integers
        self.water += n_water
        self.valid += int(np.count_nonzero(valid))
        self.water_m2 += area_of(water, self.area.rows(window), n_water)

    def state(self) -> dict:
        """The figures so far, as JSON-able values (kept with a run's finished rows)."""
        return {"water": self.water, "valid": self.valid, "water_m2": self.water_m2}

    def restore(self, state: dict) -> None:
        """The figures an earlier accumulator of the same grid had (`state()` then)."""
        self.water, self.valid, self.water_m2 = int(state["water"]), int(state["valid"]), float(state["water_m2"])

    def result(self) -> Stats:
        fraction = self.water / self.valid if self.valid else 0.0
        area = self.water_m2 / 1e6 if self.area.known else float("nan")
        return Stats(self.water, self.valid, fraction, area)


def compute_stats(path: str) -> Stats:
    """Water/valid pixel counts and water area of a class raster (0/1 or 0/1/2, nodata 255) on disk."""
    with rasterio.open(path) as src:
        acc = StatsAccumulator(src.crs.to_wkt() if src.crs else None, src.transform)
        nodata = NODATA if src.nodata is None else src.nodata
        for window in iter_windows(src.width, src.height):
            data = src.read(1, window=window)
            acc.add(window, data, data != nodata)
    return acc.result()
