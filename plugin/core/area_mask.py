"""Which pixels of the area are mapped: data in every used band, inside the mask polygons, not cloud.

One pass over the area's window, block by block: the input's own validity and the values the QGIS layer adds
to its nodata (layer_nodata.py), the polygons rasterized on the block's grid (a pixel is inside when its centre
is) and the cloud raster brought onto it with nearest (rasterio.warp.reproject, any CRS and resolution). The
result is a bit mask the transports read, and the area's pixel figures (pixels with data, of them cloud).
Nothing left to map is an error, before any request.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Optional

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import transform as window_transform

from .area_of_interest import Area, AreaMask
from .cloud_values import DEFAULT_CLOUD_VALUES, MAX_SCL_CLASS, format_values
from .errors import Cancelled, InputError
from .layer_nodata import covered, describe, used
from .raster import RasterInfo, grid_bounds, has_valid_pixels, iter_windows, valid_mask

log = logging.getLogger("floodmapper.area")

CancelFn = Callable[[], bool]
WarnFn = Callable[[str], None]


def build_mask(info: RasterInfo, area: Area, bands: list[int], cancel: Optional[CancelFn] = None,
               warn: Optional[WarnFn] = None) -> Area:
    """The area with its mask and figures; InputError when no pixel of it is left to map.

    Without polygons, a cloud mask or the layer's no data values, the input's nodata is all there is: only check
    (up to the first block with data) that the window has data, and leave the mask out.
    """
    warn = warn or (lambda message: None)
    area = replace(area, layer_nodata=used(area.layer_nodata, bands))
    cloud = _open_cloud(info, area, warn) if area.cloud_path else None
    if not area.polygons and cloud is None and not area.layer_nodata:
        area = replace(area, cloud_path="")
        if not area.whole and not has_valid_pixels(info.path, bands, cancel, window=area.window):
            raise InputError(f"Every pixel of the area ({area.width}×{area.height} px) is nodata in the bands "
                             f"used ({[b + 1 for b in bands]}).",
                             "Choose an extent over the raster's data, or check its nodata value.")
        return area
    try:
        return _masked(info, area, bands, cloud, cancel, warn)
    finally:
        if cloud is not None:
            cloud.close()


def _masked(info: RasterInfo, area: Area, bands: list[int], cloud, cancel: Optional[CancelFn],
            warn: WarnFn) -> Area:
    from rasterio.features import rasterize

    mask = AreaMask(area.width, area.height)
    inside_total = data_total = cloud_total = layer_nodata_total = 0
    used_bands = sorted({b + 1 for b in bands})
    seen: set[float] = set()  # cloud-raster values met (a few), to tell a 0/1 mask given the SCL values
    with rasterio.open(info.path) as src:
        for block in iter_windows(area.width, area.height):
            if cancel is not None and cancel():
                raise Cancelled()
            transform = window_transform(block, area.transform)
            shape = (int(block.height), int(block.width))
            if area.polygons:
                inside = rasterize(area.polygons, out_shape=shape, transform=transform, fill=0, default_value=1,
                                   dtype="uint8").astype(bool)
                inside_total += int(inside.sum())
                if not inside.any():
                    continue
            else:
                inside = np.ones(shape, dtype=bool)
            data = inside & valid_mask(src, bands, area.on_input(block))
            if area.layer_nodata:
                left_out = data & covered(area.layer_nodata, used_bands,
                                          src.read(used_bands, window=area.on_input(block)))
                layer_nodata_total += int(left_out.sum())
                data &= ~left_out
            mapped = data
            if cloud is not None:
                values = _cloud_values(cloud, info, area, transform, shape)
                if len(seen) < 16:
                    seen.update(np.unique(values[data & np.isfinite(values)])[:16].tolist())
                cloudy = data & _is_cloud(values, area)
                cloud_total += int(cloudy.sum())
                mapped = data & ~cloudy
            data_total += int(data.sum())
            mask.write(block, mapped)
    if area.polygons and inside_total == 0:
        raise InputError("The mask polygons cover no pixel centre of the area mapped (they lie between pixel "
                         "centres, or are smaller than a pixel).",
                         "Choose larger polygons, or leave MASK empty and set EXTENT to the area instead.")
    if data_total == 0:
        where = "inside the mask polygons" if area.polygons else f"of the area ({area.width}×{area.height} px)"
        fix = "Choose polygons over the raster's data" if area.polygons else "Choose an area over the raster's data"
        if area.layer_nodata:
            raise InputError(f"Every pixel {where} is nodata in the bands used ({[b + 1 for b in bands]}), "
                             f"counting the layer's additional no data values ({describe(area.layer_nodata)}).",
                             fix + ", or check those values (Layer Properties ▸ Transparency).")
        raise InputError(f"Every pixel {where} is nodata in the bands used ({[b + 1 for b in bands]}).",
                         fix + ", or check its nodata value.")
    if cloud is not None:
        if cloud_total == data_total:
            raise InputError(f"Every pixel of the area with data is cloud ({area.cloud_rule} of the cloud mask): "
                             "there is nothing to map.",
                             "Choose a clearer scene or another area, or check CLOUD_VALUES (1 for a 0/1 mask).")
        if (cloud_total == 0 and seen and seen <= {0.0, 1.0} and 1.0 not in area.cloud_values
                and not area.cloud_bands.bits):
            warn(f"The cloud mask holds only 0 and 1 over the area and no pixel has a cloud value "
                 f"({format_values(area.cloud_values)}), so nothing was masked as cloud. For a 0/1 cloud mask, "
                 "set CLOUD_VALUES=1.")
        elif (not area.cloud_bands.bits and area.cloud_values == DEFAULT_CLOUD_VALUES
              and any(v > MAX_SCL_CLASS for v in seen)):
            warn(f"The cloud mask's values (e.g. {format_values(sorted(seen)[-3:])}) are no Sentinel-2 scene "
                 f"classes (0 to 11), which the default cloud values ({format_values(area.cloud_values)}) are: "
                 + ("nothing was masked as cloud. " if cloud_total == 0 else
                    f"the {cloud_total} pixels masked as cloud merely equal them. ")
                 + "For the bit flags of a quality band whose file name no longer says what it is, give its cloud "
                 "bits: CLOUD_VALUES=bits:1,2,3,4 for Landsat QA_PIXEL, bits:1-3 for HLS Fmask, bits:10,11 for "
                 "Sentinel-2 QA60. A cloud probability (0-100) needs a threshold first (Raster calculator, e.g. "
                 "\"probability@1\" >= 40) and CLOUD_VALUES=1. Else give its cloud values.")
    return replace(area, mask=mask, data_pixels=data_total, cloud_pixels=cloud_total,
                   layer_nodata_pixels=layer_nodata_total)


# ------------------------------------------------------------------------------------------- the cloud mask
def _open_cloud(info: RasterInfo, area: Area, warn: WarnFn):
    """The cloud raster, open; None (with a warning) when it does not reach the area."""
    from rasterio.warp import transform_bounds

    try:
        cloud = rasterio.open(area.cloud_path)
    except RasterioError as exc:
        raise InputError(f"Cannot open the cloud mask '{area.cloud_path}': {str(exc).rstrip('.')}.",
                         "Choose a raster GDAL can read (e.g. the scene's SCL band), or leave CLOUD_MASK empty.") \
            from None
    try:
        if (cloud.crs is None) != (info.crs is None):
            raise InputError(
                f"The cloud mask '{area.cloud_path}' " + ("has no CRS and the raster has one" if cloud.crs is None
                                                          else "has a CRS and the raster has none")
                + ", so it cannot be brought onto the raster's grid.",
                "Assign the missing CRS (Raster > Projections > Assign Projection) and run again.")
        left, bottom, right, top = cloud.bounds
        if cloud.crs is not None:
            left, bottom, right, top = transform_bounds(cloud.crs, info.crs, left, bottom, right, top)
        xmin, ymin, xmax, ymax = grid_bounds(area.transform, area.width, area.height)
        if right <= xmin or left >= xmax or top <= ymin or bottom >= ymax:
            warn(f"The cloud mask '{area.cloud_path}' does not overlap the area mapped, so no pixel is masked as "
                 "cloud. Check that it belongs to this scene.")
            cloud.close()
            return None
        if left > xmin or right < xmax or bottom > ymin or top < ymax:
            warn(f"The cloud mask '{area.cloud_path}' covers only part of the area mapped; the pixels outside it "
                 "are mapped as if clear.")
        return cloud
    except BaseException:
        cloud.close()
        raise


def _is_cloud(values: np.ndarray, area: Area) -> np.ndarray:
    """Where the cloud raster's values mark cloud: one of the cloud values, or any cloud bit set."""
    bits = area.cloud_bands.bits
    if not bits:
        return np.isin(values, area.cloud_values)
    flags = np.where(np.isfinite(values), values, 0).astype(np.int64)
    return (flags & sum(1 << b for b in bits)) != 0


