"""Map floods, QGIS-free, in one pass: a plain request in, a plain result out.

    (a Sentinel-2 product, or one band file of a set: its bands stacked, product_inputs.py)
    -> inspect the input -> check the outputs -> the scaling it carries or its names imply -> (the model's bands,
    when known here) -> reach the server
    -> ask it what it is -> choose the transport -> (the model's bands, else) -> ImageJob | TensorJob
    -> transport -> MapFloodsResult

Everything that can be checked here is checked before the first request, so a typo in the output path does
not cost server time; the requests before /pooling are the cheap model, version and server-kind look-ups.
Nothing is left behind on failure or cancel: outputs appear only through an atomic rename at the very end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Optional, Union

from . import raster
from .area_mask import build_mask
from .area_of_interest import Area, plan_area
from .backends import Backend, Connection, RemoteBackend
from .bands import DEFAULT_MODEL_BANDS, choose_bands, describe_choice
from .errors import FloodMapperError, ModelSpecError
from .flood_job import map_flood_extent
from .image_copy import copy_reason
from .image_source import server_source
from .image_transport import run_image, version_quirks
from .jobs import (
    TRANSPORT_IMAGE,
    TRANSPORT_TENSOR,
    ImageJob,
    MapFloodsRequest,
    MapFloodsResult,
    ServerFacts,
    Stats,
    TensorJob,
)
from .layer_nodata import describe as describe_nodata
from .model_spec import ModelSpec, normalise_dtype, resolve_model_spec, served_spec_source
from .outage import Outage, answered_before, remember_answered
from .output import check_outputs
from .product_inputs import has_products, stacked
from .product_scaling import scaling_of
from .progress import NullProgress, Progress, ProgressSpan, check_cancel
from .provenance import provenance_tags
from .tensor.runner import run_tensor
from .transport_choice import check_forced_image, choose_transport
from .vllm_api import KIND_IMAGE, VllmClient

log = logging.getLogger("floodmapper.pipeline")

TRANSPORT_SPAN = ProgressSpan(5.0, 99.0)


def map_floods(request: MapFloodsRequest, backend: Union[Backend, VllmClient],
               progress: Optional[Progress] = None) -> MapFloodsResult:
    """Run the whole job on `backend` (a Backend, or a client of a remote server)."""
    if isinstance(backend, VllmClient):
        backend = RemoteBackend(backend)
    progress = progress or NullProgress()
    if has_products(request):  # products and band files: their stacks are mapped (this function again)
        with stacked(request, progress) as request:
            return map_floods(request, backend, progress)
    if request.wants_flood_extent():  # the event (and pre-event) image mapped by this function, then compared
        return map_flood_extent(request, backend, progress, map_water=map_floods)
    warnings: list[str] = []

    def warn(message: str) -> None:
        if message not in warnings:
            warnings.append(message)
            progress.warning(message)

    check_cancel(progress)
    progress.set_progress(0)
    progress.info(f"Reading {request.input_path}")
    info = raster.inspect(request.input_path)
    check_outputs(request.output_path, request.probability_path, request.input_path)
    request = _product_scaling(request, info, progress, warn)
    aoi = _planned_area(info, request, progress)
    # the raster as mapped; why an image-to-image server gets a copy
    view, copy_why = aoi.view(info), copy_reason(info, aoi, request.scale, request.offset)
    asked = request.transport_asked()
    overlap, concurrency = request.tensor_options()
    request.dtype_asked()
    if asked == TRANSPORT_IMAGE:
        check_forced_image(request, view, backend.reach(request), copy_why)
    if info.crs is None:
        warn("The raster has no CRS: the flood map will have none either and its water area cannot be given "
             "in km². A model that uses location (a '-TL' model) cannot run on it; assign a CRS first "
             "(Raster > Projections > Assign Projection).")
    # The model's contract when it is known here (MODEL_SPEC, the local engine's model): bands are chosen
    # and checked now, so too few bands or an all-nodata input cost no request and no engine start.
    spec = _named_spec(backend.spec_source(request))
    bands: Optional[list[int]] = None
    if spec is not None:
        bands = _bands(info, request, spec, warn, progress)
        aoi = _mapped_area(info, aoi, bands, warn, progress)
    check_cancel(progress)
    progress.set_progress(2)

    conn = backend.connect(request, view, asked, progress)
    try:
        client = conn.client
        facts = _ask_server_riding_out(client, request, conn, progress, warn)
        transport = choose_transport(asked, facts.kind, view, _with_dtype(request, conn), conn.reach, copy_why)
        if transport == TRANSPORT_IMAGE and request.probability_path:
            warn("No water probability is written: image-to-image answers classes only (TerraTorch's IOProcessor "
                 "argmaxes on the server). For a probability raster, choose the tensor transport (TRANSPORT "
                 "Tensor-to-tensor; a remote server must be started without the IOProcessor plugin).")
        if spec is None:
            spec = _served_spec(client, facts.model, required=transport == TRANSPORT_TENSOR)
        if bands is None:
            bands = _bands(info, request, spec, warn, progress)
            aoi = _mapped_area(info, aoi, bands, warn, progress)
        check_cancel(progress)
        progress.set_progress(TRANSPORT_SPAN.start)
        if transport == TRANSPORT_TENSOR:
            spec = _in_server_dtype(spec, conn)
            progress.info(f"Tensors in {spec.dtype}: {spec.dtype_reason or 'the model spec'}")
        tags = provenance_tags(request.source or request.input_path, facts.model,
                               f"vLLM {facts.version}" if facts.version else "vLLM", transport,
                               spec.dtype if transport == TRANSPORT_TENSOR else "", request.cloud_mask_path)
        if transport == TRANSPORT_TENSOR:
            if request.concurrency is None and conn.concurrency:
                concurrency = conn.concurrency
                progress.info(f"{concurrency} tiles in flight: {conn.concurrency_reason or 'what the server takes'}")
            job = TensorJob(
                input=info, bands=bands, spec=spec, model=facts.model, version=facts.version,
                output_path=request.output_path, probability_path=request.probability_path, overlap=overlap,
                concurrency=concurrency, scale=request.scale, offset=request.offset, retry_wait=request.retry_wait,
                area=aoi, tags=tags, source=request.source,
            )
            stats: Stats = run_tensor(job, client, progress, TRANSPORT_SPAN, revive=conn.revive).stats
        else:
            data, data_format = ("", "path") if copy_why else server_source(info, conn.reach)
            job = ImageJob(input=info, bands=bands, model=facts.model, version=facts.version, data=data,
                           data_format=data_format, output_path=request.output_path,
                           retry_wait=request.retry_wait, area=aoi, copy_for=conn.reach if copy_why else None,
                           scale=request.scale, offset=request.offset, tags=tags)
            stats = run_image(job, client, progress, TRANSPORT_SPAN, revive=conn.revive)
    finally:
        conn.close()
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
        transport=transport,
        model=facts.model,
        server_version=facts.version,
        probability_path=request.probability_path if transport == TRANSPORT_TENSOR else "",
        warnings=warnings,
        cloud_pixels=aoi.cloud_pixels,
        cloud_fraction=aoi.cloud_fraction,
    )


def _ask_server(client: VllmClient, model: str, progress: Progress, warn) -> ServerFacts:
    """The served model, the vLLM version and which transport the server does: asked once."""
    progress.info(f"Asking {client.redact(client.base_url)} for its models")
    name = client.resolve_model(model)
    version = client.version()
    for message in version_quirks(version)[1]:
        warn(message)
    kind = client.server_kind(name)
    progress.info(f"Server: vLLM {version or '(version unknown)'}, model '{name}', "
                  f"{'image-to-image (IOProcessor plugin)' if kind == KIND_IMAGE else 'tensor-to-tensor'}")
    return ServerFacts(name, version, kind)


def _ask_server_riding_out(client: VllmClient, request: MapFloodsRequest, conn: Connection, progress: Progress,
                           warn) -> ServerFacts:
    """_ask_server; a server that answered earlier in this process and is away now (the rows of a batch meeting
    a restart) is waited for within the retry wait, as a tile's request would be. A server never reached fails
    at once: a wrong URL is far likelier there than a restart."""
    outage = Outage(client, request.retry_wait, progress.is_canceled, conn.revive)
    while True:
        try:
            facts = _ask_server(client, request.model, progress, warn)
        except FloodMapperError as exc:
            if not (exc.transient and answered_before(client.base_url)):
                raise
            if outage.since is None and request.retry_wait > 0:
                progress.warning(f"{exc.message} It answered earlier; waiting up to {request.retry_wait:.0f} s "
                                 "for it to answer again.")
            outage.ride_out(exc)  # raises when waiting cannot help or the wait is over
            continue
        remember_answered(client.base_url)
        return facts


def _bands(info: raster.RasterInfo, request: MapFloodsRequest, spec: Optional[ModelSpec], warn,
           progress: Progress) -> list[int]:
    """The model's input bands (the spec's, else Sen1Floods11's six), with data in at least one pixel."""
    bands, band_warnings = choose_bands(info, request.bands, spec)
    raster.require_reflectance_depth(info, bands, request.scale)
    raster.require_valid_pixels(request.input_path, bands, cancel=progress.is_canceled)
    for message in band_warnings:
        warn(message)
    names = tuple(spec.bands) if spec is not None else DEFAULT_MODEL_BANDS
    progress.info(f"Input: {info.width}×{info.height} px, {info.count} bands; the model gets input bands "
                  f"{[b + 1 for b in bands]}: {describe_choice(info, bands, names)}")
    hidden = raster.hidden_nodata_of(request.input_path, bands)
    if hidden:
        progress.info(hidden.describe())
    return bands


