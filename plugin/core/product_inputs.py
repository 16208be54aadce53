"""A request's inputs that are downloads to stack, each replaced for the run by its stack, in a temporary folder
removed when the run ends, whatever happens.

A Sentinel-2 product (sentinel2_product.py), given whole or as one of its band files, becomes the stack of its
bands as INPUT or PRE_EVENT, and its scene classification (SCL) or, for L1C, its cloud classification mask as
CLOUD_MASK or PRE_EVENT_CLOUD_MASK. A single band file of a set (band_files.py) as INPUT or PRE_EVENT, with no
BANDS given, becomes the stack of its set. With CLOUD_MASK given and PRE_EVENT_CLOUD_MASK empty, a pre-event
product or band file brings its own cloud mask (the SCL, the QA_PIXEL beside it), as a pre-event image with a
cloud band does; otherwise the log names such a file. A layer's additional no data values follow its bands onto
the stack. Any other input is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Optional

from .band_files import BandFiles, band_files_of
from .band_files import write_stack as write_band_stack
from .bands import DEFAULT_MODEL_BANDS, band_token
from .errors import InputError, MissingBands
from .jobs import MapFloodsRequest
from .layer_nodata import NodataRange
from .progress import Progress
from .sentinel2_product import Product, band_of_file, metadata_of, metadata_of_band_file, read_product, write_stack

IMAGES = (("input_path", "INPUT", "layer_nodata"), ("pre_event_path", "PRE_EVENT", "pre_event_layer_nodata"))
CLOUD_MASKS = (("cloud_mask_path", "CLOUD_MASK", "input_path"),
               ("pre_event_cloud_mask_path", "PRE_EVENT_CLOUD_MASK", "pre_event_path"))


def has_products(request: MapFloodsRequest) -> bool:
    """Whether any input of the request is a Sentinel-2 product or a band file of a set, to be stacked."""
    return (any(metadata_of(getattr(request, fields[0])) for fields in CLOUD_MASKS)
            or any(_image_metadata(getattr(request, fields[0])) or _band_files(request, getattr(request, fields[0]))
                   for fields in IMAGES))


def _image_metadata(source: str) -> Optional[str]:
    """The metadata file of the Sentinel-2 product an image is, or is a band file of."""
    return metadata_of(source) or metadata_of_band_file(source)


def _band_files(request: MapFloodsRequest, source: str) -> Optional[BandFiles]:
    """The set of band files an image is one of, unless BANDS says which of its bands to map."""
    return None if request.bands else band_files_of(source)


@contextlib.contextmanager
def stacked(request: MapFloodsRequest, progress: Progress) -> Iterator[MapFloodsRequest]:
    """The request with its Sentinel-2 products and band files replaced by their stacks (and cloud masks), for
    the run."""
    folder = tempfile.mkdtemp(prefix="floodmapper-stack-")
    try:
        changes: dict[str, Any] = {}
        incomplete: list[tuple[str, BandFiles]] = []  # (label, set) of the sets that lack a Sen1Floods11 band
        own_clouds: dict[str, _OwnCloud] = {}  # by image: the cloud file its product or band files come with
        read: dict[str, Product] = {}  # by metadata file: the same product as INPUT and CLOUD_MASK is read once

        def product_of(metadata: str) -> Product:
            if metadata not in read:
                read[metadata] = read_product(metadata)
            return read[metadata]

        for name, label, nodata in IMAGES:
            metadata = _image_metadata(getattr(request, name))
            if metadata is None:
                band_files = _band_files(request, getattr(request, name))
                if band_files is not None:
                    changes.update(_set_stacked(band_files, request, name, label, nodata,
                                                _own_folder(folder, label), progress))
                    if band_files.missing():
                        incomplete.append((label, band_files))
                    if band_files.cloud_file:
                        file_name = posixpath.basename(band_files.cloud_file.replace("\\", "/"))
                        own_clouds[name] = _OwnCloud(band_files.cloud_file, f"band files' {file_name}",
                                                     f"{file_name} lies beside the band files")
                continue
            product = product_of(metadata)
            changes[name] = write_stack(product, _own_folder(folder, label))
            progress.info(f"{label} is the Sentinel-2 {product.level} product {product.name}: its {len(product.bands)} "
                          f"spectral bands are read from its band files ({product.describe()}), on the "
                          f"{min(res for _, res, _ in product.bands)} m grid")
            if getattr(request, nodata):
                changes[nodata] = _on_stack(getattr(request, nodata), getattr(request, name), product, label, progress)
            if product.cloud_file:
                own_clouds[name] = _OwnCloud(product.cloud_file, f"product's {_mask_name(product)}",
                                             f"{product.name} has a {_mask_name(product)}",
                                             " (the product itself will do)")
        for name, label, image in CLOUD_MASKS:
            value = getattr(request, name)
            metadata = metadata_of(value)
            if metadata is not None:
                product = product_of(metadata)
                if not product.cloud_file:
                    raise InputError(f"{label} is the Sentinel-2 product {product.name}, which has no cloud mask "
                                     "(no SCL band, no MSK_CLASSI_B00 file).",
                                     f"Give a cloud raster as {label}, or leave it empty.")
                changes[name] = product.cloud_file
                progress.info(f"{label}: the product's {_mask_name(product)} ({product.cloud_file})")
            elif not value and image in own_clouds:
                own = own_clouds[image]
                if name == "pre_event_cloud_mask_path" and request.cloud_mask_path:
                    # as for a pre-event image that carries its own cloud band: the event is cloud-masked, so
                    # the pre-event clouds must give no reference either
                    changes[name] = own.file
                    progress.info(f"{label}: the pre-event {own.what} ({own.file}), since CLOUD_MASK is given")
                    continue
                progress.info(f"{own.found} ({own.file}); it is not used as a cloud mask unless given as "
                              f"{label}{own.given_as}")
        if "input_path" in changes:  # the map names what the user gave, not the stack made of it
            changes["source"] = request.source or request.input_path
        try:
            yield replace(request, **changes)
        except MissingBands as exc:
            if not incomplete:
                raise
            label, band_files = incomplete[0]
            raise MissingBands(f"{exc.message} {label} was stacked from the band files in {band_files.folder} "
                               f"({band_files.describe()}), and none of them gives "
                               f"{', '.join(band_files.missing())}.",
                               "Put the band files of the missing bands (the same scene, named as these) into "
                               "that folder and run again.") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class _OwnCloud:
    """The cloud file an image's product or band files come with, and how the log speaks of it."""

    file: str
    what: str  # "product's scene classification (SCL)", "band files' …_QA_PIXEL.TIF"
    found: str  # "S2B_… has a scene classification (SCL)", "…_QA_PIXEL.TIF lies beside the band files"
    given_as: str = ""  # what else may be given as the cloud mask


