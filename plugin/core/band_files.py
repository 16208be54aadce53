"""The set of band files one single-band raster belongs to, stacked into one raster to map.

Many downloads come as one file per band: Landsat Collection 2 (`LC09_L2SP_…_SR_B2.TIF` … `_SR_B7.TIF`, also
inside the downloaded .tar), HLS (`HLS.S30.T33TWM.2024122T100031.v2.0.B02.tif`), Sentinel-2 as cloud archives
serve it (`B02.tif`, `B8A.tif`, …) or band files copied out of a product (`T33TWM_20240501T100031_B02_10m.jp2`).
A layer added from one of them has a single band, which no model maps. The files of its set are those in the
same folder whose names differ from its own only in the band (and, for Sentinel-2's, the resolution). Those
that stand for a spectral band (a Landsat panchromatic or thermal band does not) are stacked in a virtual
raster in band order, at the finest resolution among them, as *Build virtual raster* does by hand; the stack's
bands keep their files' names, so the band choice, the scaling and a Landsat MTL file work as for a stack made
by hand. The scene's cloud file beside them (QA_PIXEL, Fmask, SCL) is found too. A Sentinel-2 product's own band
file is its product's (sentinel2_product.py).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Optional

from .archive_members import files_in, folder_of, is_file, join
from .bands import DEFAULT_MODEL_BANDS, band_names, missing_names
from .errors import InputError
from .gdal_bindings import gdal_for

# a band in a file's name: B2, B02, B8A, SR_B5 (the last such word of the name)
_BAND = re.compile(r"(?<![A-Za-z0-9])B(?P<number>\d{1,2})(?P<a>A?)(?![A-Za-z0-9])", re.IGNORECASE)
_RESOLUTION = re.compile(r"_\d{2,3}m$", re.IGNORECASE)  # Sentinel-2 band files: T33TWM_…_B02_10m.jp2


@dataclass(frozen=True)
class BandFiles:
    """A set of band files, in band order."""

    name: str  # what the set is called: the file's name without its band (`LC09_L2SP_…_SR`)
    folder: str
    files: tuple[str, ...]  # their paths, in band order
    bands: tuple[str, ...]  # the band each stands for (BLUE, NIR_NARROW, …)
    given: int  # the index of the file the set was found from
    cloud_file: str = ""  # the scene's quality or classification file beside them (QA_PIXEL, Fmask, SCL), or ""

    def describe(self) -> str:
        """'B1, B2, …, B7' as the files name them."""
        return ", ".join(_band_word(posixpath.basename(f.replace("\\", "/"))) for f in self.files)

    def missing(self, names: tuple[str, ...] = DEFAULT_MODEL_BANDS) -> list[str]:
        """Those of `names` no file gives."""
        return missing_names(self.bands, names)


def band_files_of(source: str) -> Optional[BandFiles]:
    """The set of band files `source` belongs to, when it is a single-band file of the file system or of a local
    archive whose name gives a band and whose folder holds at least one more file of its set; else None (a
    raster of several bands, a URL, a file on its own: mapped as it is)."""
    source = (source or "").strip()
    file_name = posixpath.basename(source.replace("\\", "/"))
    pattern = _set_pattern(file_name)
    if pattern is None or not is_file(source) or _band_count(source) != 1:
        return None
    folder = folder_of(source)
    listing = files_in(folder)
    members = [name for name in listing if pattern.match(name)]
    if len(members) < 2 or file_name not in members:
        return None
    labels = [os.path.splitext(name)[0] for name in members]
    names = band_names(labels)
    finest: dict[tuple[int, str], tuple[int, str, str]] = {}  # band -> (resolution, file, name it stands for)
    for member, label, name in zip(members, labels, names):
        if name is None:
            continue
        key, resolution = _band_key(label), _resolution(label)
        if key not in finest or resolution < finest[key][0]:
            finest[key] = (resolution, member, name)
    chosen = [finest[key] for key in sorted(finest)]
    if len(chosen) < 2 or file_name not in [member for _, member, _ in chosen]:
        return None
    stem = os.path.splitext(file_name)[0]
    match = _last_band(stem)
    before, after = stem[:match.start()], stem[match.end():]
    cloud = _cloud_file(before, after, listing)
    name = re.sub(r"([_.-])[_.-]+", r"\1", before + _RESOLUTION.sub("", after)).strip("_.-")
    return BandFiles(name=name or "bands",
                     folder=folder, files=tuple(join(folder, member) for _, member, _ in chosen),
                     bands=tuple(name for _, _, name in chosen),
                     given=[member for _, member, _ in chosen].index(file_name),
                     cloud_file=join(folder, cloud) if cloud else "")


def write_stack(band_files: BandFiles, folder: str) -> str:
    """The virtual raster of the band files (separate bands, the finest resolution), written in `folder`; its
    path."""
    gdal = gdal_for(f"the band files {band_files.describe()}")
    path = os.path.join(folder, f"{band_files.name}.vrt")
    options = gdal.BuildVRTOptions(separate=True, resolution="highest")
    vrt = gdal.BuildVRT(path, list(band_files.files), options=options)
    if vrt is None:
        raise InputError(f"The band files {band_files.describe()} in {band_files.folder} could not be stacked: "
                         f"{gdal.GetLastErrorMsg() or 'GDAL gave no reason'}.",
                         "Check that each of them opens in QGIS, or stack them yourself (Raster ▸ Miscellaneous ▸ "
                         "Build Virtual Raster, 'Place each input file into a separate band').")
    vrt = None  # closing writes the file
    return path


def _set_pattern(file_name: str) -> Optional[re.Pattern]:
    """The names of the files of the same set as `file_name`: the same name with any band (and resolution)."""
    stem, ext = os.path.splitext(file_name)
    match = _last_band(stem)
    if match is None:
        return None
    return re.compile(rf"^{re.escape(stem[:match.start()])}B\d{{1,2}}A?{_after(stem[match.end():])}"
                      rf"{re.escape(ext)}$", re.IGNORECASE)


def _after(after: str) -> str:
    """A pattern for what follows the band in the set's names: the same, any resolution for Sentinel-2's."""
    resolution = _RESOLUTION.search(after)
    return re.escape(after[:resolution.start()]) + r"_\d{2,3}m" if resolution else re.escape(after)


def _cloud_file(before: str, after: str, names: list[str]) -> str:
    """The scene's cloud file among `names`, named as the band files are with the band word replaced: Landsat's
    `…_QA_PIXEL.TIF` beside `…_SR_B5.TIF`, HLS's `….Fmask.tif`, Sentinel-2's `…_SCL_20m.jp2`, `SCL.tif` or
    `…_L2A_SCL_(Raw).tiff`; "" when there is none."""
    scene = re.escape(re.sub(r"SR_$", "", before, flags=re.IGNORECASE))
    pattern = re.compile(rf"^{scene}(?:QA_PIXEL|Fmask|SCL){_after(after)}\.(?:tif|tiff|jp2)$", re.IGNORECASE)
    found = [name for name in names if pattern.match(name)]
    return sorted(found, key=_resolution_of_name)[0] if found else ""


def _resolution_of_name(name: str) -> int:
    return _resolution(os.path.splitext(name)[0])


def _band_count(source: str) -> int:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(source) as src:
            return src.count
    except (RasterioError, OSError):
        return 0


def _last_band(stem: str) -> Optional[re.Match]:
    """The band word of a file's name (its last), or None."""
    matches = list(_BAND.finditer(stem))
    return matches[-1] if matches else None


def _band_word(label: str) -> str:
    return _last_band(os.path.splitext(label)[0]).group(0).upper()


def _band_key(label: str) -> tuple[int, str]:
    """Band order: B1 < B2 < … < B8 < B8A < B9 < B10."""
    match = _last_band(label)
    return int(match.group("number")), match.group("a").upper()


def _resolution(label: str) -> int:
    match = _RESOLUTION.search(label)
    return int(match.group(0)[1:-1]) if match else 0