def _product_scaling(request: MapFloodsRequest, info: raster.RasterInfo, progress: Progress,
                     warn) -> MapFloodsRequest:
    """The request with the scaling the raster carries or its names imply, when SCALE and OFFSET are both left
    empty."""
    if request.scale is not None or request.offset is not None:
        return request
    found = scaling_of(info)
    if found.said:
        progress.info(found.said)
    if found.warning:
        warn(found.warning)
    if found.scale is None and found.offset is None:
        return request
    return replace(request, scale=found.scale, offset=found.offset)


def _planned_area(info: raster.RasterInfo, request: MapFloodsRequest, progress: Progress) -> Area:
    """The window the request maps (EXTENT, MASK polygons): geometry only, checked before anything costs."""
    if request.cloud_mask_path:  # an input too: never written over
        check_outputs(request.output_path, request.probability_path, request.cloud_mask_path)
    area = plan_area(info, request.extent, request.extent_crs, request.mask_polygons, request.mask_crs,
                     request.cloud_mask_path, request.cloud_values, note=progress.info,
                     layer_nodata=request.layer_nodata, cloud_bits=request.cloud_bits)
    if not area.whole or area.polygons or area.cloud_path or area.layer_nodata:
        progress.info(area.describe(info))
    return area


def _mapped_area(info: raster.RasterInfo, area: Area, bands: list[int], warn, progress: Progress) -> Area:
    """The area's pixels to map (the mask polygons', the clear ones, those with data), once the bands are known."""
    if area.polygons or area.cloud_path:
        progress.info("Finding the pixels to map: " + " and ".join(
            ["inside the mask polygons"] * bool(area.polygons) + ["not cloud"] * bool(area.cloud_path)))
    area = build_mask(info, area, bands, progress.is_canceled, warn)
    if area.layer_nodata:
        progress.info(f"The layer's additional no data values ({describe_nodata(area.layer_nodata)}) leave out "
                      f"{area.layer_nodata_pixels} of the area's pixels with data in the raster; they are nodata in "
                      "the map")
    if area.cloud_path:
        progress.info(f"Cloud mask: {area.cloud_pixels} of the area's {area.data_pixels} pixels with data are "
                      f"cloud ({100 * area.cloud_fraction:.2f} %); they are nodata in the map")
    return area