def _cloud_values(cloud, info: RasterInfo, area: Area, transform, shape: tuple[int, int]) -> np.ndarray:
    """The cloud raster's values on a block of the input's grid, nearest; NaN where it has no value. Its cloud
    band, or its flag bands packed as bits 0, 1, … (a flag band that the raster lacks stays 0)."""
    bands = area.cloud_bands.bands
    if len(bands) == 1:
        return _cloud_band(cloud, bands[0], info, transform, shape)
    packed, seen = np.zeros(shape), np.zeros(shape, dtype=bool)
    for bit, band in enumerate(bands):
        if band <= cloud.count:
            values = _cloud_band(cloud, band, info, transform, shape)
            seen |= np.isfinite(values)
            packed += np.where(np.isfinite(values) & (values != 0), float(1 << bit), 0.0)
    return np.where(seen, packed, np.nan)


def _cloud_band(cloud, band: int, info: RasterInfo, transform, shape: tuple[int, int]) -> np.ndarray:
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    out = np.full(shape, np.nan, dtype=np.float64)
    if cloud.crs is None:  # neither has a CRS: both grids are in the same (unknown) coordinates
        reproject(rasterio.band(cloud, band), out, src_transform=cloud.transform, dst_transform=transform,
                  dst_nodata=np.nan, resampling=Resampling.nearest)
    else:
        reproject(rasterio.band(cloud, band), out, dst_transform=transform, dst_crs=info.crs, dst_nodata=np.nan,
                  resampling=Resampling.nearest)
    return out
