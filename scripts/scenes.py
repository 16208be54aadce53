"""Synthetic Sentinel-2-like scenes with a known water mask, for training the demo model and for tests.

Real flood rasters with pixel-exact truth are large and licensed; a generator that mixes measured
surface-reflectance spectra gives scenes whose truth is known exactly, in any size and CRS, so the
model can be trained and checked end to end offline. Everything is decided by `seed`, so a test can
name a scene by its seed and get the same pixels on every machine.

What a scene holds: a parcel mosaic of vegetation, crops, bare soil and urban land (per-parcel and
per-scene brightness variation, smooth texture); meandering rivers 3-30 px wide; lakes with wavy
shores; ponds of a few pixels; flooded fields (turbid water with some emergent vegetation) near the
rivers; opaque clouds with short soft edges; sensor noise. Pixels on a water edge are linear
mixtures of water and land spectra, weighted by the covered area, and count as water when at least
half of the pixel is covered (and no cloud covers it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import numpy as np

# Sentinel-2 MSI band order in L1C/L2A products, and the six bands Sen1Floods11 models use.
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S1F11_BANDS = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
#: positions of the Sen1Floods11 bands (B02, B03, B04, B8A, B11, B12) in a 13-band S2 file
S1F11_INDICES_IN_S2 = (1, 2, 3, 8, 11, 12)

# Surface reflectance (0-1) per S2 band, typical of values measured over each cover type
# (clear lake water, sediment-laden flood water, dense vegetation, green crops, dry bare soil,
# roofs/asphalt mix, thick cumulus). B10 (cirrus, 1375 nm) is near zero except over high clouds.
SPECTRA = {
    #               B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B10    B11    B12
    "clear_water": (0.060, 0.055, 0.045, 0.025, 0.018, 0.012, 0.010, 0.008, 0.007, 0.004, 0.001, 0.004, 0.003),
    "turbid_water": (0.080, 0.085, 0.110, 0.115, 0.100, 0.060, 0.050, 0.045, 0.040, 0.015, 0.001, 0.020, 0.012),
    "vegetation": (0.030, 0.030, 0.060, 0.035, 0.100, 0.280, 0.340, 0.360, 0.370, 0.120, 0.004, 0.180, 0.090),
    "crops": (0.045, 0.050, 0.085, 0.070, 0.130, 0.220, 0.260, 0.280, 0.290, 0.100, 0.004, 0.240, 0.150),
    "bare_soil": (0.090, 0.100, 0.140, 0.190, 0.220, 0.240, 0.260, 0.270, 0.280, 0.100, 0.006, 0.340, 0.270),
    "urban": (0.110, 0.115, 0.125, 0.135, 0.150, 0.165, 0.175, 0.185, 0.190, 0.080, 0.006, 0.220, 0.190),
    "cloud": (0.480, 0.470, 0.470, 0.480, 0.490, 0.500, 0.510, 0.510, 0.510, 0.300, 0.050, 0.380, 0.280),
}
LAND_CLASSES = ("vegetation", "crops", "bare_soil", "urban")
LAND_PROBS = (0.34, 0.34, 0.16, 0.16)
_WHOLE = (slice(None), slice(None))

BandSet = str  # "s1f11" | "s2l1c"
PathLike = Union[str, Path]


def band_names(bands: BandSet) -> tuple[str, ...]:
    """Band descriptions written to the GeoTIFF for a band set."""
    if bands == "s1f11":
        return S1F11_BANDS
    if bands == "s2l1c":
        return S2_BANDS
    raise ValueError(f"bands={bands!r} is not a known band set; use 's1f11' (6 bands) or 's2l1c' (13 bands)")


def _band_index(bands: BandSet) -> list[int]:
    band_names(bands)
    return list(S1F11_INDICES_IN_S2) if bands == "s1f11" else list(range(len(S2_BANDS)))


# ----------------------------------------------------------------------------------------------
# building blocks


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Fractal value noise (zero mean, about unit std): smooth structure without scipy."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        c = max(cell, 2.0)
        gh, gw = int(h / c) + 3, int(w / c) + 3
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        ys = np.arange(h, dtype=np.float32) / c + rng.uniform(0, 1)
        xs = np.arange(w, dtype=np.float32) / c + rng.uniform(0, 1)
        y0 = ys.astype(np.int64)
        x0 = xs.astype(np.int64)
        fy = ys - y0
        fx = xs - x0
        fy = (fy * fy * (3 - 2 * fy))[:, None]
        fx = (fx * fx * (3 - 2 * fx))[None, :]
        g00 = grid[y0][:, x0]
        g01 = grid[y0][:, x0 + 1]
        g10 = grid[y0 + 1][:, x0]
        g11 = grid[y0 + 1][:, x0 + 1]
        out += amp * ((g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy)
        total += amp * amp
        amp *= 0.5
        cell /= 2.0
    return out / math.sqrt(total)


def _parcels(rng: np.random.Generator, h: int, w: int, size: float):
    """Jittered-grid Voronoi parcels: label per pixel, and signed distance to the parcel border.

    Returns (label, border, seeds, neighbour): `border` is the distance in pixels from the pixel
    centre to the bisector with the nearest other parcel (`neighbour`), positive inside.
    """
    gh, gw = int(math.ceil(h / size)) + 1, int(math.ceil(w / size)) + 1
    sy = (np.arange(gh)[:, None] + rng.uniform(0.1, 0.9, (gh, gw))) * size
    sx = (np.arange(gw)[None, :] + rng.uniform(0.1, 0.9, (gh, gw))) * size
    yy = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xx = np.arange(w, dtype=np.float64)[None, :] + 0.5
    cy = np.minimum((yy / size).astype(np.int64), gh - 1)
    cx = np.minimum((xx / size).astype(np.int64), gw - 1)
    best = np.full((h, w), np.inf)
    second = np.full((h, w), np.inf)
    best_id = np.zeros((h, w), np.int64)
    second_id = np.zeros((h, w), np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            iy = np.clip(cy + dy, 0, gh - 1)
            ix = np.clip(cx + dx, 0, gw - 1)
            iy2, ix2 = np.broadcast_arrays(iy, ix)
            pid = iy2 * gw + ix2
            d = (yy - sy[iy2, ix2]) ** 2 + (xx - sx[iy2, ix2]) ** 2
            valid = ~((iy + 0 != cy + dy) | (ix + 0 != cx + dx))  # clipped duplicates at the edges
            d = np.where(valid, d, np.inf)
            closer = d < best
            mid = (~closer) & (d < second) & (pid != best_id)
            second = np.where(closer, best, np.where(mid, d, second))
            second_id = np.where(closer, best_id, np.where(mid, pid, second_id))
            best = np.where(closer, d, best)
            best_id = np.where(closer, pid, best_id)
    s1 = np.stack([sy.ravel()[best_id], sx.ravel()[best_id]])
    s2 = np.stack([sy.ravel()[second_id], sx.ravel()[second_id]])
    sep = np.sqrt(((s1 - s2) ** 2).sum(0)) + 1e-9
    border = (second - best) / (2 * sep)
    seeds = np.stack([sy.ravel(), sx.ravel()], 1)
    return best_id, border.astype(np.float32), seeds, second_id


def _cover(sd: np.ndarray) -> np.ndarray:
    """Area of a pixel covered by a shape, from the signed distance (px, negative inside) of its centre."""
    return np.clip(0.5 - sd, 0.0, 1.0)


def _river(rng: np.random.Generator, h: int, w: int, sd: np.ndarray) -> np.ndarray:
    """Draw one meandering river into the signed-distance map `sd` (min-combined); returns its centreline."""
    side = rng.integers(4)
    if side == 0:  # enters from the top, flows down
        p = np.array([-5.0, rng.uniform(0.15, 0.85) * w])
        base = math.pi / 2
    elif side == 1:
        p = np.array([h + 5.0, rng.uniform(0.15, 0.85) * w])
        base = -math.pi / 2
    elif side == 2:
        p = np.array([rng.uniform(0.15, 0.85) * h, -5.0])
        base = 0.0
    else:
        p = np.array([rng.uniform(0.15, 0.85) * h, w + 5.0])
        base = math.pi
    base += rng.uniform(-0.35, 0.35)
    amp = rng.uniform(0.3, 0.9)
    wavelength = rng.uniform(80, 260)
    phase = rng.uniform(0, 2 * math.pi)
    hw0 = rng.uniform(1.5, 15.0)  # half width: rivers 3-30 px wide
    step = 3.0
    pts, hws = [p.copy()], [hw0]
    s, drift, hw = 0.0, 0.0, hw0
    for _ in range(int(6 * (h + w) / step)):
        drift = 0.97 * drift + rng.normal(0, 0.04)
        heading = base + amp * math.sin(2 * math.pi * s / wavelength + phase) + drift
        p = p + step * np.array([math.sin(heading), math.cos(heading)])
        s += step
        hw = float(np.clip(hw + rng.normal(0, 0.15), max(1.5, 0.6 * hw0), min(15.0, 1.5 * hw0)))
        pts.append(p.copy())
        hws.append(hw)
        if p[0] < -20 or p[0] > h + 20 or p[1] < -20 or p[1] > w + 20:
            break
    pts_a = np.array(pts)
    for (a, b), ha, hb in zip(zip(pts_a[:-1], pts_a[1:]), hws[:-1], hws[1:]):
        r = max(ha, hb) + 2
        y0 = int(max(0, math.floor(min(a[0], b[0]) - r)))
        y1 = int(min(h, math.ceil(max(a[0], b[0]) + r)))
        x0 = int(max(0, math.floor(min(a[1], b[1]) - r)))
        x1 = int(min(w, math.ceil(max(a[1], b[1]) + r)))
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1)[:, None] + 0.5
        xx = np.arange(x0, x1)[None, :] + 0.5
        ab = b - a
        t = np.clip(((yy - a[0]) * ab[0] + (xx - a[1]) * ab[1]) / float(ab @ ab), 0, 1)
        d = np.sqrt((yy - a[0] - t * ab[0]) ** 2 + (xx - a[1] - t * ab[1]) ** 2)
        sub = d - (ha + (hb - ha) * t)
        np.minimum(sd[y0:y1, x0:x1], sub, out=sd[y0:y1, x0:x1])
    return pts_a


def _blob(rng: np.random.Generator, h: int, w: int, cy: float, cx: float, r0: float) -> tuple:
    """Signed distance (approximate, px) of a wavy-shored blob, on its bounding box."""
    k = np.arange(2, 6)
    amps = rng.uniform(0.03, 0.18, k.size) / k * 2
    phases = rng.uniform(0, 2 * math.pi, k.size)
    rmax = r0 * (1 + amps.sum()) + 2
    y0, y1 = int(max(0, cy - rmax)), int(min(h, cy + rmax + 1))
    x0, x1 = int(max(0, cx - rmax)), int(min(w, cx + rmax + 1))
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1)[:, None] + 0.5 - cy
    xx = np.arange(x0, x1)[None, :] + 0.5 - cx
    theta = np.arctan2(yy, xx)
    radius = r0 * (1 + (amps[:, None, None] * np.cos(k[:, None, None] * theta + phases[:, None, None])).sum(0))
    return (slice(y0, y1), slice(x0, x1)), np.sqrt(yy**2 + xx**2) - radius


# ----------------------------------------------------------------------------------------------
# the scene


def synthesize(seed: int, width: int, height: int, bands: BandSet = "s1f11",
               flood: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The scene as arrays: (reflectance float32 [bands, height, width] in 0-1, truth uint8 0/1).

    `flood=False` gives the same place before the flood: the same land, rivers, lakes, ponds, clouds and
    noise, without the flooded fields (every random draw is made either way, so nothing else moves).
    """
    if width < 8 or height < 8:
        raise ValueError(f"scene size {width}x{height} is too small; use at least 8x8 pixels")
    rng = np.random.default_rng(seed)
    h, w = int(height), int(width)
    spectra = {k: np.asarray(v, np.float32) for k, v in SPECTRA.items()}
    scene_gain = {k: np.float32(rng.uniform(0.85, 1.15)) for k in SPECTRA}

    # land: parcel mosaic with per-parcel brightness and smooth texture
    label, border, seeds, neighbour = _parcels(rng, h, w, size=rng.uniform(40, 90))
    n_parcels = seeds.shape[0]
    parcel_class = rng.choice(len(LAND_CLASSES), size=n_parcels, p=LAND_PROBS)
    parcel_gain = rng.uniform(0.85, 1.15, n_parcels).astype(np.float32)
    land_table = np.stack([spectra[c] * scene_gain[c] for c in LAND_CLASSES])  # [4, 13]
    texture = 1 + 0.06 * _smooth_noise(rng, h, w, cell=24)
    land = land_table[parcel_class[label]] * (parcel_gain[label] * texture)[..., None]  # [h, w, 13]

    # water: signed distances of rivers, lakes and ponds; flooded parcels near rivers
    cover = np.zeros((h, w), np.float32)
    turbidity = np.zeros((h, w), np.float32)
    emergent = np.zeros((h, w), np.float32)

    def add(c: np.ndarray, turb: float, region=_WHOLE, veg: float = 0.0) -> None:
        cur = cover[region]
        take = c > cur
        turbidity[region] = np.where(take, turb, turbidity[region])
        emergent[region] = np.where(take, veg, emergent[region])
        cover[region] = np.maximum(cur, c)

    river_sd = np.full((h, w), np.inf, np.float32)
    centrelines = []
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        centrelines.append(_river(rng, h, w, river_sd))
    add(_cover(river_sd), float(rng.uniform(0.3, 1.0)))

    scale = math.sqrt(h * w) / 512.0
    for _ in range(rng.integers(0, 3)):
        got = _blob(rng, h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(15, 70) * max(scale, 0.4))
        if got is not None:
            add(_cover(got[1]), float(rng.uniform(0.0, 0.6)), got[0])
    for _ in range(int(rng.integers(2, 10) * max(scale * scale, 0.3))):
        got = _blob(rng, h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2.0, 7.0))
        if got is not None:
            add(_cover(got[1]), float(rng.uniform(0.0, 1.0)), got[0])

    # flooded fields: parcels whose seed lies near a river (or random ones when there is none)
    if centrelines:
        line = np.concatenate(centrelines)
        dist = np.sqrt(((seeds[:, None, :] - line[None, ::4, :]) ** 2).sum(-1)).min(1)
        candidates = np.flatnonzero(dist < rng.uniform(60, 140))
    else:
        candidates = np.arange(n_parcels)
    flooded = np.zeros(n_parcels, bool)
    if candidates.size:
        pick = rng.random(candidates.size) < rng.uniform(0.15, 0.5)
        flooded[candidates[pick]] = True
    flood_cover = np.zeros((h, w), np.float32)
    if flooded.any():
        inside = flooded[label]
        beside = flooded[neighbour] & ~inside
        flood_cover = np.where(inside, _cover(-border), np.where(beside, _cover(border), 0.0)).astype(np.float32)
        turb, veg = float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.0, 0.15))
        if flood:
            add(flood_cover, turb, veg=veg)

    # every scene gets some open water so a per-scene IoU means something (judged on the flooded scene, so
    # that the scene before the flood gets the same lakes)
    tries = 0
    while np.maximum(cover, flood_cover).mean() < 0.04 and tries < 6:
        got = _blob(rng, h, w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w,
                    rng.uniform(0.1, 0.25) * min(h, w))
        if got is not None:
            add(_cover(got[1]), float(rng.uniform(0.0, 0.8)), got[0])
        tries += 1

    water = (spectra["clear_water"] * scene_gain["clear_water"] * (1 - turbidity[..., None])
             + spectra["turbid_water"] * scene_gain["turbid_water"] * turbidity[..., None])
    water = water * (1 - emergent[..., None]) + spectra["crops"] * emergent[..., None]
    water = water * (1 + 0.04 * _smooth_noise(rng, h, w, cell=32))[..., None]
    refl = cover[..., None] * water + (1 - cover[..., None]) * land

    # clouds: opaque cores with a soft edge a few pixels wide
    alpha = np.zeros((h, w), np.float32)
    if rng.random() < 0.45:
        field = _smooth_noise(rng, h, w, cell=rng.uniform(40, 110))
        thr = rng.uniform(1.0, 1.8)
        alpha = np.clip((field - thr) * rng.uniform(4, 10) + 0.5, 0, 1).astype(np.float32)
        refl = alpha[..., None] * spectra["cloud"] * scene_gain["cloud"] + (1 - alpha[..., None]) * refl

    # sensor noise: additive and a little multiplicative
    refl = refl * (1 + rng.normal(0, 0.015, refl.shape).astype(np.float32))
    refl = refl + rng.normal(0, 0.003, refl.shape).astype(np.float32)
    refl = np.clip(refl, 0.0001, 1.5).astype(np.float32)

    truth = ((cover >= 0.5) & (alpha < 0.5)).astype(np.uint8)
    out = np.ascontiguousarray(np.moveaxis(refl[..., _band_index(bands)], -1, 0))
    return out, truth


