"""Processing algorithm `floodmapper:map_floods`: a raster layer in, a styled flood GeoTIFF out.

Thin glue: parameters -> core MapFloodsRequest -> core.pipeline.map_floods -> outputs + post-processor.
The layer is read in prepareAlgorithm (main thread); processAlgorithm touches no project or iface, so the
algorithm runs in a background thread, in the batch dialog (one context per row) and in qgis_process.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsDistanceArea,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtGui import QIcon

from ..core.errors import FloodMapperError, InputError
from ..core.model_spec import PRESETS
from ..toolbelt import log as qlog
from ..toolbelt import settings as stored_settings
from ..toolbelt.compat import FIELD_DOUBLE, FIELD_INT, WKB_POLYGON
from ..toolbelt.dependencies import require_dependencies
from ..toolbelt.i18n import tr
from .feedback import FeedbackProgress
from .postprocessor import FloodLayerPostProcessor

if TYPE_CHECKING:  # the pipeline imports numpy and rasterio: only when an algorithm runs
    from ..core.pipeline import MapFloodsResult

LOG = logging.getLogger("floodmapper")
ICON = Path(__file__).resolve().parents[2] / "resources" / "icons" / "floodmapper.svg"
HELP_URL = "https://example.org/floodmapper#map-floods"


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


def is_loopback_url(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def layer_source(layer) -> str:
    """The GDAL source the server or the client can read, or an InputError naming the way out."""
    if layer.providerType() != "gdal":
        raise InputError(
            f"Layer '{layer.name()}' is a {layer.providerType()} layer, not a raster file.",
            "Export it to GeoTIFF first (right-click ▸ Export ▸ Save As…) and map floods on the export.",
        )
    source = layer.source().split("|")[0]
    if source.startswith(("/vsicurl/", "http://", "https://")) or os.path.exists(source):
        return source
    raise InputError(
        f"Layer '{layer.name()}' is not a readable file or URL ({source}).",
        "Export it to GeoTIFF first (right-click ▸ Export ▸ Save As…).",
    )


STYLE = Path(__file__).resolve().parents[2] / "resources" / "styles" / "flood.qml"


def write_style_sidecar(output: str) -> None:
    """Put flood.qml beside the GeoTIFF: QGIS applies it whenever the file is opened (qgis_process, batch)."""
    import shutil

    sidecar = Path(output).with_suffix(".qml")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    shutil.copyfile(STYLE, tmp)
    os.replace(tmp, sidecar)


def engine_log(line: str) -> None:
    """The local engine's log lines go to the QGIS log panel (tab "Flood Mapper")."""
    qlog.log(f"[engine] {line}")


def summary_text(input_name: str, result: MapFloodsResult) -> str:
    return tr(
        "Flood map of {name}: water {water:,} of {valid:,} valid pixels ({fraction:.2%}), "
        "{area:.3f} km². Model {model} via {transport}."
    ).format(
        name=input_name, water=result.water_pixels, valid=result.valid_pixels,
        fraction=result.water_fraction, area=result.water_area_km2, model=result.model,
        transport=result.transport,
    )


class MapFloodsAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    BACKEND = "BACKEND"
    SERVER_URL = "SERVER_URL"
    MODEL = "MODEL"
    MODEL_SPEC = "MODEL_SPEC"
    TRANSPORT = "TRANSPORT"
    BANDS = "BANDS"
    OVERLAP = "OVERLAP"
    CONCURRENCY = "CONCURRENCY"
    SCALE = "SCALE"
    OFFSET = "OFFSET"
    OUTPUT = "OUTPUT"
    PROBABILITY = "PROBABILITY"
    WATER_POLYGONS = "WATER_POLYGONS"
    MIN_AREA = "MIN_AREA"
    WATER_PIXELS = "WATER_PIXELS"
    VALID_PIXELS = "VALID_PIXELS"
    WATER_FRACTION = "WATER_FRACTION"
    WATER_AREA_KM2 = "WATER_AREA_KM2"

    def __init__(self) -> None:
        super().__init__()
        self._source = ""
        self._input_name = ""
        self._source_error: InputError | None = None

    # --- identity ---------------------------------------------------------------------------------------
    def createInstance(self) -> MapFloodsAlgorithm:
        return MapFloodsAlgorithm()

    def name(self) -> str:
        return "map_floods"

    def displayName(self) -> str:
        return tr("Map floods")

    def shortDescription(self) -> str:
        return tr("Segment water in a multispectral raster with a model served by vLLM")

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def tags(self) -> list[str]:
        return ["flood", "water", "segmentation", "prithvi", "terratorch", "vllm", "sentinel-2", "ai"]

    def helpUrl(self) -> str:
        return HELP_URL

    def shortHelpString(self) -> str:
        return tr(
            "Maps water in a multispectral raster (Sentinel-2-like reflectance) with a TerraTorch segmentation "
            "model served by vLLM, and writes a GeoTIFF on the input's exact grid: 1 = water, 0 = not water, "
            "255 = no data (where any used input band has no data).\n\n"
            "<b>Backend</b>: a remote vLLM server (its URL, optionally with an authentication configuration "
            "set in Flood Mapper's options) or the local engine that the plugin starts on this computer "
            "(GPU, or CPU where there is none) with the bundled demo model unless another is configured.\n\n"
            "<b>Transport</b>: image-to-image lets the server read the raster (a local/loopback server, a "
            "path mapping, or an http(s) URL); tensor-to-tensor tiles and uploads the raster from this "
            "computer to any server, with overlap, progress and cancel. Auto picks what the server and the "
            "layer allow.\n\n"
            "<b>Bands</b>: empty picks the model's bands from band descriptions (B02, B03, B04, B8A, B11, "
            "B12 or BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2), else the first bands with a warning.\n\n"
            "Outputs the water pixel count, valid pixel count, water fraction and water area in km² "
            "(equal-area for geographic CRSs)."
        )

    # --- parameters -------------------------------------------------------------------------------------
    def initAlgorithm(self, config=None) -> None:
        settings = stored_settings.load()
        last_backend = stored_settings.get_value("last_backend", 1)
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster (multispectral)")))
        p = QgsProcessingParameterEnum(
            self.BACKEND, tr("Backend"), options=[tr("Remote vLLM server"), tr("Local vLLM engine")],
            defaultValue=int(last_backend) if str(last_backend) in ("0", "1") else 1,
        )
        p.setHelp(tr("Remote: the server at SERVER_URL. Local: the engine the plugin starts on this computer."))
        self.addParameter(p)
        p = QgsProcessingParameterString(
            self.SERVER_URL, tr("Server URL (remote backend)"), defaultValue=settings.server_url, optional=True
        )
        p.setHelp(tr("Base URL of the vLLM server, e.g. http://gpu-box:8000 (empty: the one in the options)."))
        self.addParameter(p)
        p = QgsProcessingParameterString(self.MODEL, tr("Served model name"), defaultValue="", optional=True)
        p.setHelp(tr("The model's name on the server; empty uses the only model the server lists."))
        self.addParameter(p)
        p = QgsProcessingParameterEnum(
            self.TRANSPORT, tr("Transport"),
            options=[tr("Auto"), tr("Image-to-image (server reads the raster)"),
                     tr("Tensor-to-tensor (plugin tiles and uploads)")],
            defaultValue=0,
        )
        p.setHelp(tr("Auto picks what the server supports and what can reach the raster."))
        self.addParameter(p)
        p = QgsProcessingParameterString(
            self.BANDS, tr("Input bands in the model's order (1-based, comma-separated)"),
            defaultValue="", optional=True,
        )
        p.setHelp(tr("E.g. 2,3,4,9,12,13 for a 13-band Sentinel-2 L1C file; empty = from band descriptions."))
        self.addParameter(p)
        advanced = [
            QgsProcessingParameterString(
                self.MODEL_SPEC, tr("Model spec (tensor transport): config.json folder, file, URL or preset"),
                defaultValue="", optional=True,
            ),
            QgsProcessingParameterNumber(
                self.OVERLAP, tr("Tile overlap (fraction of a tile, tensor transport)"),
                type=QgsProcessingParameterNumber.Type.Double, minValue=0.0, maxValue=0.5, optional=True,
            ),
            QgsProcessingParameterNumber(
                self.CONCURRENCY, tr("Requests in flight (tensor transport)"),
                type=QgsProcessingParameterNumber.Type.Integer, minValue=1, maxValue=64, optional=True,
            ),
            QgsProcessingParameterNumber(
                self.SCALE, tr("Reflectance scale (value × scale + offset; empty = auto)"),
                type=QgsProcessingParameterNumber.Type.Double, optional=True,
            ),
            QgsProcessingParameterNumber(
                self.OFFSET, tr("Reflectance offset (e.g. -0.1 for Sentinel-2 L2A from 2022)"),
                type=QgsProcessingParameterNumber.Type.Double, optional=True,
            ),
        ]
        helps = [
            tr("Where the tensor transport learns the model's bands, means/stds, tile size and classes: the "
               "served model's vLLM config.json (its folder, the file, or an http(s) URL) or a preset (" +
               ", ".join(PRESETS) + "). Empty: the preset the served model's name stands for, or the "
               "served folder when it is on this computer (the local engine)."),
            tr("Overlapping tiles are blended smoothly so no seam shows; empty = the default (1/8 of a tile)."),
            tr("How many tile requests are sent at once; empty = the default."),
            tr("Multiplier from stored values to reflectance 0–1; empty detects ×10000 integer reflectance."),
            tr("Added after scaling; e.g. -0.1 for the −1000 offset of newer Sentinel-2 L2A products."),
        ]
        for param, text in zip(advanced, helps):
            param.setHelp(text)
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Flood map")))
        p = QgsProcessingParameterRasterDestination(
            self.PROBABILITY, tr("Water probability (tensor transport)"), optional=True,
            createByDefault=False,
        )
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(p)
        p = QgsProcessingParameterFeatureSink(
            self.WATER_POLYGONS, tr("Water polygons"), type=QgsProcessing.SourceType.TypeVectorPolygon,
            optional=True, createByDefault=False,
        )
        p.setHelp(tr("Water areas as polygons with their area in m² (optional)."))
        self.addParameter(p)
        p = QgsProcessingParameterNumber(
            self.MIN_AREA, tr("Smallest water polygon to keep (m²)"),
            type=QgsProcessingParameterNumber.Type.Double, minValue=0.0, defaultValue=0.0,
        )
        p.setHelp(tr("Water polygons smaller than this are left out of WATER_POLYGONS (the raster keeps them)."))
        self.addParameter(p)
        self.addOutput(QgsProcessingOutputNumber(self.WATER_PIXELS, tr("Water pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.VALID_PIXELS, tr("Valid pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.WATER_FRACTION, tr("Water fraction of valid pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.WATER_AREA_KM2, tr("Water area (km²)")))

    # --- run ----------------------------------------------------------------------------------------------
    def prepareAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> bool:
        """Main thread: read what is needed from the layer so processAlgorithm never touches it."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(
                tr("INPUT is not a raster layer or a readable raster file. Choose a raster layer or file.")
            )
        self._input_name = layer.name()
        try:
            self._source = layer_source(layer)
        except InputError as err:
            self._source_error = err  # reported from processAlgorithm, with the other errors
        return True

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):
        require_dependencies()
        progress = FeedbackProgress(feedback)
        failure = ""
        try:
            result = self._run(parameters, context, progress)
        except FloodMapperError as err:
            failure = str(err)
            # The traceback's frames hold the feedback adapter, the request and HTTP internals in reference
            # cycles; clearing them lets QGIS's objects be freed now rather than by a late garbage
            # collection (after QGIS has shut down, in scripts and qgis_process, that segfaults).
            traceback.clear_frames(err.__traceback__)
        if failure:
            qlog.log(f"Map floods failed on '{self._input_name}': {failure}", Qgis.MessageLevel.Critical)
            raise QgsProcessingException(failure)
        summary = summary_text(self._input_name, result)
        feedback.pushInfo(summary)
        qlog.log(summary)
        for warning in result.warnings:
            feedback.pushWarning(warning)
        output = result.output_path
        write_style_sidecar(output)
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.name = f"{self._input_name} – flood"
            details.setPostProcessor(FloodLayerPostProcessor.create(summary))
        outputs = {
            self.OUTPUT: output,
            self.WATER_PIXELS: result.water_pixels,
            self.VALID_PIXELS: result.valid_pixels,
            self.WATER_FRACTION: result.water_fraction,
            self.WATER_AREA_KM2: result.water_area_km2,
        }
        if result.probability_path:
            outputs[self.PROBABILITY] = result.probability_path
        polygons_id = self._write_polygons(parameters, context, feedback, output)
        if polygons_id:
            outputs[self.WATER_POLYGONS] = polygons_id
        return outputs

    def _write_polygons(self, parameters, context, feedback, classes_path: str) -> str | None:
        """Trace water areas into the optional WATER_POLYGONS sink, with ellipsoidal areas in m²."""
        from ..core.polygons import water_polygons

        if not parameters.get(self.WATER_POLYGONS):
            return None
        import rasterio

        with rasterio.open(classes_path) as ds:
            crs = QgsCoordinateReferenceSystem.fromWkt(ds.crs.to_wkt()) if ds.crs else QgsCoordinateReferenceSystem()
        fields = QgsFields()
        fields.append(QgsField("id", FIELD_INT))
        fields.append(QgsField("area_m2", FIELD_DOUBLE))
        fields.append(QgsField("pixels", FIELD_INT))
        sink, dest_id = self.parameterAsSink(
            parameters, self.WATER_POLYGONS, context, fields, WKB_POLYGON, crs,
        )
        if sink is None:
            return None
        measure = QgsDistanceArea()
        measure.setSourceCrs(crs, context.transformContext())
        ellipsoid = context.ellipsoid()
        if not ellipsoid or ellipsoid.upper() == "NONE":  # qgis_process and scripts have no project ellipsoid
            ellipsoid = "EPSG:7030"  # WGS 84
        measure.setEllipsoid(ellipsoid)
        min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        kept = dropped = 0
        for polygon in water_polygons(classes_path):
            if feedback.isCanceled():
                break
            geometry = QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring] for ring in polygon.rings])
            area = measure.measureArea(geometry)
            if area < min_area:
                dropped += 1
                continue
            kept += 1
            feature = QgsFeature(fields)
            feature.setGeometry(geometry)
            feature.setAttributes([kept, area, polygon.pixels])
            sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
        feedback.pushInfo(tr("Water polygons: {kept} kept, {dropped} smaller than {min} m² left out.").format(
            kept=kept, dropped=dropped, min=min_area))
        return dest_id

    def _run(self, parameters, context, progress: FeedbackProgress) -> MapFloodsResult:
        from ..core.client import VllmClient
        from ..core.pipeline import (
            BACKEND_LOCAL,
            BACKEND_REMOTE,
            TRANSPORT_AUTO,
            TRANSPORT_IMAGE,
            TRANSPORT_TENSOR,
            MapFloodsRequest,
            map_floods,
        )
        from ..toolbelt.auth import headers_for
        from ..toolbelt.proxy import proxies_for

        backends = [BACKEND_REMOTE, BACKEND_LOCAL]  # the BACKEND and TRANSPORT options, in order
        transports = [TRANSPORT_AUTO, TRANSPORT_IMAGE, TRANSPORT_TENSOR]
        if self._source_error is not None:
            raise self._source_error
        backend = backends[self.parameterAsEnum(parameters, self.BACKEND, context)]
        transport = transports[self.parameterAsEnum(parameters, self.TRANSPORT, context)]
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        probability = self.parameterAsOutputLayer(parameters, self.PROBABILITY, context) or ""
        settings = stored_settings.load()
        stored_settings.set_value("last_backend", backends.index(backend))

        if backend == BACKEND_LOCAL:
            from ..core.engine import get_engine

            # one server, one transport: a forced tensor transport needs an engine without the IOProcessor,
            # and so does auto on a raster too large for image-to-image
            tensor = transport == TRANSPORT_TENSOR or (
                transport == TRANSPORT_AUTO and self._too_large_for_image(settings, progress))
            engine = get_engine(settings, on_log=engine_log, io_processor=not tensor)
            url = engine.ensure_running(progress, timeout=settings.startup_timeout)
            headers: dict[str, str] = {}
            server_reads_files = True
        else:
            url = (self.parameterAsString(parameters, self.SERVER_URL, context) or settings.server_url).strip()
            if not url:
                raise InputError("No server URL.", "Set SERVER_URL, or the server URL in Flood Mapper's options.")
            headers = headers_for(settings.authcfg)
            server_reads_files = is_loopback_url(url) or bool(settings.path_map_local)
        verify: bool | str = settings.ca_bundle or settings.verify_tls
        client = VllmClient(
            url, headers=headers, connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout, verify=verify, proxies=proxies_for(url),
        )
        request = MapFloodsRequest(
            input_path=self._source,
            output_path=output,
            server_url=url,
            server_can_read_local_files=server_reads_files,
            model=self.parameterAsString(parameters, self.MODEL, context).strip(),
            model_spec_source=self.parameterAsString(parameters, self.MODEL_SPEC, context).strip(),
            transport=transport,
            bands=parse_bands(self.parameterAsString(parameters, self.BANDS, context)),
            path_map_local=settings.path_map_local if backend == BACKEND_REMOTE else "",
            path_map_server=settings.path_map_server if backend == BACKEND_REMOTE else "",
            image_max_megapixels=settings.image_max_megapixels,
            overlap=self._optional_number(parameters, self.OVERLAP, context),
            concurrency=self._optional_int(parameters, self.CONCURRENCY, context),
            scale=self._optional_number(parameters, self.SCALE, context),
            offset=self._optional_number(parameters, self.OFFSET, context),
            probability_path=probability,
        )
        try:
            return map_floods(request, client, progress)
        finally:
            client.close()

    def _too_large_for_image(self, settings, progress: FeedbackProgress) -> bool:
        """Whether the input is above the image-to-image limit (then the local engine runs in tensor mode)."""
        from ..core.pipeline import image_too_large
        from ..core.raster import inspect

        try:
            info = inspect(self._source)
        except FloodMapperError:
            return False  # the job reports it, with its fix, before any request
        if not image_too_large(info.width, info.height, settings.image_max_megapixels):
            return False
        progress.info(tr("The raster is {w}×{h} px, above the image-to-image limit of {mp:g} MP: the local "
                         "engine runs without the IOProcessor plugin and the raster goes in tiles (tensor "
                         "transport).").format(w=info.width, h=info.height, mp=settings.image_max_megapixels))
        return True

    def _optional_number(self, parameters, name, context) -> float | None:
        value = parameters.get(name)
        if value is None or value == "":
            return None
        return self.parameterAsDouble(parameters, name, context)

    def _optional_int(self, parameters, name, context) -> int | None:
        value = parameters.get(name)
        if value is None or value == "":
            return None
        return self.parameterAsInt(parameters, name, context)