def _set_stacked(band_files: BandFiles, request: MapFloodsRequest, name: str, label: str, nodata: str,
                 folder: str, progress: Progress) -> dict[str, Any]:
    """The request's changes for an image that is one band file of a set: the set's stack, and the layer's
    additional no data values (on its one band) on that file's band of the stack."""
    changes: dict[str, Any] = {name: write_band_stack(band_files, folder)}
    progress.info(f"{label} is one of {len(band_files.files)} band files in {band_files.folder} "
                  f"({band_files.describe()}): they are stacked in this order, at the finest resolution among them")
    missing = band_files.missing()
    if missing:
        progress.warning(f"{label}: no band file in {band_files.folder} gives {', '.join(missing)}, which "
                         f"Prithvi-EO-2.0 models fine-tuned on Sen1Floods11 take ({', '.join(DEFAULT_MODEL_BANDS)}). "
                         "If the model needs them, download their band files into the same folder.")
    ranges = getattr(request, nodata)
    if ranges:
        changes[nodata] = tuple(replace(r, band=band_files.given + 1) for r in ranges if r.band == 1)
    return changes


def _on_stack(ranges: tuple[NodataRange, ...], source: str, product: Product, label: str,
              progress: Progress) -> tuple[NodataRange, ...]:
    """The layer's additional no data values, set on the bands of the subdataset or band file the layer shows
    (the 10 m subdataset: B4, B3, B2, B8), moved to the same bands of the stack; those on no spectral band are
    left out, with a note."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(source) as src:
            names = [band_token(d) for d in src.descriptions]
    except RasterioError:
        names = []
    if metadata_of_band_file(source):  # one band file of the product (T33TWM_20240501T100031_B02_10m.jp2)
        names = [band_token(band_of_file(source))]
    stack = [band_token(band) for band, _, _ in product.bands]
    moved = tuple(replace(r, band=stack.index(names[r.band - 1]) + 1) for r in ranges
                  if 0 < r.band <= len(names) and names[r.band - 1] in stack)
    if len(moved) < len(ranges):
        progress.warning(f"{label}: {len(ranges) - len(moved)} of the layer's additional no data values are on no "
                         f"spectral band of the product, and are not used")
    return moved


def _own_folder(folder: str, label: str) -> str:
    """A subfolder per image, so that an event and a pre-event product of the same name do not collide."""
    path = os.path.join(folder, label)
    os.makedirs(path, exist_ok=True)
    return path


def _mask_name(product: Product) -> str:
    return "scene classification (SCL)" if product.level == "L2A" else "cloud classification mask (MSK_CLASSI)"
