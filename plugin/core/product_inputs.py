"""A request's inputs that are Sentinel-2 products (sentinel2_product.py), each replaced for the run by the stack
of its bands, in a temporary folder removed when the run ends, whatever happens.

INPUT and PRE_EVENT become the product's stack; a product given as CLOUD_MASK or PRE_EVENT_CLOUD_MASK becomes its
scene classification (SCL) or, for L1C, its cloud classification mask. A layer's additional no data values
follow its bands onto the stack. With CLOUD_MASK given and
PRE_EVENT_CLOUD_MASK empty, a pre-event product is its own cloud mask, as a pre-event image with a cloud band is.
Any other input is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from .bands import band_token
from .errors import InputError
from .jobs import MapFloodsRequest
from .layer_nodata import NodataRange
from .progress import Progress
from .sentinel2_product import Product, metadata_of, read_product, write_stack

IMAGES = (("input_path", "INPUT", "layer_nodata"), ("pre_event_path", "PRE_EVENT", "pre_event_layer_nodata"))
CLOUD_MASKS = (("cloud_mask_path", "CLOUD_MASK", "input_path"),
               ("pre_event_cloud_mask_path", "PRE_EVENT_CLOUD_MASK", "pre_event_path"))


def has_products(request: MapFloodsRequest) -> bool:
    """Whether any input of the request is a Sentinel-2 product."""
    return any(metadata_of(getattr(request, fields[0])) for fields in IMAGES + CLOUD_MASKS)


@contextlib.contextmanager
def stacked(request: MapFloodsRequest, progress: Progress) -> Iterator[MapFloodsRequest]:
    """The request with its Sentinel-2 products replaced by their stacks (and cloud masks), for the run."""
    folder = tempfile.mkdtemp(prefix="floodmapper-stack-")
    try:
        changes: dict[str, Any] = {}
        products: dict[str, Product] = {}
        read: dict[str, Product] = {}  # by metadata file: the same product as INPUT and CLOUD_MASK is read once

        def product_of(metadata: str) -> Product:
            if metadata not in read:
                read[metadata] = read_product(metadata)
            return read[metadata]

        for name, label, nodata in IMAGES:
            metadata = metadata_of(getattr(request, name))
            if metadata is None:
                continue
            product = product_of(metadata)
            products[name] = product
            changes[name] = write_stack(product, _own_folder(folder, label))
            progress.info(f"{label} is the Sentinel-2 {product.level} product {product.name}: its {len(product.bands)} "
                          f"spectral bands are read from its band files ({product.describe()}), on the "
                          f"{min(res for _, res, _ in product.bands)} m grid")
            if getattr(request, nodata):
                changes[nodata] = _on_stack(getattr(request, nodata), getattr(request, name), product, label, progress)
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
            elif not value and image in products and products[image].cloud_file:
                product = products[image]
                if name == "pre_event_cloud_mask_path" and request.cloud_mask_path:
                    # as for a pre-event image that carries its own cloud band: the event is cloud-masked, so
                    # the pre-event clouds must give no reference either
                    changes[name] = product.cloud_file
                    progress.info(f"{label}: the pre-event product's {_mask_name(product)} "
                                  f"({product.cloud_file}), since CLOUD_MASK is given")
                    continue
                progress.info(f"{product.name} has a {_mask_name(product)} ({product.cloud_file}); it is not "
                              f"used as a cloud mask unless given as {label} (the product itself will do)")
        yield replace(request, **changes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _on_stack(ranges: tuple[NodataRange, ...], source: str, product: Product, label: str,
              progress: Progress) -> tuple[NodataRange, ...]:
    """The layer's additional no data values, set on the bands of the subdataset the layer shows (the 10 m one:
    B4, B3, B2, B8), moved to the same bands of the stack; those on no spectral band are left out, with a note."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(source) as src:
            names = [band_token(d) for d in src.descriptions]
    except RasterioError:
        names = []
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