def _default_transform(crs, width: int, height: int, pixel_size: Optional[float],
                       centre_lonlat: tuple[float, float]):
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.warp import transform as warp_transform

    crs = CRS.from_user_input(crs)
    if pixel_size is None:
        pixel_size = 10.0 if crs.is_projected else 1e-4  # ~10 m either way
    xs, ys = warp_transform("EPSG:4326", crs, [centre_lonlat[0]], [centre_lonlat[1]])
    x0 = xs[0] - width * pixel_size / 2
    y0 = ys[0] + height * pixel_size / 2
    return crs, from_origin(x0, y0, pixel_size, pixel_size)


def generate_scene(
    path: PathLike,
    seed: int,
    width: int,
    height: int,
    crs: str = "EPSG:32633",
    pixel_size: Optional[float] = None,
    bands: BandSet = "s1f11",
    dtype: str = "uint16",
    nodata: Optional[float] = None,
    nodata_border: int = 0,
    centre_lonlat: tuple[float, float] = (15.0, 45.0),
    offset: int = 0,
    flood: bool = True,
) -> np.ndarray:
    """Write a synthetic scene as a GeoTIFF and return its truth mask (uint8: 0 land, 1 water, 255 nodata).

    `flood=False`: the same place before the flood (synthesize).

    `dtype` uint16/int16 stores reflectance x 10000 (+ `offset`, e.g. 1000 as in S2 L1C processing
    baseline 04.00); float32 stores reflectance 0-1. `nodata_border` px on every side are set to
    `nodata` (required then) and marked 255 in the truth. Written atomically (temp file, then rename).
    """
    import rasterio

    names = band_names(bands)
    if nodata_border and nodata is None:
        raise ValueError("nodata_border needs a nodata value; pass nodata=0 (for example)")
    if nodata_border < 0 or 2 * nodata_border >= min(width, height):
        raise ValueError(f"nodata_border={nodata_border} does not fit a {width}x{height} scene")
    refl, truth = synthesize(seed, width, height, bands, flood=flood)
    if dtype in ("uint16", "int16"):
        data = np.rint(refl * 10000.0) + offset
        info = np.iinfo(dtype)
        data = np.clip(data, max(info.min, 1), info.max)
        if nodata is not None:  # a valid pixel must never read as nodata
            data[data == nodata] = nodata + 1
        data = data.astype(dtype)
    elif dtype == "float32":
        data = refl.astype(np.float32)
        if nodata is not None:
            data[data == nodata] = np.float32(nodata) + np.float32(1e-4)
    else:
        raise ValueError(f"dtype={dtype!r} is not supported; use uint16, int16 or float32")
    truth = truth.copy()
    if nodata_border:
        b = nodata_border
        border = np.ones((height, width), bool)
        border[b:-b, b:-b] = False
        data[:, border] = nodata
        truth[border] = 255
    crs_obj, transform = _default_transform(crs, width, height, pixel_size, centre_lonlat)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{seed}")
    try:
        with rasterio.open(tmp, "w", driver="GTiff", width=width, height=height, count=len(names),
                           dtype=data.dtype, crs=crs_obj, transform=transform, nodata=nodata,
                           compress="deflate", tiled=width >= 256 and height >= 256) as dst:
            dst.write(data)
            dst.descriptions = names
            dst.update_tags(FLOODMAPPER_SYNTHETIC_SEED=str(seed), FLOODMAPPER_BANDS=bands)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return truth


