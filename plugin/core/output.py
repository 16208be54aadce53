"""Output files written atomically: checked before any work, written under temporary names beside their
targets, moved into place together, or removed. A cancelled or failed job never leaves a half-written map
(or a damaged older one), and never writes over its input.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from typing import Any

from .errors import OutputError

log = logging.getLogger("floodmapper.output")

OUTPUT_TILE = 256  # GeoTIFF block size of the maps
GEOTIFF_EXTENSIONS = (".tif", ".tiff")  # what the maps are written as, whatever the name says
PART = ".part"  # every temporary output is named .<target>.<random>.part[.tif]
STALE_AFTER_S = 3600.0  # a .part file this old belongs to a run that was killed (a run writes into its own)
_OURS = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part(\.tif)?$")


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
    extension = os.path.splitext(output_path)[1]
    if extension.lower() not in GEOTIFF_EXTENSIONS:
        named = f"names another format ('{extension}')" if extension else "has no file extension"
        raise OutputError(f"The output '{output_path}' {named}, and the map is written as a GeoTIFF.",
                          "Give a file name ending in .tif; for another format, convert the map afterwards "
                          "(Raster > Conversion > Translate, or gdal_translate).")


def check_outputs(output_path: str, probability_path: str, input_path: str) -> None:
    """The flood map and the optional probability raster: writable, apart, and neither is the input."""
    check_output_path(output_path, input_path)
    if probability_path:
        check_output_path(probability_path, input_path)
        if _same_file(probability_path, output_path):
            raise OutputError("The probability output and the class output are the same file.",
                              "Give the probability raster its own file name.")


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(output_path: str, folder: bool = False) -> str:
    """A fresh temporary file (or folder) in the output's folder: same file system, so the final rename is
    atomic. It gets the permissions a new file gets under the user's umask (0644 under the usual 022), not
    mkstemp's 0600: a map server or a colleague must be able to read the output."""
    parent = os.path.dirname(os.path.abspath(output_path))
    base = os.path.basename(output_path)
    if not os.path.isdir(parent):
        raise OutputError(f"The output folder '{parent}' does not exist.",
                          "Create it or choose another folder, then run again.")
    remove_stale_parts(parent)
    try:
        if folder:
            tmp = os.path.join(parent, f".{base}.{secrets.token_hex(4)}{PART}")
            os.mkdir(tmp)  # mode 0777 & ~umask
            return tmp
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f"{PART}.tif", dir=parent)
        if hasattr(os, "fchmod"):  # POSIX permissions; Windows has ACLs (and no fchmod before Python 3.13)
            os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"Cannot write in '{parent}': {exc.strerror}.", "Choose a folder you can write to.") from None
    return tmp


def remove_stale_parts(folder: str, older_than: float = STALE_AFTER_S) -> list[str]:
    """Remove temporary outputs of earlier runs that were killed (QGIS crashed, kill -9): only names this
    module makes, and only those untouched for `older_than` seconds (a running job's are fresh)."""
    removed = []
    now = time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not _OURS.match(name.removesuffix(".aux.xml")):
            continue
        path = os.path.join(folder, name)
        try:
            if now - os.lstat(path).st_mtime < older_than:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
        except OSError as exc:
            log.warning("could not remove the stale temporary output %s: %s", path, exc)
    if removed:
        log.info("removed %d temporary output(s) left by an earlier run that was stopped: %s", len(removed),
                 ", ".join(os.path.basename(p) for p in removed))
    return removed


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


def write_failed(target: str, exc: BaseException, what: str = "flood map") -> OutputError:
    """A write of `what` that failed (disk full, file size limit, folder made read-only): said plainly."""
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        return OutputError(f"The output folder '{folder}' went away while the {what} was written; nothing "
                           "was written.",
                           "Check that the output folder still exists and that you can write to it, then run again.")
    # rasterio's read errors say "See previous exception for details": GDAL's own message is their cause
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    detail = str(cause).strip().rstrip(".") or type(cause).__name__
    return OutputError(
        f"Writing the {what} '{target}' failed: {detail}. Nothing was written; "
        f"an earlier {what} of that name is untouched.",
        f"Check the free space in '{folder}' (and any file size limit or quota), and that the folder is still "
        "writable; or choose another folder.",
    )


def verify_written(path: str, target: str) -> None:
    """Read a just-written GeoTIFF back whole: GDAL reports a write that failed while it flushed its cache at
    close (disk full, file size limit) only on stderr, and the file is then truncated. Raises write_failed."""
    import numpy as np
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    try:
        with rasterio.open(path) as ds:
            rows = ds.block_shapes[0][0]
            buffer = np.empty((ds.count, rows, ds.width), ds.dtypes[0])  # one row of blocks, read into again
            for y in range(0, ds.height, rows):
                h = min(rows, ds.height - y)
                ds.read(window=Window(0, y, ds.width, h), out=buffer[:, :h])
    except (RasterioError, OSError) as exc:
        raise write_failed(target, exc) from None


class AtomicOutputs:
    """Temporary files (or folders) beside each target, moved into place all together by `commit()`, or
    removed by `discard()`.

    An older output at a target is set aside first and put back if a later rename fails (the output folder
    removed meanwhile, say): all outputs or none, and never a half-written one.
    """

    def __init__(self, targets: list[str], keep: str = "", folders: bool = False) -> None:
        """`keep`: the input, which no target may be (checked here too, as the last guard)."""
        self.targets = list(targets)
        self.folders = folders
        self.temps: list[str] = []
        for target in self.targets:
            if _same_file(target, keep):
                raise OutputError(f"The output '{target}' is the input raster.",
                                  "Choose another output file; the input is never overwritten.")
        try:
            for target in self.targets:
                self.temps.append(temp_beside(target, folder=folders))
        except BaseException:  # a failure or an interrupt (Ctrl+C) halfway: the temporaries made so far go
            self.discard()
            raise

    def commit(self) -> None:
        backups: dict[str, str] = {}
        renamed: list[str] = []
        try:
            for tmp, final in zip(self.temps, self.targets):
                if (len(self.targets) > 1 or self.folders) and os.path.lexists(final):
                    backup = temp_beside(final, folder=self.folders)
                    try:
                        if self.folders:
                            os.rmdir(backup)  # a folder cannot be renamed over a folder: its name is enough
                        os.replace(final, backup)
                    except OSError:
                        _remove(backup)
                        raise
                    backups[final] = backup
                os.replace(tmp, final)
                renamed.append(final)
        except (OSError, OutputError) as exc:
            for path in renamed:
                try:
                    _remove(path)
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
                _remove(backup)
            except OSError as exc:
                log.warning("could not remove the older output set aside as %s: %s", backup, exc)
        self.temps = []

    def discard(self) -> None:
        """Remove the temporary files or folders (and GDAL's .aux.xml beside them)."""
        for tmp in self.temps:
            for path in (tmp, tmp + ".aux.xml"):
                if os.path.lexists(path):
                    _remove(path)
        self.temps = []


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
