"""Map floods, QGIS-free: a plain request in, a plain result out.

    algorithm parameters -> MapFloodsRequest -> map_floods() -> MapFloodsResult -> outputs/post-processor

The transport (image-to-image or tensor-to-tensor) is chosen here from the request and what the server is.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from . import image_transport, raster
from .errors import Cancelled, FloodMapperError, InputError, TransportUnsupported
from .progress import NullProgress, Progress, check_cancel
from .settings import DEFAULT_IMAGE_MAX_MEGAPIXELS

log = logging.getLogger("floodmapper.pipeline")

BACKEND_REMOTE = "remote"
BACKEND_LOCAL = "local"
TRANSPORT_AUTO = "auto"
TRANSPORT_IMAGE = "image"
TRANSPORT_TENSOR = "tensor"


@dataclass
class MapFloodsRequest:
    input_path: str  # a GDAL-readable source: local file, http(s) URL or /vsicurl/ URL
    output_path: str  # GeoTIFF to write (atomically; never the input)
    server_url: str  # the server to talk to (for the local engine: the engine's URL)
    server_can_read_local_files: bool = False  # local engine or a loopback server
    model: str = ""  # served model name; "" = the only one /v1/models lists
    transport: str = TRANSPORT_AUTO
    bands: Optional[list[int]] = None  # 1-based input band numbers in the model's order; None = automatic
    path_map_local: str = ""  # local prefix ...
    path_map_server: str = ""  # ... seen by the server as this prefix
    image_max_megapixels: float = DEFAULT_IMAGE_MAX_MEGAPIXELS  # larger rasters go to the tensor transport
    # tensor transport
    model_spec_source: str = ""  # config.json path/URL/preset; "" = ask the server side/preset
    overlap: Optional[float] = None  # fraction of the tile; None = default
    concurrency: Optional[int] = None
    scale: Optional[float] = None  # reflectance = value * scale + offset; None = auto-detect
    offset: Optional[float] = None
    probability_path: str = ""  # optional water-probability GeoTIFF
    # the server's --dtype: "auto" = what `vllm serve --dtype auto` runs for the model's config.json (or preset)
    server_dtype: str = "auto"
    server_dtype_reason: str = ""  # why that dtype, for the log (e.g. the local engine's choice)


@dataclass
class MapFloodsResult:
    output_path: str
    water_pixels: int
    valid_pixels: int
    water_fraction: float
    water_area_km2: float
    transport: str
    model: str
    server_version: str = ""
    probability_path: str = ""
    warnings: list[str] = field(default_factory=list)


def map_floods(request: MapFloodsRequest, client, progress: Progress | None = None) -> MapFloodsResult:
    """Run the whole job. `client` is a core.client.VllmClient for request.server_url.

    Everything that can be checked locally is checked before the first request, so a typo in the output
    path does not cost server time; the only requests before /pooling are the cheap model, version and
    server-kind look-ups. Nothing is left behind on failure or cancel: the output appears only through an
    atomic rename at the very end, and temp files live in a private folder that is always removed.
    """
    progress = progress or NullProgress()
    warnings: list[str] = []

    def warn(message: str) -> None:
        if message not in warnings:
            warnings.append(message)
            progress.warning(message)

    check_cancel(progress)
    progress.set_progress(0)
    progress.info(f"Reading {request.input_path}")
    info = raster.inspect(request.input_path)
    raster.check_output_path(request.output_path, request.input_path)
    transport = (request.transport or TRANSPORT_AUTO).lower()
    if transport not in (TRANSPORT_AUTO, TRANSPORT_IMAGE, TRANSPORT_TENSOR):
        raise InputError(f"Unknown transport '{request.transport}'.", "Use auto, image or tensor.")
    if transport == TRANSPORT_IMAGE:
        image_transport.server_source(request, info)  # a layer the server cannot reach: fail before any request
        _check_image_size(request, info)
    # The band contract (the named model spec's, else Sen1Floods11's six bands), checked now so that too
    # few bands or an all-nodata input fail before any request to vLLM; redone below if the served model
    # turns out to be a preset with other bands.
    spec = _model_spec(request, "", client, required=False) if request.model_spec_source else None
    bands, band_warnings = _select(info, request, spec)
    _require_valid_pixels(request, bands, progress)
    if info.crs is None:
        warn(
            "The raster has no CRS: the flood map will have none either and its water area cannot be given "
            "in km². A model that uses location (a '-TL' model) cannot run on it; assign a CRS first "
            "(Raster > Projections > Assign Projection)."
        )
    check_cancel(progress)
    progress.set_progress(2)

    progress.info(f"Asking {client.redact(client.base_url)} for its models")
    model = client.resolve_model(request.model)
    version = client.version()
    for message in image_transport.version_quirks(version)[1]:
        warn(message)
    kind = client.server_kind(model)
    progress.info(f"Server: vLLM {version or '(version unknown)'}, model '{model}', "
                  f"{'image-to-image (IOProcessor plugin)' if kind == 'image' else 'tensor-to-tensor'}")
    chosen = _choose_transport(request, info, kind, transport)
    if spec is None:
        spec = _model_spec(request, model, client, required=chosen == TRANSPORT_TENSOR)
        if spec is not None:
            bands, band_warnings = _select(info, request, spec)
            _require_valid_pixels(request, bands, progress)
    if spec is not None:
        spec = _with_server_dtype(spec, request)
    if chosen == TRANSPORT_IMAGE:
        _check_image_dtype(request)
    else:
        progress.info(f"Tensors in {spec.dtype}: {spec.dtype_reason or 'the model spec'}")
    for message in band_warnings:
        warn(message)
    progress.info(f"Input: {info.width}×{info.height} px, {info.count} bands; the model gets input bands "
                  f"{[b + 1 for b in bands]}")
    check_cancel(progress)
    progress.set_progress(5)

    if chosen == TRANSPORT_TENSOR:
        stats, extra_warnings = run_tensor_hook(request, client, spec, bands, model, progress)
        for message in extra_warnings:
            warn(message)
    else:
        stats = _run_image(request, client, info, bands, model, version, progress)
    progress.set_progress(100)
    area = (f"{stats.water_area_km2:.3f} km²" if not math.isnan(stats.water_area_km2)
            else "area unknown (no CRS)")
    progress.info(f"Done: {stats.water_pixels} water pixels of {stats.valid_pixels} valid "
                  f"({100 * stats.water_fraction:.2f} %), {area}")
    return MapFloodsResult(
        output_path=request.output_path,
        water_pixels=stats.water_pixels,
        valid_pixels=stats.valid_pixels,
        water_fraction=stats.water_fraction,
        water_area_km2=stats.water_area_km2,
        transport=chosen,
        model=model,
        server_version=version,
        probability_path=request.probability_path if chosen == TRANSPORT_TENSOR else "",
        warnings=warnings,
    )


def _select(info: raster.RasterInfo, request: MapFloodsRequest, spec) -> tuple[list[int], list[str]]:
    if spec is None:
        bands, warnings = raster.select_bands(info, request.bands)
    else:
        bands, warnings = raster.select_bands(info, request.bands, spec.channels,
                                              tuple(spec.bands) if spec.bands else ())
    raster.check_band_types(info, bands)
    return bands, warnings


def _require_valid_pixels(request: MapFloodsRequest, bands: list[int], progress: Progress) -> None:
    if not raster.has_valid_pixels(request.input_path, bands, cancel=progress.is_canceled):
        raise InputError(
            f"Every pixel of '{request.input_path}' is nodata in the bands used ({[b + 1 for b in bands]}).",
            "Check the raster and its nodata value, or choose other bands.",
        )


def _model_spec(request: MapFloodsRequest, model: str, client, required: bool):
    """The model's tensor contract (bands, channels, ...): required for tensor, a bonus for image.

    The image transport needs only the number and order of bands; when no spec is given and the model is
    not a known preset, it keeps the Sen1Floods11 default of six bands.
    """
    from .errors import ModelSpecError
    from .model_spec import resolve_model_spec

    try:
        source = request.model_spec_source or (_served_folder(client, model) if model else "")
        return resolve_model_spec(source, model, session=client.session)
    except (ModelSpecError, OSError, ValueError) as exc:
        if required or request.model_spec_source:
            raise  # tensor needs it; and a spec the user named must not be silently ignored
        log.debug("no model spec for %s (%s); image transport keeps the default bands", model, exc)
        return None


def _with_server_dtype(spec, request: MapFloodsRequest):
    """The spec with the dtype the server runs: a tensor in any other dtype stops the server's engine."""
    dtype = (request.server_dtype or "auto").strip().lower()
    if dtype == "auto":
        return spec
    from .model_spec import normalise_dtype

    try:
        dtype = normalise_dtype(dtype, "SERVER_DTYPE")
    except FloodMapperError as exc:
        raise InputError(f"SERVER_DTYPE '{request.server_dtype}' is not a dtype.",
                         "Use auto, float16, float32 or bfloat16: the server's --dtype.") from exc
    return spec.with_dtype(dtype, request.server_dtype_reason or "the server's --dtype, as given (SERVER_DTYPE)")