def write_truth(path: PathLike, truth: np.ndarray, like: PathLike) -> None:
    """Write a truth mask as a 1-band uint8 GeoTIFF georeferenced like the scene `like` (255 = nodata)."""
    import rasterio

    with rasterio.open(like) as src:
        crs, transform = src.crs, src.transform
        if (src.height, src.width) != truth.shape:
            raise ValueError(f"truth is {truth.shape[::-1]} but {like} is {src.width}x{src.height}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with rasterio.open(tmp, "w", driver="GTiff", width=truth.shape[1], height=truth.shape[0], count=1,
                           dtype="uint8", crs=crs, transform=transform, nodata=255, compress="deflate") as dst:
            dst.write(truth.astype(np.uint8), 1)
            dst.descriptions = ("water",)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Water IoU, ignoring pixels the truth marks 255 (nodata). 1.0 when neither has water."""
    valid = truth != 255
    p = (pred > 0) & valid
    t = (truth == 1) & valid
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def generate_pair(pre_path: PathLike, post_path: PathLike, seed: int, width: int, height: int,
                  **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Write one place before and during a flood (same land, rivers, lakes; flooded fields only in the second)
    on the same grid; returns (truth before, truth during). `kwargs` go to generate_scene for both."""
    pre = generate_scene(pre_path, seed, width, height, flood=False, **kwargs)
    post = generate_scene(post_path, seed, width, height, **kwargs)
    return pre, post


