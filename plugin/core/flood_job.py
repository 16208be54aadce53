"""Map a flood, not just water: the event image (and the pre-event image) mapped, then compared with the
reference water.

    check everything (pre-event bands, references, outputs) -> the event image -> its water map (temporary)
    -> the pre-event image with the same backend, server, model and transport, the same bands and scaling (or,
       another product, its own by their names) and its own cloud mask -> its water map
    -> flood_extent.classify against the pre-event water and REFERENCE_WATER -> OUTPUT (+ PROBABILITY) at once

Each mapping is an ordinary pipeline run without references; the pipeline hands itself in as `map_water`
(so this module does not import it). Nothing appears at the outputs unless every step succeeded.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable, Optional

from . import raster
from .area_of_interest import Area, plan_area
from .bands import names_give_bands
from .cloud_values import described_cloud_bands
from .errors import InputError
from .flood_extent import (
    check_references,
    classify,
    describe,
    late_warnings,
    no_overlap_message,
    require_crs,
    summary,
)
from .jobs import MapFloodsRequest, MapFloodsResult
from .output import AtomicOutputs, check_output_path, check_outputs, temp_beside, verify_written
from .progress import Progress, ProgressSpan, check_cancel
from .reference import Grid, RasterReference, Reference, overlaps
from .reference_files import reference_from_path

MapWater = Callable[[MapFloodsRequest, object, Progress], MapFloodsResult]


class _Part:
    """Progress of one step, within its span of the bar; its messages prefixed, its warnings collected."""

    def __init__(self, progress: Progress, span: ProgressSpan, prefix: str, warn: Callable[[str], None]) -> None:
        self.progress, self.span, self.prefix, self.warn = progress, span, prefix, warn

    def set_progress(self, percent: float) -> None:
        self.progress.set_progress(self.span.at(percent / 100.0))

    def info(self, message: str) -> None:
        self.progress.info(self.prefix + message)

    def warning(self, message: str) -> None:
        self.warn(self.prefix + message)

    def is_canceled(self) -> bool:
        return self.progress.is_canceled()


def request_references(request: MapFloodsRequest) -> list[Reference]:
    """REFERENCE_WATER of the request (a file, or polygons already read); the pre-event image comes later."""
    refs: list[Reference] = []
    if request.reference_path:
        refs.append(reference_from_path(request.reference_path, request.reference_threshold))
    if request.reference_polygons is not None:
        refs.append(request.reference_polygons)
    return refs


def check_pre_event(request: MapFloodsRequest, info: raster.RasterInfo,
                    warn: Callable[[str], None]) -> tuple[raster.RasterInfo, str]:
    """The pre-event image is mapped with the event image's band choice and scaling when it has the same bands in
    the same order. Another product (Landsat or HLS L30 before a Sentinel-2 event, another export) works when
    BANDS is empty and the band names of both give the model's bands: each image's bands are then chosen by their
    names, and its scaling found on its own. Returns the pre-event image's facts and what the log says of its
    bands ("" for the same bands)."""
    pre = raster.inspect(request.pre_event_path)

    def bands(i: raster.RasterInfo) -> str:
        names = [d for d in i.descriptions if d]
        return f"{i.count} band(s)" + (f" ({', '.join(names)})" if len(names) == i.count else "")

    if pre.crs is None and info.crs is not None:
        raise InputError(f"The pre-event image '{request.pre_event_path}' has no CRS, so where it lies is unknown.",
                         "Assign its CRS (Raster > Projections > Assign Projection) and run again.")
    check_output_path(request.output_path, request.pre_event_path)
    named = all(info.descriptions) and all(pre.descriptions)
    same_names = [d.upper() for d in info.descriptions] == [d.upper() for d in pre.descriptions] if named else True
    if pre.count == info.count and same_names:
        return pre, ""
    differ = f"The pre-event image '{request.pre_event_path}' has {bands(pre)}, the event image has {bands(info)}"
    if request.bands:
        raise InputError(
            f"{differ}: BANDS ({', '.join(map(str, request.bands))}) picks the same band numbers in both, so both "
            "must have the same bands in the same order.",
            "Leave BANDS empty so that each image's bands are chosen by their names, or give a pre-event image "
            "with the same bands (gdal_translate -b ... picks and orders bands).")
    if not (names_give_bands(info) and names_give_bands(pre)):
        raise InputError(
            f"{differ}, and their band names do not say which is which (blue, green, red, narrow NIR, SWIR 1 and "
            "2), so the pre-event image is mapped with the event image's bands and both must have the same bands "
            "in the same order.",
            "Give a pre-event image of the same product with the same bands (Raster > Extract > Clip, or "
            "gdal_translate -b ... to pick and order bands), or name the bands of both (e.g. B02 ... B12).")
    if request.scale is not None or request.offset is not None:
        warn(f"{differ}. SCALE and OFFSET apply to both: check that both products store reflectance the same "
             "way, or leave them empty so that each image's own scaling is found.")
    return pre, (f"The pre-event image is another product ({bands(pre)}): its bands are chosen by their names and "
                 "its scaling is its own")


def _same_area(aoi: Area, info: raster.RasterInfo) -> dict:
    """Request fields that map the pre-event image over the event's area: the window's bounds in the event's CRS.
    The mask polygons and the event's cloud mask are the event's: the flood map is nodata where they leave it
    out."""
    return {"extent": None if aoi.whole else aoi.bounds, "extent_crs": "" if aoi.whole else (info.crs or ""),
            "mask_polygons": None, "mask_crs": ""}


def pre_event_clouds(request: MapFloodsRequest, pre: raster.RasterInfo) -> tuple[str, str]:
    """The pre-event image's cloud mask and what the log says of it: PRE_EVENT_CLOUD_MASK, else, when the event
    image is cloud-masked, the pre-event image's own cloud band (a band described SCL, QA60, QA_PIXEL, ...: an
    export that carries one). Its clouds are nodata in its water map, so the event's water there has no
    reference."""
    if request.pre_event_cloud_mask_path:
        return request.pre_event_cloud_mask_path, (
            f"Its clouds (cloud mask '{request.pre_event_cloud_mask_path}') give no reference water: the "
            "event's water under them counts as flood")
    own = described_cloud_bands(pre.descriptions, True)
    if request.cloud_mask_path and own is not None:
        return request.pre_event_path, (f"It is its own cloud mask ({own.what}): its clouds give no reference "
                                        "water")
    if request.cloud_mask_path:
        return "", ("It has no cloud mask (PRE_EVENT_CLOUD_MASK), so its clouds are mapped as land and their "
                    "shadows may be mapped as water; give its cloud mask to leave them out")
    return "", ""


def map_flood_extent(request: MapFloodsRequest, backend, progress: Progress, map_water: MapWater) -> MapFloodsResult:
    """The flood extent of `request.input_path` against its pre-event image and/or reference water."""
    warned: list[str] = []

    def warn(message: str) -> None:
        if message not in warned:
            warned.append(message)
            progress.warning(message)

    info = raster.inspect(request.input_path)
    check_outputs(request.output_path, request.probability_path, request.input_path)
    for cloud_mask in (request.cloud_mask_path, request.pre_event_cloud_mask_path):
        if cloud_mask:  # an input too: never written over
            check_outputs(request.output_path, request.probability_path, cloud_mask)
    aoi = plan_area(info, request.extent, request.extent_crs, request.mask_polygons, request.mask_crs)
    refs = request_references(request)
    for ref in refs:
        if isinstance(ref, RasterReference):
            check_output_path(request.output_path, ref.path)
    grid = Grid.of(aoi.view(info))  # the references are weighed over the area mapped
    pre_ref: Optional[RasterReference] = None
    other_product = ""
    if request.pre_event_path:
        require_crs(grid)
        pre_info, other_product = check_pre_event(request, info, warn)
        pre_ref = RasterReference(request.pre_event_path, 1.0,
                                  f"the pre-event image '{os.path.basename(request.pre_event_path)}'")
    asked = describe(([pre_ref] if pre_ref else []) + refs)
    missed = check_references(refs, grid, warn)
    if pre_ref is not None and not overlaps(pre_ref, grid):
        warn(no_overlap_message(pre_ref) + " It is not mapped.")
        missed += 1
        pre_ref = None
    all_missed = missed == len(refs) + bool(request.pre_event_path)
    check_cancel(progress)

    scratch: list[str] = []  # the water maps, the probability: temporary files beside the output
    outputs: Optional[AtomicOutputs] = None
    try:
        scratch.append(temp_beside(request.output_path))
        scratch.append(temp_beside(request.probability_path) if request.probability_path else "")
        plain = replace(request, pre_event_path="", reference_path="", reference_polygons=None)
        event_span, rest = ProgressSpan(0, 96).split(0.5 if pre_ref else 1.0)
        event = map_water(replace(plain, output_path=scratch[0], probability_path=scratch[1]),
                          backend, _Part(progress, event_span, "", warn))
        if pre_ref is not None:
            scratch.append(temp_beside(request.output_path))
            progress.info(f"Mapping the pre-event image {request.pre_event_path} with the same model "
                          f"({event.model}) and transport ({event.transport})")
            cloud_mask, said = pre_event_clouds(request, pre_info)
            if other_product:
                progress.info(other_product)
            if said:
                progress.info("Pre-event image: " + said)
            try:
                map_water(replace(plain, input_path=request.pre_event_path, source="", output_path=scratch[2],
                                  probability_path="", transport=event.transport, model=event.model,
                                  layer_nodata=request.pre_event_layer_nodata, cloud_mask_path=cloud_mask,
                                  **_same_area(aoi, info)),
                          backend, _Part(progress, rest, "Pre-event image: ", warn))
            except InputError as err:
                raise InputError(f"The pre-event image '{request.pre_event_path}': {err.message}", err.hint) from None
            refs = [replace(pre_ref, path=scratch[2])] + refs
        progress.info(f"Comparing the water with {describe(refs) or 'no reference'}")
        probability = bool(request.probability_path and event.probability_path)
        outputs = AtomicOutputs([request.output_path] + ([request.probability_path] if probability else []),
                                keep=request.input_path)
        stats = classify(scratch[0], refs, outputs.temps[0], _Part(progress, ProgressSpan(96, 100), "", warn),
                         tags={"FLOODMAPPER_REFERENCE": asked})
        verify_written(outputs.temps[0], request.output_path)
        if probability:
            os.replace(scratch[1], outputs.temps[1])
        outputs.commit()
    finally:
        if outputs is not None:
            outputs.discard()
        for path in scratch:
            if path and os.path.lexists(path):
                os.remove(path)
    if not all_missed:
        for message in late_warnings(stats, refs):
            warn(message)
    progress.set_progress(100)
    progress.info("Flood extent: " + summary(stats))
    return replace(event, output_path=request.output_path,
                   probability_path=request.probability_path if probability else "", warnings=warned,
                   reference=asked, **stats.result_fields())