def _check_image_dtype(request: MapFloodsRequest) -> None:
    """The IOProcessor sends float16 tiles: to a server that runs another dtype they stop its engine."""
    dtype = (request.server_dtype or "auto").strip().lower()
    if dtype not in ("auto", "float16", "half", "fp16"):
        raise TransportUnsupported(
            f"The server runs {request.server_dtype} (SERVER_DTYPE), and image-to-image sends float16 tiles (the "
            "TerraTorch IOProcessor casts every tile to float16): the first tile would stop the server's engine.",
            "Use a server started with --dtype float16 for image-to-image, or the tensor transport (a server "
            "without '--io-processor-plugin'), or set SERVER_DTYPE to what the server really runs.",
        )


def _served_folder(client, model: str) -> str:
    """The served model's own folder when it is on this computer (the local engine, a loopback server):
    its config.json is the model spec. "" when the name is a preset or the folder is not here."""
    from .model_spec import preset_for_model_name

    if preset_for_model_name(model):
        return ""
    root = client.model_root(model)
    if not root:
        return ""
    return preset_for_model_name(root) or (root if os.path.isfile(os.path.join(root, "config.json")) else "")


def _choose_transport(request: MapFloodsRequest, info: raster.RasterInfo, kind: str, transport: str) -> str:
    """One server, one transport: the server's kind decides, a forced choice must agree with it."""
    if transport == TRANSPORT_IMAGE:
        if kind != "image":
            raise TransportUnsupported(
                f"The server at {request.server_url} was started without the TerraTorch IOProcessor plugin, "
                "so it cannot do image-to-image.",
                "Choose the tensor transport (or auto), or start the server with "
                "'--io-processor-plugin terratorch_segmentation'.",
            )
        return TRANSPORT_IMAGE  # its size was checked before any request
    if transport == TRANSPORT_TENSOR:
        if kind == "image":
            raise TransportUnsupported(
                f"The server at {request.server_url} runs the TerraTorch IOProcessor plugin, so it cannot "
                "answer tensor-to-tensor requests.",
                "Choose the image transport (or auto), or start a server without '--io-processor-plugin' "
                "for the tensor transport.",
            )
        return TRANSPORT_TENSOR
    if kind == "image":
        if image_too_large(info.width, info.height, request.image_max_megapixels):
            raise TransportUnsupported(
                f"The raster is {_size(info)}, larger than image-to-image takes "
                f"({request.image_max_megapixels:g} MP), and the server at {request.server_url} runs the "
                "TerraTorch IOProcessor plugin, so it cannot take tiles (tensor transport) either.",
                "Use a vLLM server started without '--io-processor-plugin' (the tensor transport tiles any "
                "size, with progress and cancel), clip the raster to the area of interest, or raise the "
                "image-mode limit in the Flood Mapper options.",
            )
        try:
            image_transport.server_source(request, info)
        except TransportUnsupported as exc:
            raise TransportUnsupported(
                exc.message + " The server runs the IOProcessor plugin, so the tensor transport cannot be "
                "used with it either.",
                "Set a path mapping, put the raster at an http(s) URL the server can reach, or use a server "
                "started without '--io-processor-plugin' (tensor transport).",
            ) from None
        return TRANSPORT_IMAGE
    return TRANSPORT_TENSOR


