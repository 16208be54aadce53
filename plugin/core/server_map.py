"""The image-to-image server's answer made into the flood map: its classes decoded, checked against the
input's grid, and masked with the input's own nodata.

The server knows nothing of nodata (TerraTorch predicts on the fill value too), so the mask comes from the
input's dataset masks, for exactly the bands that were sent.
"""

from __future__ import annotations

import io
import os
from typing import Callable, Optional, Union

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile

from .area_of_interest import Area, whole_area
from .classes import NODATA
from .errors import Cancelled, ServerError
from .jobs import Stats
from .output import AtomicOutputs, output_profile, verify_written, write_failed
from .provenance import describe_map
from .raster import iter_windows, valid_mask
from .stats import StatsAccumulator

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]


def decode_classes(codes: np.ndarray) -> np.ndarray:
    """TerraTorch writes class × 255 as uint8 (0 → 0, 1 → 255, k → 256 − k by wrap-around): undo it."""
    codes = codes.astype(np.uint16)
    return ((256 - codes) % 256).astype(np.uint8)


def _open_server_raster(server_tiff: Union[bytes, str, os.PathLike]):
    if isinstance(server_tiff, (bytes, bytearray)):
        memfile = MemoryFile(io.BytesIO(bytes(server_tiff)))
        try:
            return memfile, memfile.open()
        except RasterioError as exc:
            memfile.close()
            raise ServerError(
                f"The server's answer is not a readable GeoTIFF: {exc}.",
                "Check the server's log; the TerraTorch plugin may be misconfigured.",
            ) from None
    try:
        return None, rasterio.open(server_tiff)
    except RasterioError as exc:
        raise ServerError(f"The server's output '{server_tiff}' cannot be read: {exc}.", "") from None


def _check_same_grid(server: rasterio.io.DatasetReader, src) -> None:
    """The server's map is on `src`'s grid (the input's, or the area's: width, height, transform, crs)."""
    problems = []
    if (server.width, server.height) != (src.width, src.height):
        problems.append(f"size {server.width}×{server.height} instead of {src.width}×{src.height}")
    if not server.transform.almost_equals(src.transform, precision=1e-9):
        problems.append(f"geotransform {tuple(server.transform)[:6]} instead of {tuple(src.transform)[:6]}")
    if (server.crs is None) != (src.crs is None) or (server.crs and src.crs and server.crs != src.crs):
        problems.append(f"CRS {server.crs} instead of {src.crs}")
    if server.count < 1:
        problems.append("no band")
    if problems:
        raise ServerError(
            "The server's flood map does not match the input raster's grid: " + "; ".join(problems) + ".",
            "The server's TerraTorch plugin returned a different raster; update TerraTorch on the server, "
            "or use the tensor transport.",
        )


def finalize_classes(
    server_tiff: Union[bytes, str, os.PathLike],
    input_path: str,
    band_indices: list[int],
    output_path: str,
    cancel: Optional[CancelFn] = None,
    on_progress: Optional[ProgressFn] = None,
    area: Optional[Area] = None,
    tags: Optional[dict[str, str]] = None,
) -> Stats:
    """Write the flood map: server classes remapped to 0/1, nodata 255 wherever an input band has none.

    The server knows nothing of nodata (TerraTorch predicts on the fill value too), so the mask comes from
    the input's own dataset masks, for exactly the bands that were sent. With an `area`, the server's map and
    the output are on the area's window of the input's grid, and what the area leaves out is nodata too.
    `tags`: the map's provenance metadata.
    """
    memfile, server = _open_server_raster(server_tiff)
    outputs = None
    try:
        with server, rasterio.open(input_path) as src:
            area = area or whole_area(src)
            grid = area.grid(src.crs)
            _check_same_grid(server, grid)
            acc = StatsAccumulator(src.crs.to_wkt() if src.crs else None, grid.transform)
            outputs = AtomicOutputs([output_path], keep=input_path)
            windows = list(iter_windows(grid.width, grid.height))
            with rasterio.open(outputs.temps[0], "w", **output_profile(grid)) as dst:
                for i, window in enumerate(windows):
                    if cancel is not None and cancel():
                        raise Cancelled()
                    classes = decode_classes(server.read(1, window=window))
                    valid = valid_mask(src, band_indices, area.on_input(window))
                    if area.mask is not None:
                        valid &= area.mask.read(window)
                    dst.write(np.where(valid, classes, NODATA).astype(np.uint8), 1, window=window)
                    acc.add(window, classes, valid)
                    if on_progress is not None:
                        on_progress((i + 1) / len(windows))
                describe_map(dst, tags)
        verify_written(outputs.temps[0], output_path)
        outputs.commit()
        outputs = None
        return acc.result()
    except (RasterioError, OSError) as exc:
        raise write_failed(output_path, exc) from None
    finally:
        if outputs is not None:
            outputs.discard()
        if memfile is not None:
            memfile.close()
