"""What a batch maps: the rasters and Sentinel-2 products named on its command line (a folder stands for those in
it), each with its output path, checked before any engine starts.

A download that comes as one file per band (Landsat Collection 2, HLS, Sentinel-2 band files) is one scene: its set
of band files is mapped once, stacked as the plugin stacks it (band_files.py), and named after the set. The files
that come with the set in its folder (its quality and cloud files, its thermal band, the angle files) are no inputs
of their own when the folder is given; given by name, a file is always mapped as it is. A Landsat bundle as USGS
EarthExplorer serves it (a .tar of the scene's files) stands for the set of band files inside it.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .core import raster
from .core.archive_members import files_in, folder_of, join, split_member
from .core.area_of_interest import plan_area
from .core.band_files import BandFiles, band_files_of
from .core.errors import InputError, NothingToMap
from .core.flood_extent import ExtentStats
from .core.jobs import MapFloodsResult, Stats
from .core.output import check_output_path
from .core.polygon_file import PolygonsWritten
from .core.reference import RasterReference, Reference, check_raster_reference, polygon_parts
from .core.reference_files import read_geometries, reference_from_path, split_layer
from .core.sentinel2_product import metadata_of, metadata_of_band_file, product_name

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
BAND_FILE_SUFFIXES = (".jp2",)  # Sentinel-2 band files copied out of a product: taken in a folder as a set's only
PRODUCT_SUFFIXES = (".zip", ".safe")  # Sentinel-2 products as downloaded (checked by their metadata file)
BUNDLE_SUFFIXES = (".tar",)  # a Landsat scene's files as USGS serves them (read inside: /vsitar/)
OUTPUT_SUFFIX = "_flood.tif"


@dataclass
class Job:
    input_path: str
    output_path: str
    error: Optional[str] = None
    seconds: float = 0.0
    stats: Optional[Stats | ExtentStats | MapFloodsResult] = None
    label: str = ""  # what the report calls the input, when not its file's name (a set of band files)
    skipped: bool = False  # its map is already there, from an earlier run (--skip-existing)
    outside: bool = False  # the area of interest (--area) misses it: nothing of it to map
    polygons: Optional[PolygonsWritten] = None  # its water polygons, traced by this run (--polygons)

    @property
    def name(self) -> str:
        return self.label or os.path.basename(self.input_path)

    @property
    def to_map(self) -> bool:
        """Not failed, not already there, not outside the area: left for the engine."""
        return not (self.error or self.skipped or self.outside)


def _is_output(path: Path, out_dir: Path) -> bool:
    return path.name.endswith(OUTPUT_SUFFIX) and path.resolve().parent == out_dir.resolve()


def is_product(path: str) -> bool:
    """A Sentinel-2 product as downloaded (its .zip, its .SAFE folder or its metadata file)."""
    return metadata_of(path) is not None


def _is_input(f: Path, folder: Path, out_dir: Path) -> bool:
    parts = f.relative_to(folder).parts
    if any(part.startswith(".") for part in parts) or any(p.lower().endswith(".safe") for p in parts[:-1]):
        return False  # hidden, or inside a product (its band files are the product's)
    suffix = f.suffix.lower()
    if suffix in RASTER_SUFFIXES + BAND_FILE_SUFFIXES + BUNDLE_SUFFIXES:
        return f.is_file() and not _is_output(f, out_dir)
    return suffix in PRODUCT_SUFFIXES and is_product(str(f))


@dataclass
class LeftOut:
    """What the folders of a batch hold that it does not map, by why."""

    companions: list[str] = field(default_factory=list)  # files that come with a set of band files
    no_bands: list[str] = field(default_factory=list)  # band files of no set, archives without band files
    same_scene: list[tuple[str, str]] = field(default_factory=list)  # (a download, the one of its scene mapped)
    pre_event: list[str] = field(default_factory=list)  # the pre-event image (or a download of its scene)

    def __bool__(self) -> bool:
        return bool(self.companions or self.no_bands or self.same_scene or self.pre_event)

    def paths(self) -> list[str]:
        return self.companions + self.no_bands + [path for path, _ in self.same_scene] + self.pre_event

    def lines(self) -> list[str]:
        lines = []
        if self.companions:
            lines.append(f"Left out: {len(self.companions)} file(s) that come with a set of band files "
                         f"({_names(self.companions)}); each set is mapped once, from its band files")
        if self.no_bands:
            lines.append(f"Left out: {len(self.no_bands)} file(s) with no set of band files to map "
                         f"({_names(self.no_bands)})")
        lines += [f"Left out: {_shown(path)}, the same scene as {label_of(mapped) or _shown(mapped)}, which is mapped"
                  for path, mapped in self.same_scene]
        lines += [f"Left out: {label_of(path) or _shown(path)}, the pre-event image (--pre-event), which each raster "
                  "is compared with" for path in self.pre_event]
        return lines


def _names(paths: list[str]) -> str:
    return ", ".join(_shown(p) for p in paths[:4]) + (", …" if len(paths) > 4 else "")


def _shown(path: str) -> str:
    """A file's name, or for a member of an archive the archive's (the download)."""
    member = split_member(path)
    return os.path.basename(member[1] if member else path)


def expand_inputs(inputs: list[str], out_dir: Path, recursive: bool = False,
                  left_out: Optional[LeftOut] = None) -> list[str]:
    """Files and products as given; a folder becomes its rasters and products (sorted; subfolders with
    `recursive`), minus our outputs and the files that come with a set of band files; a set of band files is one
    input however many of its files are named or found, and a scene downloaded twice (a product's .zip beside its
    unpacked .SAFE, a Landsat .tar beside its band files) is mapped once. What is not mapped goes to `left_out`."""
    expanded: list[str] = []
    listed: set[str] = set()  # found in a folder, not named
    for item in inputs:
        folder = Path(item)
        if not folder.is_dir() or is_product(item):
            expanded.append((band_set_in(item) or item) if _is_bundle(item) else item)
            continue
        candidates = folder.rglob("*") if recursive else folder.iterdir()
        found = sorted(f for f in candidates if _is_input(f, folder, out_dir))
        if not found:
            where = "it or its subfolders" if recursive else "it"
            raise InputError(
                f"The folder '{item}' has no rasters: no " + ", ".join(f"*{s}" for s in RASTER_SUFFIXES)
                + f" file, no Sentinel-2 product (*.zip, *.SAFE) and no Landsat scene (*.tar) in {where}.",
                "Pass the raster files themselves, or --recursive for rasters in subfolders.",
            )
        for f in map(str, found):
            if _is_bundle(f):
                f = band_set_in(f) or f  # a bundle without band files is left out below
            expanded.append(f)
            listed.add(f)
    left_out = LeftOut() if left_out is None else left_out
    kept = _one_download_per_scene(_one_per_set(expanded, listed, left_out), left_out)
    if not kept:
        raise InputError(
            f"There is nothing to map: the files found ({_names(left_out.paths())}) are files that come with a set "
            "of band files, or band files of no set.", "Pass the rasters themselves, or a folder with a raster of "
            "several bands, a Sentinel-2 product or the band files of a scene.")
    return kept


def _one_per_set(paths: list[str], listed: set[str], left_out: LeftOut) -> list[str]:
    """`paths` with each set of band files once (the first of its files stands for it); of those found in a folder
    (`listed`), the files that come with a set (its cloud file, the scene's other files), the band files outside
    a raster suffix that are no set's and the archives without band files are left out."""
    sets = {path: _set_of(path) for path in paths}
    companions = [s for s in sets.values() if s is not None]
    kept: list[str] = []
    taken: set[tuple[str, ...]] = set()
    for path in paths:
        found = sets[path]
        if found is not None:
            if found.files not in taken:
                taken.add(found.files)
                kept.append(path)
        elif path in listed and any(_comes_with(path, s) for s in companions):
            left_out.companions.append(path)
        elif path in listed and Path(path).suffix.lower() in BAND_FILE_SUFFIXES + BUNDLE_SUFFIXES:
            left_out.no_bands.append(path)
        else:
            kept.append(path)
    return kept


def _one_download_per_scene(paths: list[str], left_out: LeftOut) -> list[str]:
    """`paths` with each scene once: of the downloads of one scene, the first not inside an archive (reading an
    unpacked product is faster), else the first."""
    keys = {path: _scene_key(path) for path in paths}
    chosen: dict[tuple, str] = {}
    for path in paths:
        key = keys[path]
        if key is not None and (key not in chosen or (_in_archive(chosen[key]) and not _in_archive(path))):
            chosen[key] = path
    kept: list[str] = []
    for path in paths:
        key = keys[path]
        if key is None or chosen[key] == path:
            kept.append(path)
        else:
            left_out.same_scene.append((path, chosen[key]))
    return kept


def _scene_key(path: str) -> Optional[tuple]:
    """What names a scene whatever its download: a Sentinel-2 product's name, a set of band files' name with its
    files' names (L1C and L2A band files of one tile and time share the set's name, not the files'); None for a
    raster of its own."""
    if metadata_of(path) or metadata_of_band_file(path):
        return ("product", output_stem(path))
    found = _set_of(path)
    if found is None or found.name == "bands":  # B02.tif, … in two folders may well be two scenes
        return None
    return ("band files", found.name, tuple(posixpath.basename(f.replace("\\", "/")) for f in found.files))


def _in_archive(path: str) -> bool:
    return split_member(path) is not None or path.lower().endswith(".zip")


def _is_bundle(path: str) -> bool:
    return path.lower().endswith(BUNDLE_SUFFIXES) and os.path.isfile(path)


def band_set_in(bundle: str) -> Optional[str]:
    """The band file (as GDAL names a member: `/vsitar//data/LC09_….tar/LC09_…_SR_B1.TIF`) that stands for the set of
    band files a downloaded .tar holds, or None when it holds none."""
    folder = f"/vsitar/{os.path.abspath(bundle)}"
    for name in files_in(folder):
        member = join(folder, name)
        if band_files_of(member) is not None:
            return member
    return None


def _set_of(path: str) -> Optional[BandFiles]:
    """The set of band files `path` is one of (not for a Sentinel-2 product's own band file: the product is)."""
    if metadata_of_band_file(path) or Path(path).suffix.lower() in PRODUCT_SUFFIXES:
        return None
    return band_files_of(path)


def _comes_with(path: str, band_files: BandFiles) -> bool:
    """Whether `path` comes with the set in its folder: its cloud file, or a file of the same scene (the set's name
    up to Landsat's `_SR`, then a separator: `…_T1_QA_PIXEL.TIF`, `…_T1_ST_B10.TIF`, `HLS….v2.0.SAA.tif`)."""
    if os.path.abspath(path) == os.path.abspath(band_files.cloud_file or "."):
        return True
    if folder_of(path) != band_files.folder:
        return False
    scene = re.sub(r"[_.-]?SR$", "", band_files.name, flags=re.IGNORECASE)
    name = os.path.basename(path)
    return (len(scene) >= 4 and name.lower().startswith(scene.lower())  # not the "bands" of B02.tif, B03.tif, …
            and name[len(scene):len(scene) + 1] in ("_", ".", "-"))


def output_stem(path: str) -> str:
    """What the map of `path` is named after: a Sentinel-2 product's name (its .SAFE folder's, for its .zip, its
    folder, its metadata file or one of its band files), a set of band files' name (the file's without the band),
    else the file's own name without its suffix."""
    metadata = metadata_of(path) or metadata_of_band_file(path)
    if metadata and product_name(metadata):
        return product_name(metadata)
    found = _set_of(path)
    if found is not None:  # a set named by its bands alone (B02.tif, …) by its folder
        return found.name if found.name != "bands" else posixpath.basename(found.folder.replace("\\", "/"))
    return Path(path).stem or "raster"


def label_of(path: str) -> str:
    """How the report names an input that stands for more than its file: a set of band files."""
    found = _set_of(path)
    if found is None:
        return ""
    return f"{found.name} ({len(found.files)} band files: {found.describe()})"


def plan(inputs: list[str], out_dir: Path) -> list[Job]:
    """Output names from the inputs (output_stem), made unique (two folders may both hold scene.tif)."""
    jobs: list[Job] = []
    used: set[str] = set()
    for path in inputs:
        stem = output_stem(path)
        name = f"{stem}{OUTPUT_SUFFIX}"
        n = 2
        while name in used:
            name = f"{stem}_{n}{OUTPUT_SUFFIX}"
            n += 1
        used.add(name)
        given = path if split_member(path) else os.path.abspath(path)  # a member's path keeps GDAL's form
        jobs.append(Job(given, str(out_dir / name), label=label_of(path)))
    return jobs


def needs_stacking(path: str) -> bool:
    """Whether the input is mapped from several files (a Sentinel-2 product, a set of band files): the plugin's
    pipeline stacks them, which the offline engine does not run."""
    return is_product(path) or metadata_of_band_file(path) is not None or _set_of(path) is not None


def own_cloud_mask(path: str) -> str:
    """The cloud classification an input comes with, as the pipeline takes it as CLOUD_MASK: a Sentinel-2 product
    itself (its SCL or MSK_CLASSI), or the cloud file beside a set of band files (Landsat QA_PIXEL, HLS Fmask, SCL);
    "" when it has none."""
    if is_product(path):
        return path
    metadata = metadata_of_band_file(path)
    if metadata:
        return metadata
    found = _set_of(path)
    return found.cloud_file if found is not None else ""


def validate(job: Job, indices: Optional[list[int]]) -> None:
    """Cheap checks before the engine spends time on the raster (a product's, when its bands are stacked)."""
    check_input(job.input_path, indices)
    check_output_path(job.output_path, job.input_path)


def check_input(path: str, indices: Optional[list[int]]) -> None:
    """An input the engine can map: a local raster (with the bands `indices` names), a product or a set of band
    files (with no `indices`)."""
    if _is_bundle(path):
        raise InputError(f"'{path}' holds no set of band files (a Landsat scene's …_SR_B2.TIF, …_SR_B3.TIF, "
                         "… at its top level).", "Give a Landsat bundle as USGS serves it, or the rasters themselves.")
    found = _set_of(path) if indices else None
    if found is not None:  # the pipeline stacks a band file's set only when no bands are given
        raise InputError(
            f"{found.name} is a set of {len(found.files)} band files ({found.describe()}) in {found.folder}, and "
            "--indices picks the bands of one raster.",
            "Leave out --indices for band files: their bands are chosen by the files' names, as the plugin chooses "
            "them. Or stack them yourself (gdalbuildvrt -separate) and give the stack.")
    if not is_product(path):
        info = raster.inspect(path)
        if not info.is_file and split_member(path) is None:  # a member of a local archive is local
            raise InputError(f"'{path}' is not a local file.", "The batch reads local files only.")
        check_indices(path, info.count, indices)


def pre_event_input(path: str, out_dir: Path, indices: Optional[list[int]]) -> str:
    """The one raster, Sentinel-2 product or set of band files --pre-event names, taken as an input is (a Landsat
    .tar: the band files inside it; a folder: the one scene in it), and checked as one."""
    found = expand_inputs([path], out_dir)
    if len(found) != 1:
        raise InputError(f"'{path}' holds {len(found)} rasters ({_names(found)}); the pre-event image is one.",
                         "Give the one raster, product or scene taken before the event.")
    check_input(found[0], indices)
    return found[0]


def one_scene(a: str, b: str) -> bool:
    """Whether two inputs are one scene: the same product or set of band files (in any of its downloads), or the
    same file."""
    key_a, key_b = _scene_key(a), _scene_key(b)
    if key_a is not None or key_b is not None:
        return key_a == key_b
    set_a, set_b = _set_of(a), _set_of(b)
    if set_a is not None or set_b is not None:
        return set_a is not None and set_b is not None and set_a.files == set_b.files
    return os.path.realpath(a) == os.path.realpath(b)


def check_indices(path: str, count: int, indices: Optional[list[int]]) -> None:
    if indices and max(indices) >= count:
        raise InputError(
            f"'{path}' has {count} band(s); the model would get its band index {max(indices)}.",
            "Pass --indices with the 0-based bands in the model's order (e.g. 1,2,3,8,11,12 for Sentinel-2 L1C).",
        )


@dataclass(frozen=True)
class AreaPolygons:
    """The area of interest: polygons (GeoJSON-like) and their CRS ("" = each raster's own)."""

    shapes: list[dict]
    crs: str


def load_area(path: str) -> Optional[AreaPolygons]:
    """--area read once, before any engine starts (InputError for a file that is missing, unreadable or holds no
    polygon); None when it is not given."""
    if not path:
        return None
    if not os.path.exists(split_layer(path)[0]):
        raise InputError(f"The area '{path}' does not exist.",
                         "Give an existing polygon file (GeoPackage, shapefile, GeoJSON...).")
    geometries, crs, kind = read_geometries(path, "the area as a polygon file GDAL reads (GeoPackage, shapefile, "
                                                  "GeoJSON...)")
    shapes = [part for geometry in geometries for part in polygon_parts(geometry)]
    if not shapes:
        raise InputError(f"The area '{path}' holds no polygons ({kind or 'no features'}).",
                         "Give the area of interest as polygons: draw them in QGIS and save the layer as a "
                         "GeoPackage, or buffer the points or lines.")
    return AreaPolygons(shapes, crs or "")


def outside_area(path: str, area: Optional[AreaPolygons]) -> bool:
    """Whether the area of interest misses the raster at `path` altogether, found from their bounds alone (as the
    pipeline finds it). A product or a set of band files is found out when its bands are stacked, in the run; a
    raster the area cannot be put on (no CRS) raises the pipeline's InputError."""
    if area is None or needs_stacking(path):
        return False
    try:
        plan_area(raster.inspect(path), polygons=area.shapes, polygons_crs=area.crs)
    except NothingToMap:
        return True
    return False


def load_reference(path: str, threshold: float) -> list[Reference]:
    """--reference checked once, before the engine starts (InputError for an unusable one)."""
    if not path:
        return []
    ref = reference_from_path(path, threshold)
    if isinstance(ref, RasterReference):
        check_raster_reference(ref)
    return [ref]
