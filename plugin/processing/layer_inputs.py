"""The algorithms' inputs as the core takes them: a raster layer's GDAL source and added nodata values, and a
BANDS list."""

from __future__ import annotations

import os

from ..core.errors import InputError
from ..core.layer_nodata import NodataRange
from ..core.sentinel2_product import metadata_of


def parse_bands(text: str) -> list[int] | None:
    """'2,3,4, 9 12;13' -> [2, 3, 4, 9, 12, 13]; '' -> None (automatic)."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        bands = [int(p) for p in parts]
    except ValueError:
        raise InputError(
            f"BANDS '{text}' is not a list of band numbers.",
            "Give 1-based band numbers in the model's band order, e.g. 2,3,4,9,12,13, or leave it empty.",
        ) from None
    if any(b < 1 for b in bands):
        raise InputError(f"BANDS '{text}' has a band number below 1.", "Band numbers start at 1.")
    return bands


def layer_source(layer) -> str:
    """The GDAL source the server or the client can read, or an InputError naming the way out.

    Besides files and URLs, any source QGIS's GDAL provider opened is taken as it is: a member of a zip
    (`/vsizip/…`, as the Browser adds a band of a downloaded Sentinel-2 zip), a subdataset
    (`SENTINEL2_L2A:…:10m:EPSG_32633`). The core opens it with GDAL too.
    """
    if layer.providerType() != "gdal":
        raise InputError(
            f"Layer '{layer.name()}' is a {layer.providerType()} layer, not a raster file.",
            "Export it to GeoTIFF first (right-click ▸ Export ▸ Save As…) and map floods on the export.",
        )
    source = layer.source().split("|")[0]
    if source.startswith(("/vsicurl/", "http://", "https://")) or os.path.exists(source) or layer.isValid():
        return source
    raise InputError(
        f"Layer '{layer.name()}' is not a readable file or URL ({source}).",
        "Export it to GeoTIFF first (right-click ▸ Export ▸ Save As…).",
    )


def load_gdal_sources(parameters: dict, context, names: tuple[str, ...]) -> None:
    """Raster sources given as text that QGIS's Processing does not load itself, loaded with GDAL.

    `qgis_process` and `processing.run` load a layer from text only when it names a file (QGIS 3.22-3.3x): a
    URL (`https://…`, `/vsicurl/…`), a member of a zip (`/vsizip/…`) or a subdataset fails their check with
    "Could not load source layer". Each such value of the parameters `names` that GDAL opens becomes a layer
    in the context's temporary store, where Processing finds it by its source. A Sentinel-2 product's folder,
    .zip or metadata file becomes the layer of its first subdataset.
    """
    from qgis.core import QgsProcessingUtils, QgsRasterLayer

    for name in names:
        value = parameters.get(name)
        if not isinstance(value, str) or not value.strip():
            continue
        if _load_product(value, context):
            continue
        if os.path.exists(value):
            continue
        if QgsProcessingUtils.mapLayerFromString(value, context, False) is not None:
            continue  # a layer id or name of the project, or a source Processing loads itself
        layer = QgsRasterLayer(value, os.path.basename(value.rstrip("/")) or value, "gdal")
        if layer.isValid():
            context.temporaryLayerStore().addMapLayer(layer)


def _load_product(value: str, context) -> bool:
    """A Sentinel-2 product given as its folder, .zip or metadata file, which QGIS opens only as subdatasets,
    loaded as its first one (10 m) under the name `value`, where Processing finds it; the core stacks the whole
    product from it. False for anything else."""
    from qgis.core import QgsProcessingUtils, QgsRasterLayer

    if value.upper().startswith("SENTINEL2_") or QgsProcessingUtils.mapLayerFromString(value, context, False):
        return False
    metadata = metadata_of(value)
    if metadata is None:
        return False
    from osgeo import gdal

    try:
        dataset = gdal.OpenEx(metadata, gdal.OF_RASTER)
        subdatasets = dataset.GetSubDatasets() if dataset is not None else []
    except RuntimeError:  # GDAL's exceptions, when something turned them on
        subdatasets = []
    if subdatasets:
        layer = QgsRasterLayer(subdatasets[0][0], value, "gdal")
        if layer.isValid():
            context.temporaryLayerStore().addMapLayer(layer)
    return True


def layer_nodata(layer) -> tuple[tuple[NodataRange, ...], list[str]]:
    """The values the layer adds to its raster's nodata (Layer Properties ▸ Transparency ▸ Additional no data
    value), band by band, and warnings for what the plugin cannot follow: a band whose own nodata value the layer
    is set to ignore (the plugin still counts it as no data, as GDAL does)."""
    from qgis.core import QgsRasterRange

    bounds = QgsRasterRange.BoundsType
    provider = layer.dataProvider()
    if provider is None:
        return (), []
    ranges: list[NodataRange] = []
    ignored: list[int] = []
    for band in range(1, layer.bandCount() + 1):
        for r in provider.userNoDataValues(band):
            ranges.append(NodataRange(band, r.min(), r.max(),
                                      include_low=r.bounds() in (bounds.IncludeMinAndMax, bounds.IncludeMin),
                                      include_high=r.bounds() in (bounds.IncludeMinAndMax, bounds.IncludeMax)))
        if provider.sourceHasNoDataValue(band) and not provider.useSourceNoDataValue(band):
            ignored.append(band)
    warnings = []
    if ignored:
        warnings.append(f"Layer '{layer.name()}' is set not to use the nodata value of band(s) {ignored} "
                        "(Layer Properties ▸ Transparency), but the flood map still leaves those pixels out: the "
                        "plugin reads the raster's file, where they are no data. To map them, map a copy without it "
                        "(Raster ▸ Conversion ▸ Translate, with -a_nodata none as an additional parameter).")
    return tuple(ranges), warnings