def _named_spec(source: str) -> Optional[ModelSpec]:
    """The spec the user (MODEL_SPEC) or the local engine's model names; a bad one is an error, not ignored."""
    return resolve_model_spec(source) if source else None


def _served_spec(client: VllmClient, model: str, required: bool) -> Optional[ModelSpec]:
    """The served model's spec: the preset its name stands for, or its folder when that is on this computer.

    The tensor transport needs it; image-to-image needs only the number and order of bands, and without a
    spec keeps Sen1Floods11's six.
    """
    try:
        source = served_spec_source(model, client.model_root(model))
        return resolve_model_spec(source, model, session=client.session)
    except (ModelSpecError, OSError, ValueError) as exc:
        if required:
            raise
        log.debug("no model spec for %s (%s); image transport keeps the default bands", model, exc)
        return None


def _with_dtype(request: MapFloodsRequest, conn: Connection) -> MapFloodsRequest:
    """The request as the server runs it (the local engine's own dtype replaces the request's)."""
    if conn.server_dtype == request.server_dtype:
        return request
    return replace(request, server_dtype=conn.server_dtype, server_dtype_reason=conn.dtype_reason)


def _in_server_dtype(spec: ModelSpec, conn: Connection) -> ModelSpec:
    """The spec with the dtype the server runs: a tensor in any other dtype stops the server's engine."""
    dtype = (conn.server_dtype or "auto").strip().lower()
    if dtype == "auto":
        return spec
    return spec.with_dtype(normalise_dtype(dtype), conn.dtype_reason or "the server's --dtype, as given "
                           "(SERVER_DTYPE)")