def flood_classes(pre_truth: np.ndarray, post_truth: np.ndarray) -> np.ndarray:
    """The flood-extent truth of a pair: 0 not water, 1 flood water (water only during), 2 permanent water
    (water before and during), 255 nodata in either."""
    classes = np.where(post_truth == 1, np.where(pre_truth == 1, 2, 1), 0).astype(np.uint8)
    classes[(pre_truth == 255) | (post_truth == 255)] = 255
    return classes


def class_iou(pred: np.ndarray, truth: np.ndarray, value: int) -> float:
    """IoU of one class (e.g. 1 = flood water, 2 = permanent water), ignoring pixels the truth marks 255."""
    valid = truth != 255
    p = (pred == value) & valid
    t = (truth == value) & valid
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def regrid_scene(src_path: PathLike, dst_path: PathLike, crs: str, pixel_size: float) -> None:
    """Write `src_path` again on another grid (another CRS and pixel size), as another sensor or product would
    deliver the same place: reflectance averaged over the new pixels, band names kept, no data (0 when the
    source names no nodata value) where the new grid reaches beyond the source."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds, resolution=pixel_size)
        nodata = 0 if src.nodata is None else src.nodata  # the corners the new grid adds have no data
        profile = src.profile.copy()
        profile.update(crs=crs, transform=transform, width=width, height=height, tiled=False, nodata=nodata)
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        dst_path = Path(dst_path)
        tmp = dst_path.with_name(f".{dst_path.name}.tmp")
        try:
            with rasterio.open(tmp, "w", **profile) as dst:
                for band in range(1, src.count + 1):
                    reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=Resampling.average,
                              src_nodata=src.nodata, dst_nodata=nodata)
                dst.descriptions = src.descriptions
                dst.update_tags(**src.tags())
            tmp.replace(dst_path)
        finally:
            if tmp.exists():
                tmp.unlink()