def image_too_large(width: int, height: int, max_megapixels: float) -> bool:
    """True when a width x height raster is above the image-to-image limit (<= 0: no limit)."""
    return max_megapixels > 0 and width * height > max_megapixels * 1e6


def _size(info: raster.RasterInfo) -> str:
    return f"{info.width}×{info.height} px ({info.width * info.height / 1e6:.1f} MP)"


def _check_image_size(request: MapFloodsRequest, info: raster.RasterInfo) -> None:
    """A forced image transport on a raster too large for it fails before any request."""
    if image_too_large(info.width, info.height, request.image_max_megapixels):
        raise InputError(
            f"The raster is {_size(info)}, larger than image-to-image takes ({request.image_max_megapixels:g} "
            "MP): it would go to the server as one request, read into its memory whole, with no progress "
            "and no way to resume.",
            "Use the tensor transport (TRANSPORT=tensor or auto, with a server started without "
            "'--io-processor-plugin'; the local engine switches by itself), clip the raster to the area of "
            "interest, or raise the image-mode limit in the Flood Mapper options.",
        )


def run_tensor_hook(request: MapFloodsRequest, client, spec, bands: list[int], model: str, progress: Progress):
    """HOOK (issue 6): the tensor transport plugs in here; returns (raster.Stats, warnings).

    plugin/core/tensor_transport.py provides `run_tensor(request, client, spec, band_indices, progress,
    model=...)`, which writes request.output_path itself (atomically, nodata 255, like finalize_classes).
    """
    name = f"{__package__}.tensor_transport"
    if importlib.util.find_spec(name) is None:
        raise TransportUnsupported(
            "The tensor transport lands with issue 6; this server (without the IOProcessor plugin) needs it.",
            "Use a server started with '--io-processor-plugin terratorch_segmentation' (image transport).",
        )
    from . import tensor_transport

    result = tensor_transport.run_tensor(request, client, spec, bands, progress, model=model,
                                         progress_span=(5.0, 99.0))
    return result.stats, list(getattr(result, "warnings", []) or [])


def _expected_seconds(info: raster.RasterInfo) -> float:
    """A rough guess of the server time (2 CPU cores: ~2 s per 512² tile) to move the progress bar."""
    return 3.0 + 2.0 * info.width * info.height / (512 * 512)


def _run_image(request, client, info, bands, model, version, progress) -> raster.Stats:
    try:
        return image_transport.run_image(request, client, info, bands, model, progress, version,
                                         expected_seconds=_expected_seconds(info))
    except Cancelled:
        log.info("map_floods cancelled; nothing written")
        raise
