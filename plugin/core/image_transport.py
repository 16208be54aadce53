"""Image-to-image transport: the server's `terratorch_segmentation` IOProcessor reads the raster itself.

The plugin can only read a raster by server-side path or by URL (TerraTorch 1.2.4+ rejects inline
base64 uploads), so this transport works when the server can reach the file: a local engine or a loopback
server, a shared folder with a path mapping, or an http(s) URL. Everything else goes through the tensor
transport. The answer is a base64 GeoTIFF of class × 255, turned into a 0/1/255 map by raster.py.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Optional

from .errors import EngineDied, InputError, ServerError, TransportUnsupported
from .progress import Progress, check_cancel
from .raster import RasterInfo, Stats, finalize_classes

if TYPE_CHECKING:
    from .pipeline import MapFloodsRequest

VSICURL = "/vsicurl/"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version.split("+")[0])[:3]
    return tuple(int(n) for n in numbers)


def version_quirks(version: str) -> tuple[dict, list[str]]:
    """Extra top-level payload fields and warnings for a vLLM version (CONTRACT.md, "Version churn").

    vLLM 0.10.2/0.11.0 softmax the plugin's output along the wrong axis unless `"softmax": false`; later
    versions ignore the field (unknown top-level fields are dropped), so it is always sent.
    """
    extra: dict = {"softmax": False}
    warnings: list[str] = []
    v = _version_tuple(version)
    if v and v < (0, 10, 2):
        warnings.append(
            f"vLLM {version} predates IOProcessor plugins (0.10.2); image-to-image will not work with it."
        )
    elif v[:2] == (0, 15):
        warnings.append(f"vLLM {version} is known to be broken for TerraTorch models; use another version.")
    return extra, warnings


def server_source(request: MapFloodsRequest, info: Optional[RasterInfo] = None) -> tuple[str, str]:
    """(data, data_format) through which the server can read the input, or TransportUnsupported."""
    source = request.input_path
    if source.startswith(VSICURL):
        source = source[len(VSICURL):]
    if re.match(r"(?i)https?://", source):
        return source, "url"
    way_out = (
        "Use the tensor transport (a server started without the IOProcessor plugin), set a path mapping "
        "(a local folder the server sees under another path), or export the layer to a GeoTIFF in a folder "
        "the server can read or at an http(s) URL."
    )
    if source.startswith("/vsi"):
        raise TransportUnsupported(
            f"The image transport cannot send '{request.input_path}': the server reads rasters only by file "
            "path or http(s) URL.",
            way_out,
        )
    if not os.path.isfile(source):
        raise TransportUnsupported(
            f"The layer '{request.input_path}' is not a file (a database, web service or in-memory layer), "
            "so the server cannot read it.",
            way_out,
        )
    if (info is not None and info.driver == "VRT") or source.lower().endswith(".vrt"):
        raise TransportUnsupported(
            f"'{request.input_path}' is a virtual raster (VRT); the server reads the file's bytes and cannot "
            "follow the files a VRT refers to.",
            "Export it to a GeoTIFF first (Raster > Conversion > Translate), or use the tensor transport.",
        )
    local = os.path.abspath(source)
    if request.path_map_local and request.path_map_server:
        prefix = os.path.abspath(request.path_map_local)
        if local == prefix or local.startswith(prefix.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(local, prefix).replace(os.sep, "/")
            server_prefix = request.path_map_server.rstrip("/")
            return (server_prefix if rel == "." else f"{server_prefix}/{rel}"), "path"
    if request.server_can_read_local_files:
        return local, "path"
    raise TransportUnsupported(
        f"The server at {request.server_url} cannot read the local file '{request.input_path}' "
        "(it runs on another machine and the file is not under a mapped folder).",
        way_out,
    )


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


def run_image(
    request: MapFloodsRequest,
    client,
    info: RasterInfo,
    band_indices: list[int],
    model: str,
    progress: Progress,
    version: str = "",
    expected_seconds: float = 30.0,
) -> Stats:
    """Send one /pooling request, wait (cancellable), write the map; returns its statistics.

    The decoded server GeoTIFF goes to a private temp folder (removed whatever happens) rather than staying
    in memory next to its base64 text, which halves the peak memory for large scenes.
    """
    data, data_format = server_source(request, info)
    payload = build_payload(model, data, data_format, band_indices, version)
    workdir = tempfile.mkdtemp(prefix="floodmapper-")
    last_note = [0.0]

    def on_wait(elapsed: float) -> None:
        progress.set_progress(10.0 + 78.0 * (1.0 - math.exp(-elapsed / max(expected_seconds, 1.0))))
        if elapsed - last_note[0] >= 15.0:
            last_note[0] = elapsed
            progress.info(f"Still waiting for the server ({elapsed:.0f} s)")

    try:
        progress.set_progress(10)
        progress.info(
            f"Request sent ({data_format} {client.redact(data)}, bands {[b + 1 for b in band_indices]}); "
            "waiting for the server..."
        )
        t0 = time.monotonic()
        try:
            answer = client.pooling(payload, cancel=progress.is_canceled, on_wait=on_wait)
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
        progress.set_progress(90)
        progress.info(f"Writing the flood map to {request.output_path}")
        return finalize_classes(
            server_tiff, info.path, band_indices, request.output_path,
            cancel=progress.is_canceled,
            on_progress=lambda fraction: progress.set_progress(90.0 + 9.0 * fraction),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
