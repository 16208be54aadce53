"""The image transport's temporary copy of the input, for a server that cannot read the input as it is: the
area's window (only what is mapped is sent) or a virtual raster (the server reads a file's bytes, and cannot
follow the band files a VRT names). The model's bands, in its order, go to a GeoTIFF in a folder the server
reads; the copy is removed when the job ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Callable, Optional

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from .area_of_interest import Area, whole_area
from .errors import Cancelled, InputError, OutputError
from .image_source import url_of
from .output import OUTPUT_TILE, remove_stale_parts
from .raster import RasterInfo, iter_windows

log = logging.getLogger("floodmapper.image")

CancelFn = Callable[[], bool]


def rescaled(scale: Optional[float], offset: Optional[float]) -> bool:
    """Whether the user gave a reflectance scaling (SCALE, OFFSET), which the IOProcessor cannot apply."""
    return scale is not None or bool(offset)


def copy_reason(info: RasterInfo, area: Optional[Area], scale: Optional[float] = None,
                offset: Optional[float] = None) -> str:
    """Why the server must get a copy of the input rather than the input ("" when it reads the input)."""
    if info.driver == "VRT" or info.path.lower().endswith(".vrt"):
        return (f"'{info.path}' is a virtual raster (VRT), and the server reads a raster's bytes, without the "
                "band files a VRT names")
    if not info.is_file and not url_of(info.path):
        return (f"'{info.path}' is not a file of its own (a member of an archive, a subdataset or a database "
                "raster), and the server reads a raster file by its path")
    if area is not None and not area.whole:
        return f"only an area of the raster ({area.width}×{area.height} px) is mapped"
    if rescaled(scale, offset):
        return ("the reflectance scale or offset was set (SCALE, OFFSET), and the server's IOProcessor only "
                "divides values by 10000")
    return ""


def input_scale(info: RasterInfo, bands: list[int], area: Optional[Area]) -> float:
    """The scale the tensor transport would detect for these bands (0-based) of the area: 1e-4 or 1."""
    from .tensor.reader import detect_scale

    try:
        with rasterio.open(info.path) as src:
            return detect_scale(src, [b + 1 for b in bands], area)
    except RasterioError as exc:
        raise InputError(f"Cannot read '{info.path}': {str(exc).rstrip('.')}.",
                         "Check that the raster (and, for a VRT, every file it names) is readable.") from None


@contextlib.contextmanager
def input_copy(info: RasterInfo, area: Optional[Area], bands: list[int], folder: str,
               cancel: Optional[CancelFn] = None, scale: Optional[float] = None,
               offset: Optional[float] = None) -> Iterator[str]:
    """Write `bands` (0-based, the model's order) of the area's window to a GeoTIFF in `folder`; yield its path.

    With a `scale` (and `offset`), the copy holds reflectance = value × scale + offset, times 10000 in float32:
    what the IOProcessor divides by 10000 (it does when the image's mean is above 1) to get the reflectance
    back. Missing values (NaN) become 0 there, as the server would otherwise take the whole image's mean as NaN
    and not divide; the map's nodata still comes from the input itself.

    The name follows the temporary outputs' pattern (.NAME.XXXXXXXX.part.tif), so a copy left by a run that
    was killed is removed by a later one (output.remove_stale_parts).
    """
    area = area or whole_area(info)
    remove_stale_parts(folder)
    try:
        fd, path = tempfile.mkstemp(prefix=".floodmapper-input.", suffix=".part.tif", dir=folder)
        os.fchmod(fd, 0o644)  # a server running as another user (a mapped folder) must read it
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"Cannot write the server's copy of the input in '{folder}': {exc.strerror}.",
                          "Free some space there, or check its permissions (for a path mapping: the mapped "
                          "folder).") from None
    try:
        _write(info, area, bands, path, cancel, None if scale is None else (scale, offset or 0.0))
        yield path
    finally:
        for leftover in (path, path + ".aux.xml"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)


def _write(info: RasterInfo, area: Area, bands: list[int], path: str, cancel: Optional[CancelFn],
           scaling: Optional[tuple[float, float]] = None) -> None:
    numbers = [b + 1 for b in bands]
    nodata = {info.nodata[b] for b in bands}
    profile = {
        "driver": "GTiff", "width": area.width, "height": area.height, "count": len(bands),
        "dtype": np.result_type(*[np.dtype(info.dtypes[b]) for b in bands]).name,
        "crs": info.crs, "transform": area.transform, "BIGTIFF": "IF_SAFER",
        "nodata": nodata.pop() if len(nodata) == 1 else None,
    }
    if scaling is not None:  # reflectance x 10000; the fill values are scaled too, so no nodata value holds
        profile.update(dtype="float32", nodata=None)
    total, count = 0.0, 0
    if area.width >= OUTPUT_TILE and area.height >= OUTPUT_TILE:
        profile.update(tiled=True, blockxsize=OUTPUT_TILE, blockysize=OUTPUT_TILE)
    try:
        with rasterio.open(info.path) as src, rasterio.open(path, "w", **profile) as dst:
            for block in iter_windows(area.width, area.height):
                if cancel is not None and cancel():
                    raise Cancelled()
                data = src.read(numbers, window=area.on_input(block))
                if scaling is not None:
                    scale, offset = scaling
                    data = np.nan_to_num((data * np.float32(scale) + np.float32(offset)) * np.float32(10000),
                                         nan=0.0).astype(np.float32, copy=False)
                    total += float(data.sum(dtype=np.float64))
                    count += data.size
                dst.write(data.astype(profile["dtype"], copy=False), window=block)
            dst.descriptions = tuple(info.descriptions[b] for b in bands)
        if scaling is not None and count and total / count <= 1.0:
            raise InputError(
                f"With scale {scaling[0]:g} and offset {scaling[1]:g}, the mapped area of '{info.path}' is "
                "almost black (mean reflectance 0.0001 or less), and image-to-image cannot send it as such "
                "(the server would not divide it by 10000).",
                "Check SCALE and OFFSET, or use the tensor transport.")
    except RasterioError as exc:
        raise InputError(f"Copying the area of '{info.path}' for the server failed: {str(exc).rstrip('.')}.",
                         "Check that the raster (and, for a VRT, every file it names) is readable, and that "
                         "the folder has free space.") from None
