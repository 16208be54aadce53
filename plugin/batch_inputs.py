"""What a batch maps: the rasters and Sentinel-2 products named on its command line (a folder stands for those in
it), each with its output path, checked before any engine starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .core import raster
from .core.errors import InputError
from .core.flood_extent import ExtentStats
from .core.jobs import MapFloodsResult, Stats
from .core.output import check_output_path
from .core.reference import RasterReference, Reference, check_raster_reference
from .core.reference_files import reference_from_path
from .core.sentinel2_product import metadata_of

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
PRODUCT_SUFFIXES = (".zip", ".safe")  # Sentinel-2 products as downloaded (checked by their metadata file)
OUTPUT_SUFFIX = "_flood.tif"


@dataclass
class Job:
    input_path: str
    output_path: str
    error: Optional[str] = None
    seconds: float = 0.0
    stats: Optional[Stats | ExtentStats | MapFloodsResult] = None


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
    if suffix in RASTER_SUFFIXES:
        return f.is_file() and not _is_output(f, out_dir)
    return suffix in PRODUCT_SUFFIXES and is_product(str(f))


def expand_inputs(inputs: list[str], out_dir: Path, recursive: bool = False) -> list[str]:
    """Files and products as given; a folder becomes its rasters and products (sorted; subfolders with
    `recursive`), minus our outputs."""
    expanded: list[str] = []
    for item in inputs:
        folder = Path(item)
        if not folder.is_dir() or is_product(item):
            expanded.append(item)
            continue
        candidates = folder.rglob("*") if recursive else folder.iterdir()
        found = sorted(f for f in candidates if _is_input(f, folder, out_dir))
        if not found:
            where = "it or its subfolders" if recursive else "it"
            raise InputError(
                f"The folder '{item}' has no rasters: no " + ", ".join(f"*{s}" for s in RASTER_SUFFIXES)
                + f" file and no Sentinel-2 product (*.zip, *.SAFE) in {where}.",
                "Pass the raster files themselves, or --recursive for rasters in subfolders.",
            )
        expanded += [str(f) for f in found]
    return expanded


def plan(inputs: list[str], out_dir: Path) -> list[Job]:
    """Output names from input stems, made unique (two folders may both hold scene.tif)."""
    jobs: list[Job] = []
    used: set[str] = set()
    for path in inputs:
        stem = Path(path).stem or "raster"
        name = f"{stem}{OUTPUT_SUFFIX}"
        n = 2
        while name in used:
            name = f"{stem}_{n}{OUTPUT_SUFFIX}"
            n += 1
        used.add(name)
        jobs.append(Job(os.path.abspath(path), str(out_dir / name)))
    return jobs


def validate(job: Job, indices: Optional[list[int]]) -> None:
    """Cheap checks before the engine spends time on the raster (a product's, when its bands are stacked)."""
    if not is_product(job.input_path):
        info = raster.inspect(job.input_path)
        if not info.is_file:
            raise InputError(f"'{job.input_path}' is not a local file.", "The batch reads local files only.")
        check_indices(job.input_path, info.count, indices)
    check_output_path(job.output_path, job.input_path)


def check_indices(path: str, count: int, indices: Optional[list[int]]) -> None:
    if indices and max(indices) >= count:
        raise InputError(
            f"'{path}' has {count} band(s); the model would get its band index {max(indices)}.",
            "Pass --indices with the 0-based bands in the model's order (e.g. 1,2,3,8,11,12 for Sentinel-2 L1C).",
        )


def load_reference(path: str, threshold: float) -> list[Reference]:
    """--reference checked once, before the engine starts (InputError for an unusable one)."""
    if not path:
        return []
    ref = reference_from_path(path, threshold)
    if isinstance(ref, RasterReference):
        check_raster_reference(ref)
    return [ref]
