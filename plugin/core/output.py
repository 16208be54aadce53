"""Output files written atomically: checked before any work, written under temporary names beside their
targets, moved into place together, or removed. A cancelled or failed job never leaves a half-written map
(or a damaged older one), and never writes over its input.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from .errors import OutputError

log = logging.getLogger("floodmapper.output")

OUTPUT_TILE = 256  # GeoTIFF block size of the maps


def _same_file(a: str, b: str) -> bool:
    if not a or not b:
        return False
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_output_path(output_path: str, input_path: str) -> None:
    """Fail early (before any request) when the output cannot or must not be written."""
    if not output_path:
        raise OutputError("No output file was given.", "Choose where to save the flood map (a .tif file).")
    if _same_file(output_path, input_path):
        raise OutputError(
            f"The output '{output_path}' is the input raster.",
            "Choose another output file; the input is never overwritten.",
        )
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise OutputError(f"The output folder '{folder}' does not exist.", "Create it or choose another folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"The output folder '{folder}' is not writable.", "Choose a folder you can write to."
        )
    if os.path.isdir(output_path):
        raise OutputError(f"The output '{output_path}' is a folder.", "Give a file name ending in .tif.")


def check_outputs(output_path: str, probability_path: str, input_path: str) -> None:
    """The flood map and the optional probability raster: writable, apart, and neither is the input."""
    check_output_path(output_path, input_path)
    if probability_path:
        check_output_path(probability_path, input_path)
        if _same_file(probability_path, output_path):
            raise OutputError("The probability output and the class output are the same file.",
                              "Give the probability raster its own file name.")


def temp_beside(output_path: str) -> str:
    """A fresh temporary file name in the output's folder (same file system, so os.replace is atomic)."""
    folder = os.path.dirname(os.path.abspath(output_path))
    base = os.path.basename(output_path)
    if not os.path.isdir(folder):
        raise OutputError(f"The output folder '{folder}' does not exist.",
                          "Create it or choose another folder, then run again.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part.tif", dir=folder)
    except OSError as exc:
        raise OutputError(f"Cannot write in '{folder}': {exc.strerror}.", "Choose a folder you can write to.") from None
    os.close(fd)
    return tmp


def output_profile(src: Any, **changes: Any) -> dict:
    """A flood map's GeoTIFF profile on `src`'s grid: uint8, nodata 255, tiled, deflate."""
    from .classes import NODATA

    profile = {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": 1,
        "dtype": "uint8",
        "nodata": NODATA,
        "crs": src.crs,
        "transform": src.transform,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if src.width >= OUTPUT_TILE and src.height >= OUTPUT_TILE:
        profile.update(tiled=True, blockxsize=OUTPUT_TILE, blockysize=OUTPUT_TILE)
    profile.update(changes)
    return profile


class AtomicOutputs:
    """Temporary files beside each target, moved into place all together by `commit()`, or removed.

    With several targets an older file at a target is set aside first and put back if a later rename fails
    (the output folder removed meanwhile, say): all outputs or none.
    """

    def __init__(self, targets: list[str], keep: str = "") -> None:
        """`keep`: the input, which no target may be (checked here too, as the last guard)."""
        self.targets = list(targets)
        self.temps: list[str] = []
        for target in self.targets:
            if _same_file(target, keep):
                raise OutputError(f"The output '{target}' is the input raster.",
                                  "Choose another output file; the input is never overwritten.")
        try:
            for target in self.targets:
                self.temps.append(temp_beside(target))
        except OutputError:
            self.discard()
            raise

    def commit(self) -> None:
        backups: dict[str, str] = {}
        renamed: list[str] = []
        try:
            for tmp, final in zip(self.temps, self.targets):
                if len(self.targets) > 1 and os.path.lexists(final):
                    backup = temp_beside(final)
                    try:
                        os.replace(final, backup)
                    except OSError:
                        os.remove(backup)
                        raise
                    backups[final] = backup
                os.replace(tmp, final)
                renamed.append(final)
        except (OSError, OutputError) as exc:
            for path in renamed:
                try:
                    os.remove(path)
                except OSError as undo:
                    log.warning("could not remove %s: %s", path, undo)
            for final, backup in backups.items():
                try:
                    os.replace(backup, final)
                except OSError as undo:
                    log.warning("could not put back the older %s (it is %s): %s", final, backup, undo)
            self.discard()
            failed = self.targets[len(renamed)]
            detail = exc.message if isinstance(exc, OutputError) else (exc.strerror or str(exc))
            raise OutputError(
                f"Moving the finished map into place as '{failed}' failed: {detail}.",
                "Check that the output folder still exists and that you can write to it, then run again.",
            ) from None
        for backup in backups.values():
            try:
                os.remove(backup)
            except OSError as exc:
                log.warning("could not remove the older output set aside as %s: %s", backup, exc)
        self.temps = []

    def discard(self) -> None:
        """Remove the temporary files (and GDAL's .aux.xml beside them)."""
        for tmp in self.temps:
            for path in (tmp, tmp + ".aux.xml"):
                if os.path.exists(path):
                    os.remove(path)
        self.temps = []
