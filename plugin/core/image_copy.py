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
from .output import OUTPUT_TILE, remove_stale_parts
from .raster import RasterInfo, iter_windows

log = logging.getLogger("floodmapper.image")

CancelFn = Callable[[], bool]


def copy_reason(info: RasterInfo, area: Optional[Area]) -> str:
    """Why the server must get a copy of the input rather than the input ("" when it reads the input)."""
    if info.driver == "VRT" or info.path.lower().endswith(".vrt"):
        return (f"'{info.path}' is a virtual raster (VRT), and the server reads a raster's bytes, without the "
                "band files a VRT names")
    if area is not None and not area.whole:
        return f"only an area of the raster ({area.width}×{area.height} px) is mapped"
    return ""


@contextlib.contextmanager
def input_copy(info: RasterInfo, area: Optional[Area], bands: list[int], folder: str,
               cancel: Optional[CancelFn] = None) -> Iterator[str]:
    """Write `bands` (0-based, the model's order) of the area's window to a GeoTIFF in `folder`; yield its path.

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
        _write(info, area, bands, path, cancel)
        yield path
    finally:
        for leftover in (path, path + ".aux.xml"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)


def _write(info: RasterInfo, area: Area, bands: list[int], path: str, cancel: Optional[CancelFn]) -> None:
    numbers = [b + 1 for b in bands]
    nodata = {info.nodata[b] for b in bands}
    profile = {
        "driver": "GTiff", "width": area.width, "height": area.height, "count": len(bands),
        "dtype": np.result_type(*[np.dtype(info.dtypes[b]) for b in bands]).name,
        "crs": info.crs, "transform": area.transform, "BIGTIFF": "IF_SAFER",
        "nodata": nodata.pop() if len(nodata) == 1 else None,
    }
    if area.width >= OUTPUT_TILE and area.height >= OUTPUT_TILE:
        profile.update(tiled=True, blockxsize=OUTPUT_TILE, blockysize=OUTPUT_TILE)
    try:
        with rasterio.open(info.path) as src, rasterio.open(path, "w", **profile) as dst:
            for block in iter_windows(area.width, area.height):
                if cancel is not None and cancel():
                    raise Cancelled()
                dst.write(src.read(numbers, window=area.on_input(block)).astype(profile["dtype"], copy=False),
                          window=block)
            dst.descriptions = tuple(info.descriptions[b] for b in bands)
    except RasterioError as exc:
        raise InputError(f"Copying the area of '{info.path}' for the server failed: {str(exc).rstrip('.')}.",
                         "Check that the raster (and, for a VRT, every file it names) is readable, and that "
                         "the folder has free space.") from None
