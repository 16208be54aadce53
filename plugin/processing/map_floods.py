"""Processing algorithm `floodmapper:map_floods`: a raster layer in, a styled flood GeoTIFF out.

Thin glue: parameters -> core MapFloodsRequest -> core.pipeline.map_floods -> outputs + post-processor.
The layer is read in prepareAlgorithm (main thread); processAlgorithm touches no project or iface, so the
algorithm runs in a background thread, in the batch dialog (one context per row) and in qgis_process.
"""

from __future__ import annotations

import traceback
from dataclasses import replace

from qgis.core import (
    Qgis,
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
from ..core.jobs import TRANSPORT_AUTO, TRANSPORT_IMAGE, TRANSPORT_TENSOR, MapFloodsRequest, MapFloodsResult
from ..core.model_spec import PRESETS
from ..toolbelt import log as qlog
from ..toolbelt import resources
from ..toolbelt import settings as stored_settings
from ..toolbelt.dependencies import require_dependencies
from ..toolbelt.i18n import tr
from . import area_inputs
from .feedback import FeedbackProgress
from .layer_inputs import layer_nodata, layer_source, load_gdal_sources, parse_bands
from .map_outputs import flood_map_outputs
from .postprocessor import FloodLayerPostProcessor, ProbabilityLayerPostProcessor, style_when_loaded
from .reference_inputs import (
    CLASSES_HELP,
    PRE_EVENT,
    PRE_EVENT_CLOUD_MASK,
    ReferenceInputs,
    add_extent_outputs,
    add_reference_parameters,
    area_text,
    extent_text,
    read_reference_inputs,
)

HELP_URL = "https://example.org/floodmapper#map-floods"

BACKEND_REMOTE, BACKEND_LOCAL = 0, 1
TRANSPORTS = [TRANSPORT_AUTO, TRANSPORT_IMAGE, TRANSPORT_TENSOR]
SERVER_DTYPES = ["auto", "float16", "float32", "bfloat16"]


def summary_text(input_name: str, result: MapFloodsResult) -> str:
    return tr(
        "Flood map of {name}: water {water:,} of {valid:,} valid pixels ({fraction:.2%}), "
        "{area}. Model {model} via {transport}."
    ).format(
        name=input_name, water=result.water_pixels, valid=result.valid_pixels,
        fraction=result.water_fraction, area=area_text(result.water_area_km2), model=result.model,
        transport=result.transport,
    )


class MapFloodsAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    BACKEND = "BACKEND"
    SERVER_URL = "SERVER_URL"
    MODEL = "MODEL"
    MODEL_SPEC = "MODEL_SPEC"
    TRANSPORT = "TRANSPORT"
    SERVER_DTYPE = "SERVER_DTYPE"
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
        self._references = ReferenceInputs()
        self._raster_crs = None  # the input layer's QgsCoordinateReferenceSystem (area parameters go to it)
        self._cloud_path = ""
        self._layer_nodata: tuple = ()  # the input layer's additional no data values (core.layer_nodata)

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
        return resources.icon()

    def tags(self) -> list[str]:
        return ["flood", "water", "segmentation", "prithvi", "terratorch", "vllm", "sentinel-2", "ai"]

    def helpUrl(self) -> str:
        return HELP_URL

    def shortHelpString(self) -> str:
        return tr(
            "Maps water in a multispectral raster (Sentinel-2-like reflectance) with a TerraTorch segmentation "
            "model served by vLLM, and writes a GeoTIFF on the input's exact grid: 1 = water, 0 = not water, "
            "255 = no data (where any used input band has no data, counting the layer's additional no data values "
            "set in Layer Properties ▸ Transparency).\n\n"
            "<b>Sentinel-2 products</b>: INPUT (and PRE_EVENT) may be an L2A or L1C product as downloaded: the "
            ".zip, the .SAFE folder, its MTD_MSIL2A.xml, or any subdataset QGIS adds from it (e.g. the 10 m one). "
            "Its band files are stacked at 10 m, nothing copied; given as CLOUD_MASK, the product gives its SCL "
            "(L1C: MSK_CLASSI).\n\n"
            "<b>Band files</b>: one band file of a download (Landsat's SR_B5.TIF, HLS's B03.tif, a Sentinel-2 "
            "B02.tif, …) with Bands empty is mapped with the band files beside it whose names differ only in the "
            "band: they are stacked, in band order at the finest resolution, as Build virtual raster would.\n\n"
            "<b>Backend</b>: a remote vLLM server (its URL, optionally with an authentication configuration "
            "set in Flood Mapper's options) or the local engine that the plugin starts on this computer "
            "(GPU, or CPU where there is none) with the bundled demo model unless another is configured.\n\n"
            "<b>Transport</b>: image-to-image lets the server read the raster (a local/loopback server, a "
            "path mapping, or an http(s) URL); tensor-to-tensor tiles and uploads the raster from this "
            "computer to any server, with overlap, progress and cancel. Auto picks what the server and the "
            "layer allow. A tensor run that has taken over a minute keeps its finished rows beside the output: "
            "stopped (cancel, crash, a server that stays away), the same job run again goes on from them.\n\n"
            "<b>Bands</b>: empty picks the model's bands from band descriptions (B02, B03, B04, B8A, B11, "
            "B12 or BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2; Landsat Collection 2 SR_B2 … SR_B7, Level-1 "
            "and HLS L30 band files as Landsat numbers them, Collection 2 with its own scaling, Level-1 made "
            "reflectance by the MTL file beside it or in the same .tar), else the first bands with a warning.\n\n"
            "<b>Area</b>: EXTENT and MASK polygons (any CRS) limit what is mapped and sent to the server; the map is "
            "the input's grid cut to them. CLOUD_MASK (e.g. the Sentinel-2 SCL band) with CLOUD_VALUES leaves "
            "clouds out as nodata and reports the cloud-masked pixels.\n\n"
            "Outputs the water pixel count, valid pixel count, water fraction and water area in km² "
            "(equal-area for geographic CRSs).\n\n"
            "<b>Flood extent</b>: give PRE_EVENT (an image of the same place before the event, of this or another "
            "product, mapped with the same model; PRE_EVENT_CLOUD_MASK leaves its clouds out) and/or "
            "REFERENCE_WATER (permanent water: polygons or a raster) to tell the flood from the water that is "
            "always there. "
        ) + tr(CLASSES_HELP)

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
        p = QgsProcessingParameterEnum(
            self.SERVER_DTYPE, tr("Server dtype (remote tensor server)"), options=SERVER_DTYPES,
            defaultValue=SERVER_DTYPES.index(settings.server_dtype) if settings.server_dtype in SERVER_DTYPES else 0,
        )
        p.setHelp(tr("The --dtype the remote server was started with: tensors in any other dtype stop its engine. "
                     "auto = what 'vllm serve --dtype auto' runs for the model's config.json (float16, or "
                     "bfloat16 for a bfloat16 model). The local engine always gets its own dtype."))
        self.addParameter(p)
        p = QgsProcessingParameterString(
            self.BANDS, tr("Input bands in the model's order (1-based, comma-separated)"),
            defaultValue="", optional=True,
        )
        p.setHelp(tr("E.g. 2,3,4,9,12,13 for a 13-band Sentinel-2 L1C file; empty = from band descriptions."))
        self.addParameter(p)
        area_inputs.add_parameters(self)  # EXTENT, MASK, CLOUD_MASK, CLOUD_VALUES; CLOUD_PIXELS, CLOUD_FRACTION
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
                self.CONCURRENCY,
                tr("Requests in flight (tensor transport; empty = 4, with the local engine its max-num-seqs)"),
                type=QgsProcessingParameterNumber.Type.Integer, minValue=1, maxValue=64, optional=True,
            ),
            QgsProcessingParameterNumber(
                self.SCALE, tr("Reflectance scale (value × scale + offset; empty = auto)"),
                type=QgsProcessingParameterNumber.Type.Double, optional=True,
            ),
            QgsProcessingParameterNumber(
                self.OFFSET, tr("Reflectance offset (e.g. -0.1 for Sentinel-2 L1C/L2A from 2022)"),
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
            tr("Multiplier from stored values to reflectance 0–1; empty: the bands' own scale and offset when "
               "the raster carries them (GDAL metadata, as QGIS shows the values), else ×10000 integer "
               "reflectance is detected (an 8-bit raster is refused: its values are not reflectance)."),
            tr("Added after scaling; e.g. -0.1 for the −1000 offset of Sentinel-2 L1C and L2A products of "
               "processing baseline 04.00 (2022) or later. Empty: -0.1 where the bands' metadata (BOA_ADD_OFFSET, "
               "RADIO_ADD_OFFSET) or the names say so (the product's N0400 or later, or band files acquired from "
               "25 January 2022 on), else 0."),
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
        # flood extent: water compared with reference water (reference_inputs.py)
        add_reference_parameters(
            self, tr("Pre-event image (same place before the event; optional)"),
            tr("Mapped with the same backend, server, model and transport as INPUT (the local engine is reused), "
               "and INPUT's bands and scaling when it has the same bands; another product (e.g. Landsat before a "
               "Sentinel-2 event) with BANDS empty gets its own, by its band names. Its water, brought onto INPUT's "
               "grid, is reference water. Any CRS, resolution or extent; where it does not cover INPUT there is no "
               "reference."), pre_event_clouds=True)
        add_extent_outputs(self)
        self.addOutput(QgsProcessingOutputNumber(self.WATER_PIXELS, tr("Water pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.VALID_PIXELS, tr("Valid pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.WATER_FRACTION, tr("Water fraction of valid pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.WATER_AREA_KM2, tr("Water area (km²)")))

    def checkParameterValues(self, parameters, context):
        """The area parameters' clear messages (the problem and the fix) before QGIS's generic ones; raster
        sources Processing cannot load from text (URLs, zip members) loaded with GDAL first."""
        load_gdal_sources(parameters, context, (self.INPUT, PRE_EVENT, PRE_EVENT_CLOUD_MASK, area_inputs.CLOUD_MASK))
        ok, message = area_inputs.check_values(self, parameters, context)
        if not ok:
            qlog.log(f"Map floods: {message}", Qgis.MessageLevel.Critical)
            return False, message
        return super().checkParameterValues(parameters, context)

    def validateInputCrs(self, parameters, context) -> bool:
        """EXTENT, MASK, CLOUD_MASK and the pre-event inputs may have any CRS: each is brought onto its image's
        grid."""
        return True

    # --- run ----------------------------------------------------------------------------------------------
    def prepareAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> bool:
        """Main thread: read what is needed from the layer so processAlgorithm never touches it."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(
                tr("INPUT is not a raster layer or a readable raster file. Choose a raster layer or file.")
            )
        self._input_name = layer.name()
        self._raster_crs = layer.crs()
        try:
            self._source = layer_source(layer)
            self._cloud_path = area_inputs.cloud_source(self, parameters, context)
        except InputError as err:
            self._source_error = err  # reported from processAlgorithm, with the other errors
        self._layer_nodata, warnings = layer_nodata(layer)
        self._references = read_reference_inputs(self, parameters, context, layer.crs(), layer.extent())
        for warning in warnings + self._references.warnings:
            qlog.log(f"Map floods: {warning}", Qgis.MessageLevel.Warning)
            feedback.pushWarning(warning)
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
        summary = " ".join(filter(None, [summary, area_inputs.cloud_summary(result, self._cloud_path),
                                         extent_text(result)]))
        feedback.pushInfo(summary)
        qlog.log(summary)
        for warning in result.warnings:
            feedback.pushWarning(warning)
        output = result.output_path
        style_when_loaded(context, output, resources.FLOOD_EXTENT_STYLE if result.reference else resources.FLOOD_STYLE,
                          f"{self._input_name} – flood", FloodLayerPostProcessor, summary, bool(result.reference))
        outputs = flood_map_outputs(self, parameters, context, feedback, result)
        outputs[self.WATER_FRACTION] = result.water_fraction
        if result.probability_path:
            style_when_loaded(context, result.probability_path, resources.PROBABILITY_STYLE,
                              f"{self._input_name} – water probability", ProbabilityLayerPostProcessor, summary)
            outputs[self.PROBABILITY] = result.probability_path
        outputs.update(area_inputs.cloud_outputs(result))
        return outputs

    def _run(self, parameters, context, progress: FeedbackProgress) -> MapFloodsResult:
        from ..core.backends import LocalBackend, RemoteBackend
        from ..core.pipeline import map_floods
        from ..core.urls import is_loopback_url
        from ..toolbelt.server import remote_client

        if self._source_error is not None:
            raise self._source_error
        backend_index = self.parameterAsEnum(parameters, self.BACKEND, context)
        settings = stored_settings.load()
        stored_settings.set_value("last_backend", backend_index)
        request = MapFloodsRequest(
            input_path=self._source,
            output_path=self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            server_url="",
            model=self.parameterAsString(parameters, self.MODEL, context).strip(),
            model_spec_source=self.parameterAsString(parameters, self.MODEL_SPEC, context).strip(),
            transport=TRANSPORTS[self.parameterAsEnum(parameters, self.TRANSPORT, context)],
            bands=parse_bands(self.parameterAsString(parameters, self.BANDS, context)),
            image_max_megapixels=settings.image_max_megapixels,
            overlap=self._optional_number(parameters, self.OVERLAP, context),
            concurrency=self._optional_int(parameters, self.CONCURRENCY, context),
            scale=self._optional_number(parameters, self.SCALE, context),
            offset=self._optional_number(parameters, self.OFFSET, context),
            probability_path=self.parameterAsOutputLayer(parameters, self.PROBABILITY, context) or "",
            server_dtype=SERVER_DTYPES[self.parameterAsEnum(parameters, self.SERVER_DTYPE, context)],
            retry_wait=settings.retry_wait,
            layer_nodata=self._layer_nodata,
        )
        request = replace(request, **self._references.request_fields())
        area_inputs.fill_request(request, self, parameters, context, self._raster_crs, self._cloud_path)
        if backend_index == BACKEND_LOCAL:
            return map_floods(request, LocalBackend(settings, on_log=qlog.engine_log), progress)
        url = (self.parameterAsString(parameters, self.SERVER_URL, context) or settings.server_url).strip()
        if not url:
            raise InputError("No server URL.", "Set SERVER_URL, or the server URL in Flood Mapper's options.")
        request.server_url = url
        request.server_can_read_local_files = is_loopback_url(url) or bool(settings.path_map_local)
        request.path_map_local, request.path_map_server = settings.path_map_local, settings.path_map_server
        with remote_client(settings, url) as client:
            return map_floods(request, RemoteBackend(client), progress)

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


