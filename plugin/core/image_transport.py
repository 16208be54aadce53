"""Image-to-image transport: the server's `terratorch_segmentation` IOProcessor reads the raster itself.

One /pooling request names the raster (a path the server sees, or a URL: image_source.py; or a temporary copy
of the area: image_copy.py); the answer is a base64 GeoTIFF of class × 255, made into the 0/1/255 flood map by
server_map.py.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import shutil
import tempfile
import time
from typing import Callable, Optional

from .area_of_interest import whole_area
from .errors import Cancelled, EngineDied, FloodMapperError, InputError, ServerError
from .image_copy import copy_reason, input_copy, input_scale, rescaled
from .image_source import copy_folder, server_path
from .jobs import ImageJob, Stats
from .outage import Outage
from .progress import Progress, ProgressSpan, check_cancel
from .server_map import finalize_classes
from .versions import version_tuple

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
SECONDS_PER_TILE = 2.0  # a rough guess of a CPU server's time per 512² tile, to move the progress bar


def version_quirks(version: str) -> tuple[dict, list[str]]:
    """Extra top-level payload fields and warnings for a vLLM version.

    vLLM 0.10.2/0.11.0 softmax the plugin's output along the wrong axis unless `"softmax": false`; later
    versions ignore the field (unknown top-level fields are dropped), so it is always sent.
    """
    extra: dict = {"softmax": False}
    warnings: list[str] = []
    v = version_tuple(version)
    if v and v < (0, 10, 2):
        warnings.append(
            f"vLLM {version} predates IOProcessor plugins (0.10.2); image-to-image will not work with it."
        )
    elif v[:2] == (0, 15):
        warnings.append(f"vLLM {version} is known to be broken for TerraTorch models; use another version.")
    return extra, warnings


def build_payload(model: str, data: str, data_format: str, indices: list[int], version: str = "") -> dict:
    extra, _ = version_quirks(version)
    return {
        "model": model,
        "data": {
            "data": data,
            "data_format": data_format,
            "out_data_format": "b64_json",
            "indices": [int(i) for i in indices],
        },
        **extra,
    }


def decode_response(answer: dict) -> bytes:
    """The GeoTIFF bytes of a /pooling answer; ServerError for anything else."""
    data = answer.get("data") if isinstance(answer, dict) else None
    hint = "The server did not answer like the TerraTorch segmentation plugin; check its version and log."
    if not isinstance(data, dict) or not isinstance(data.get("data"), str):
        keys = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
        raise ServerError(f"The server's /pooling answer has no image (got {keys}).", hint)
    fmt = data.get("data_format", "b64_json")
    if fmt != "b64_json":
        raise ServerError(f"The server answered with data_format '{fmt}', not the b64_json asked for.", hint)
    try:
        raw = base64.b64decode(data["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServerError(f"The server's image is not valid base64: {exc}.", hint) from None
    if raw[:4] not in _TIFF_MAGIC:
        raise ServerError(f"The server's image is not a GeoTIFF ({len(raw)} bytes, starts {raw[:8]!r}).", hint)
    return raw


def answer_limit(width: int, height: int) -> int:
    """The most the answer can take: an uncompressed uint8 GeoTIFF of the raster, as base64 in JSON."""
    return int((width * height + 64 * 1024) * 4 / 3 * 1.1) + 64 * 1024


def _ask(client, payload: dict, progress: Progress, on_wait: Callable[[float], None], outage: Outage,
         max_bytes: int) -> dict:
    """The /pooling answer; the request is sent again after the server went away and came back."""
    died = False
    while True:
        try:
            answer = client.pooling(payload, cancel=progress.is_canceled, on_wait=on_wait, max_bytes=max_bytes)
            outage.answered()
            return answer
        except FloodMapperError as exc:
            if (isinstance(exc, Cancelled) or not exc.transient or outage.retry_wait <= 0
                    or (isinstance(exc, EngineDied) and died)):
                raise
            died = died or isinstance(exc, EngineDied)
            progress.info(f"The server went away ({exc.message.split('. ')[0].rstrip('.')}); waiting up to "
                          f"{outage.retry_wait:.0f} s for it to answer again")
            outage.ride_out(exc)
            progress.info("The server answers again; sending the request again")


def run_image(job: ImageJob, client, progress: Progress, span: ProgressSpan,
              revive: Optional[Callable[[], bool]] = None) -> Stats:
    """Send one /pooling request, wait (cancellable), write the map; returns its statistics.

    A server that cannot read the input as it is (`job.copy_for`: a window of it is mapped, or it is a VRT) gets
    a temporary GeoTIFF of the area's bands instead (image_copy.py), removed afterwards. A server that goes away
    while it works is asked again once it answers /health, within `job.retry_wait` (`revive` starts the local
    engine again if it died).
    """
    if job.copy_for is None:
        return _send(job, job.data, job.data_format, job.bands, client, progress, span, revive)
    why = copy_reason(job.input, job.area, job.scale, job.offset)
    folder = copy_folder(job.copy_for, why)
    scale = job.scale
    if rescaled(job.scale, job.offset):
        if scale is None:
            scale = input_scale(job.input, job.bands, job.area)
        offset = job.offset or 0.0
        progress.info(f"Reflectance = value × {scale:g} {'-' if offset < 0 else '+'} {abs(offset):g}"
                      + (" (scale auto-detected)" if job.scale is None else ""))
    progress.info(f"Writing the model's bands of the area to a temporary GeoTIFF the server reads ({why})")
    with input_copy(job.input, job.area, job.bands, folder, progress.is_canceled, scale, job.offset) as path:
        return _send(job, server_path(path, job.copy_for), "path", list(range(len(job.bands))), client,
                     progress, span, revive)


def _send(job: ImageJob, data: str, data_format: str, indices: list[int], client, progress: Progress,
          span: ProgressSpan, revive: Optional[Callable[[], bool]]) -> Stats:
    """The request for the raster at `data` (its bands `indices`), and the map from the answer.

    The decoded server GeoTIFF goes to a private temp folder (removed whatever happens) rather than staying
    in memory next to its base64 text, which halves the peak memory for large scenes.
    """
    payload = build_payload(job.model, data, data_format, indices, job.version)
    info = job.input
    area = job.area or whole_area(info)
    expected = 3.0 + SECONDS_PER_TILE * area.width * area.height / (512 * 512)
    waiting, writing = span.split(0.9)
    last_note = [0.0]

    def on_wait(elapsed: float) -> None:
        progress.set_progress(waiting.at(1.0 - math.exp(-elapsed / expected)))
        if elapsed - last_note[0] >= 15.0:
            last_note[0] = elapsed
            progress.info(f"Still waiting for the server ({elapsed:.0f} s)")

    workdir = tempfile.mkdtemp(prefix="floodmapper-")
    try:
        progress.set_progress(waiting.at(0))
        progress.info(
            f"Request sent ({data_format} {client.redact(data)}, bands {[b + 1 for b in job.bands]}); "
            "waiting for the server..."
        )
        t0 = time.monotonic()
        try:
            outage = Outage(client, job.retry_wait, progress.is_canceled, revive)
            answer = _ask(client, payload, progress, on_wait, outage, answer_limit(area.width, area.height))
        except EngineDied as exc:
            exc.hint += (" The TerraTorch IOProcessor sends float16 tiles, so an image-to-image server must run "
                         "--dtype float16.")
            raise
        except ServerError as exc:
            if info.crs is None and "infer dtype" in exc.message:
                raise InputError(
                    f"The model needs the raster's location, but the raster has no CRS (server: {exc.message})",
                    "Assign a CRS to the raster (Raster > Projections > Assign Projection) and run again.",
                ) from None
            raise
        progress.info(f"The server answered in {time.monotonic() - t0:.1f} s")
        server_tiff = os.path.join(workdir, "server.tif")
        with open(server_tiff, "wb") as fh:
            fh.write(decode_response(answer))
        del answer
        check_cancel(progress)
        progress.set_progress(writing.at(0))
        progress.info(f"Writing the flood map to {job.output_path}")
        return finalize_classes(
            server_tiff, info.path, job.bands, job.output_path, cancel=progress.is_canceled,
            on_progress=lambda fraction: progress.set_progress(writing.at(fraction)), area=job.area,
            tags=job.tags,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
