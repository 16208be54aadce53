"""Tensor-to-tensor transport: the client tiles, normalises and stitches; the server only runs the model.

Why this path exists: the IOProcessor (image-to-image) reads the whole raster inside the API server, cannot
take an inline upload from a remote client, has no nodata handling and no overlap. Here every step that
needs the raster happens on this side, window by window:

    windowed read (per worker thread) -> band selection -> reflectance scale/offset -> nodata mask
    -> normalise with the model's means/stds -> cast to the server's dtype -> .npy (or torch.save) bytes
    -> base64 -> POST /pooling -> float32 logits -> cos^2 blending in row bands -> argmax -> GeoTIFF rows

Memory is bounded by num_classes x tile x width for the row bands plus `concurrency` tiles in flight;
the whole raster is never held. The float16 trap: a float32 tensor sent to a float16 server kills the
whole server, so every tensor is cast to `spec.dtype` (ModelSpec) and nothing else is ever sent.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from . import raster, torch_save
from .errors import (
    Cancelled,
    ConnectionFailed,
    EngineDied,
    FloodMapperError,
    InputError,
    OutputError,
    ServerError,
)
from .model_spec import ModelSpec
from .progress import NullProgress, Progress, check_cancel
from .tiling import RowBandStitcher, Tile, TileGrid, overlap_pixels, read_plan

log = logging.getLogger("floodmapper.tensor")

try:  # optional: SIMD base64, ~10x the stdlib's speed (which holds the GIL: the per-tile floor without it)
    import pybase64 as _fast_b64
except ImportError:
    _fast_b64 = None


def _b64encode(data: Any) -> bytes:
    return _fast_b64.b64encode(data) if _fast_b64 is not None else base64.b64encode(data)


def _b64decode(data: Any) -> bytes:
    return _fast_b64.b64decode(data) if _fast_b64 is not None else base64.b64decode(data)


def base64_backend() -> str:
    return "pybase64" if _fast_b64 is not None else "stdlib"


DEFAULT_OVERLAP = 0.125  # 1/8 of the tile: enough context at tile edges, 1.3x the tiles of no overlap
# Tiles in flight at once. Measured (benchmarks/bench_tensor_real.py, demo model, fp16, 2 CPU cores,
# 16 tiles of 256²): 1.11-1.40 tiles/s at 1 and 2, 1.29-1.61 at 4, 1.58 at 8: vLLM batches what is in
# flight (max-num-seqs 8), and the next tiles are read and encoded meanwhile. 4 gets most of that gain
# while keeping a shared server's queue short; against a fast peer the client's own work is the limit.
DEFAULT_CONCURRENCY = 4
NPY_MIN_VERSION = (0, 19)  # vLLM accepts raw .npy bytes for image_embeds from this version on
ENCODING_NPY = "npy"
ENCODING_TORCH = "torch"
# How the logits come back. vLLM >= 0.11.1 answers `encoding_format: "bytes"` with the raw tensor as the body
# and its shape/dtype in a `metadata` header (vllm-project/vllm#27066): no base64 to decode, no JSON to scan,
# and `embed_dtype` float16 halves it for a float16 model (whose logits are float16 numbers anyway). Before
# that, "base64" (float32) is the only format a 3-D output passes.
ANSWER_BYTES = "bytes"
ANSWER_BASE64 = "base64"
BYTES_MIN_VERSION = (0, 12)
PROBABILITY_NODATA = -1.0
GDAL_CACHE_BYTES = 128 * 1024 * 1024  # a row of input blocks is re-read rather than cached
_INFO_EVERY_S = 5.0
_POLL_S = 0.1  # how often the main loop looks at the cancel flag


@dataclass
class TensorRunStats:
    """What run_tensor produced: raster.Stats' fields (water_pixels, valid_pixels, water_fraction,
    water_area_km2) plus how it was done."""

    output_path: str
    water_pixels: int
    valid_pixels: int
    water_fraction: float
    water_area_km2: float
    total_pixels: int
    tiles: int
    requests: int
    seconds: float
    encoding: str
    tile_size: int
    overlap: int
    concurrency: int
    scale: float
    offset: float
    probability_path: str = ""
    warnings: list[str] = field(default_factory=list)
    answer: str = ANSWER_BASE64

    @property
    def stats(self) -> raster.Stats:
        return raster.Stats(self.water_pixels, self.valid_pixels, self.water_fraction, self.water_area_km2)


# ----------------------------------------------------------------------------------------------
# payload encoding


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A .npy v1.0 header padded to a multiple of 192 bytes.

    192 is a multiple of 3, so base64(header) + base64(data) == base64(header + data): the tensor's bytes are
    base64-encoded straight from the array's buffer with no concatenated copy. (np.load reads any header
    length; 64-byte alignment is kept too.)
    """
    d = f"{{'descr': {np.dtype(dtype).str!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    pre = b"\x93NUMPY\x01\x00"
    body_len = len(pre) + 2 + len(d) + 1
    total = -(-body_len // 192) * 192
    header = d.encode("latin1") + b" " * (total - body_len) + b"\n"
    return pre + len(header).to_bytes(2, "little") + header


def npy_b64(arr: np.ndarray) -> bytes:
    """base64 of the .npy serialisation of a C-contiguous array (bytes, ASCII)."""
    arr = np.ascontiguousarray(arr)
    return _b64encode(_npy_header(arr.shape, arr.dtype)) + _b64encode(memoryview(arr).cast("B"))


def torch_b64(arr: np.ndarray, dtype: str) -> bytes:
    """base64 of torch.save(tensor): what vLLM < 0.19 accepts, and the only way to send bfloat16."""
    return _b64encode(torch_save.save_bytes(arr, dtype))


def carrier_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds a tensor of the server's dtype (bfloat16: its uint16 bit patterns)."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def to_server_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Float values as the server's dtype (in its carrier: see carrier_dtype)."""
    if dtype == "bfloat16":
        return torch_save.to_bfloat16(values)
    return np.asarray(values).astype(dtype, copy=False)


class PayloadEncoder:
    """Builds the /pooling JSON body as bytes around the base64 tensors (no json.dumps of megabytes)."""

    def __init__(self, model: str, spec: ModelSpec, encoding: str = ENCODING_NPY,
                 answer: str = ANSWER_BASE64) -> None:
        if encoding not in (ENCODING_NPY, ENCODING_TORCH):
            raise ValueError(f"unknown tensor encoding {encoding!r}")
        if answer not in (ANSWER_BYTES, ANSWER_BASE64):
            raise ValueError(f"unknown answer format {answer!r}")
        if spec.dtype == "bfloat16":
            encoding = ENCODING_TORCH  # .npy has no bfloat16
        self.encoding = encoding
        self.answer = answer
        self.model = model
        self.server_dtype = spec.dtype
        self.dtype = carrier_dtype(spec.dtype)
        # logits as float16 only from a float16 model (nothing is lost); float32 otherwise
        self.logits_dtype = "float16" if spec.dtype == "float16" else "float32"
        self.names = [spec.input_name] + ([spec.location_name] if spec.location_name else [])
        marks = {name: f"@@floodmapper:{i}@@" for i, name in enumerate(self.names)}
        doc: dict[str, Any] = {"model": model, "encoding_format": answer}
        if answer == ANSWER_BYTES:
            doc.update(embed_dtype=self.logits_dtype, endianness="little")
        doc["messages"] = [{"role": "user", "content": [{"type": "image_embeds", "image_embeds": marks}]}]
        template = json.dumps(doc, separators=(",", ":")).encode()
        self._parts: list[bytes] = []
        rest = template
        for name in self.names:
            head, rest = rest.split(marks[name].encode(), 1)
            self._parts.append(head)
        self._parts.append(rest)

    def encode(self, pixels: np.ndarray, location: Optional[np.ndarray] = None) -> bytes:
        if pixels.dtype != self.dtype:
            # Never let another dtype through: a float32 tensor to a float16 server kills it.
            raise TypeError(f"pixel tensor is {pixels.dtype}, the server runs {self.server_dtype}")
        tensors = [pixels]
        if len(self.names) > 1:
            if location is None:
                raise ValueError("the model takes location_coords and none was given")
            tensors.append(to_server_dtype(np.asarray(location, np.float32), self.server_dtype))
        out: list[bytes] = []
        for part, tensor in zip(self._parts, tensors):
            out.append(part)
            out.append(npy_b64(tensor) if self.encoding == ENCODING_NPY else torch_b64(tensor, self.server_dtype))
        out.append(self._parts[-1])
        return b"".join(out)


_DATA_LIST = re.compile(rb'"data"\s*:\s*\[\s*\{')
_DATA_STR = re.compile(rb'"data"\s*:\s*"')


def _logits_b64(content: bytes) -> Any:
    """The base64 logits of a /pooling answer, found without parsing megabytes of JSON when possible.

    vLLM answers {"id", "object", "created", "model", "data": [{"index", "object", "data": "<b64>"}], ...}.
    A base64 string holds no quote, so the string ends at the next quote; anything unexpected falls back
    to a full json.loads.
    """
    m = _DATA_LIST.search(content)
    if m is not None:
        inner = _DATA_STR.search(content, m.end())
        if inner is not None:
            end = content.find(b'"', inner.end())
            if end > 0 and content.find(b"}", m.end(), inner.start()) < 0:  # same object as the list's first
                return memoryview(content)[inner.end():end]
    doc = json.loads(content)
    return doc["data"][0]["data"]


def _binary_logits(content: bytes, metadata: str, num_classes: int, height: int, width: int,
                   dtype: str) -> np.ndarray:
    """The logits of a binary (`encoding_format: "bytes"`) answer: the body is the tensor itself."""
    endian = "<"
    if metadata:
        try:
            item = json.loads(metadata)["data"][0]
            dtype = str(item.get("embed_dtype") or dtype)
            endian = {"big": ">", "little": "<"}.get(str(item.get("endianness")), "=")
            shape = tuple(int(n) for n in item.get("shape") or ())
            start, end = int(item.get("start", 0)), int(item.get("end", len(content)))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ServerError(f"The server's binary answer has unreadable metadata ({exc}).",
                              "See the server log; is this a vLLM server?") from exc
        if shape and shape != (num_classes, height, width):
            raise ServerError(
                f"The server returned logits of shape {list(shape)}; this tile needs "
                f"[{num_classes}, {height}, {width}].",
                "The model spec (num_classes, tile size) does not match the served model; give its config.json.")
        content = memoryview(content)[start:end]
    if dtype not in ("float16", "float32"):
        raise ServerError(f"The server returned {dtype} logits; float16 or float32 was asked for.",
                          "Upgrade vLLM or report this with the server's version.")
    np_dtype = np.dtype(endian + ("f2" if dtype == "float16" else "f4"))
    expected = num_classes * height * width * np_dtype.itemsize
    if len(content) != expected:
        raise ServerError(
            f"The server returned {len(content)} bytes of logits; a {num_classes}x{height}x{width} {dtype} "
            f"output is {expected}.",
            "The model spec (num_classes, tile size) does not match the served model; give its config.json.")
    return np.frombuffer(content, dtype=np_dtype).reshape(num_classes, height, width)


def decode_logits(content: bytes, num_classes: int, height: int, width: int, content_type: str = "",
                  metadata: str = "", dtype: str = "float32") -> np.ndarray:
    """The logits [num_classes, height, width] of a /pooling response body, without extra copies.

    A binary answer (Content-Type application/octet-stream) is read in place; a JSON one holds base64
    float32. `dtype` is what was asked for (the binary answer's metadata, when sent, has the last word).
    """
    if content_type.split(";")[0].strip().lower() == "application/octet-stream":
        return _binary_logits(content, metadata, num_classes, height, width, dtype)
    try:
        b64 = _logits_b64(content)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ServerError(
            f"The server's /pooling answer is not a tensor-mode response ({type(exc).__name__}: {exc}).",
            "Check that the server runs a TerraTorch model without the IOProcessor plugin.") from exc
    if not isinstance(b64, (str, memoryview)):
        raise ServerError("The server returned logits as a list, not base64.",
                          "The request must carry encoding_format 'base64'; is this a vLLM server?")
    try:
        raw = _b64decode(b64)
    except ValueError as exc:
        raise ServerError(f"The server's logits are not valid base64 ({exc}).", "See the server log.") from exc
    expected = num_classes * height * width * 4
    if len(raw) != expected:
        raise ServerError(
            f"The server returned {len(raw)} bytes of logits; a {num_classes}x{height}x{width} float32 "
            f"output is {expected}.",
            "The model spec (num_classes, tile size) does not match the served model; give its config.json.")
    return np.frombuffer(raw, dtype="<f4").reshape(num_classes, height, width)


# ----------------------------------------------------------------------------------------------
# server facts


def parse_version(text: str) -> tuple[int, int]:
    head = text.strip().lstrip("v").split("+")[0]
    nums = []
    for part in head.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        nums.append(int(digits) if digits else 0)
    while len(nums) < 2:
        nums.append(0)
    return nums[0], nums[1]


def server_version(client: Any) -> str:
    """The server's vLLM version string ("" when it does not say)."""
    getter = getattr(client, "server_version", None) or getattr(client, "version", None)
    if callable(getter):
        value = getter()
        if isinstance(value, str):
            return value
    import requests

    try:
        resp = client.session.get(client.base_url.rstrip("/") + "/version", timeout=_timeouts(client))
    except requests.RequestException as exc:
        raise ConnectionFailed(f"Cannot reach {client.base_url}: {exc}.",
                               "Check the server URL and that the server is running.") from exc
    if resp.status_code != 200:
        return ""
    try:
        return str(resp.json().get("version", ""))
    except ValueError:
        return ""


def choose_answer(version: str) -> str:
    """The logits format to ask for: raw bytes from vLLM >= 0.12, base64 before (or when unknown)."""
    if version and parse_version(version) >= BYTES_MIN_VERSION:
        return ANSWER_BYTES
    return ANSWER_BASE64


def choose_encoding(version: str) -> str:
    """npy for vLLM >= 0.19 (no torch needed here), torch.save bytes before. Unknown -> npy."""
    if not version:
        return ENCODING_NPY
    return ENCODING_NPY if parse_version(version) >= NPY_MIN_VERSION else ENCODING_TORCH


def _timeouts(client: Any) -> Any:
    t = getattr(client, "timeout", None)
    if t is not None:
        return t
    return (float(getattr(client, "connect_timeout", 10.0)), float(getattr(client, "read_timeout", 600.0)))


def post_tile(client: Any, body: bytes, encoder: PayloadEncoder, spec: ModelSpec) -> np.ndarray:
    """POST one tile's body and decode the logits, whichever format the server answered in."""
    reply = client.post_raw("/pooling", body, model=encoder.model, tensor_request=True)
    headers = reply.headers
    return decode_logits(reply.content, spec.num_classes, spec.tile_height, spec.tile_width,
                         headers.get("Content-Type", ""), headers.get("metadata", ""), encoder.logits_dtype)


def _abort_threads(idents: list[int]) -> None:
    """Shut down the sockets these worker threads are blocked on, so vLLM drops their requests."""
    from .client import _abort_thread_connection

    for ident in idents:
        _abort_thread_connection(ident)


def _forget_thread() -> None:
    from .client import _forget_thread as forget

    forget(threading.get_ident())


# ----------------------------------------------------------------------------------------------
# raster side


def _band_numbers(band_indices: list[int], count: int, channels: int) -> list[int]:
    """1-based rasterio band numbers from 0-based indices (the IOProcessor's `indices` convention)."""
    if len(band_indices) != channels:
        raise InputError(f"The model takes {channels} bands and {len(band_indices)} were selected.",
                         f"Select exactly {channels} input bands in the model's order.")
    bad = [i for i in band_indices if not 0 <= int(i) < count]
    if bad:
        raise InputError(f"Band index(es) {bad} do not exist in a {count}-band raster.",
                         "Band indices are 0-based here; check the band selection.")
    return [int(i) + 1 for i in band_indices]


def _mask_needs_read(ds: Any, bands: list[int]) -> bool:
    from rasterio.enums import MaskFlags

    for b in bands:
        flags = ds.mask_flag_enums[b - 1]
        if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
            return True
    return False


def _nodata_in(nodata: Optional[float], dtype: np.dtype) -> Any:
    """The nodata value as a scalar of the data's dtype; None when no pixel can hold it (or it is NaN,
    which the finiteness check covers)."""
    if nodata is None or math.isnan(nodata):
        return None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if nodata != int(nodata) or not info.min <= nodata <= info.max:
            return None
        return dtype.type(int(nodata))
    return dtype.type(nodata)


def read_tile(ds: Any, bands: list[int], tile: Tile, mask_read: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(data [C, th, tw] in the file's dtype, valid [th, tw]) for a tile, reflect-padded past the edges."""
    from rasterio.windows import Window

    x_first, x_count, gx = read_plan(tile.x0, tile.width, ds.width)
    y_first, y_count, gy = read_plan(tile.y0, tile.height, ds.height)
    window = Window(x_first, y_first, x_count, y_count)
    data = ds.read(bands, window=window)
    invalid = np.zeros(data.shape[1:], dtype=bool)
    for i, b in enumerate(bands):
        nd = _nodata_in(ds.nodatavals[b - 1], data.dtype)
        if nd is not None:
            invalid |= data[i] == nd
    if data.dtype.kind == "f":
        invalid |= ~np.isfinite(data).all(axis=0)
    if mask_read:
        invalid |= (ds.read_masks(bands, window=window) == 0).any(axis=0)
    if gy is not None:
        data, invalid = data[:, gy], invalid[gy]
    if gx is not None:
        data, invalid = data[:, :, gx], invalid[:, gx]
    return data, ~invalid


def detect_scale(ds: Any, bands: list[int]) -> float:
    """Reflectance factor the IOProcessor would use: 1e-4 when the image mean is > 1, else 1.

    Estimated from up to 9 windows spread over the raster (nodata excluded), so a 20k x 20k file is not
    read twice.
    """
    side = 256
    xs = [0] if ds.width <= 3 * side else [0, (ds.width - side) // 2, ds.width - side]
    ys = [0] if ds.height <= 3 * side else [0, (ds.height - side) // 2, ds.height - side]
    w = ds.width if len(xs) == 1 else side
    h = ds.height if len(ys) == 1 else side
    total, count = 0.0, 0
    for y in ys:
        for x in xs:
            tile = Tile(0, 0, x, y, w, h)
            data, valid = read_tile(ds, bands, tile)
            if valid.any():
                vals = data[:, valid].astype(np.float64)
                total += float(vals.sum())
                count += vals.size
    if count == 0:
        return 1e-4 if np.dtype(ds.dtypes[bands[0] - 1]).kind in "iu" else 1.0
    return 1e-4 if total / count > 1.0 else 1.0


class Normaliser:
    """raw -> (raw * scale + offset - mean) / std in the server's dtype; nodata pixels set to 0 (the mean).

    Integer rasters (the usual x10000 reflectance) go through a per-band lookup table computed once in
    float64 and rounded once to the target dtype: one gather per band instead of five float passes, and
    the same rounding as the IOProcessor's float64 path. Values beyond float16's range are clipped, since
    inf would become NaN inside the model.
    """

    def __init__(self, spec: ModelSpec, scale: float, offset: float, src_dtype: Any = None) -> None:
        means = np.asarray(spec.means, np.float64)[:, None]
        stds = np.asarray(spec.stds, np.float64)[:, None]
        self.server_dtype = spec.dtype
        self.dtype = carrier_dtype(spec.dtype)
        # float16 overflows at 65504; float32 and bfloat16 share float32's range
        self.limit = float(np.finfo(np.float16 if spec.dtype == "float16" else np.float32).max)
        self.a = (scale / stds[:, 0]).astype(np.float32)[:, None, None]
        self.b = ((offset - means[:, 0]) / stds[:, 0]).astype(np.float32)[:, None, None]
        self.lut: Optional[np.ndarray] = None
        src = np.dtype(src_dtype) if src_dtype is not None else None
        if src is not None and src.kind in "iu" and src.itemsize <= 2:
            n = 1 << (8 * src.itemsize)
            unsigned = np.dtype(f"u{src.itemsize}")
            values = np.arange(n, dtype=np.int64).astype(unsigned).view(src).astype(np.float64)[None, :]
            lut = np.clip((values * scale + offset - means) / stds, -self.limit, self.limit)
            self.lut = to_server_dtype(lut if spec.dtype == "float16" else lut.astype(np.float32), spec.dtype)
            self.unsigned = unsigned

    def __call__(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.lut is not None and raw.dtype.itemsize == self.unsigned.itemsize and raw.dtype.kind in "iu":
            idx = raw.view(self.unsigned)
            out = np.empty(raw.shape, self.dtype)
            for c in range(raw.shape[0]):
                np.take(self.lut[c], idx[c], out=out[c])
        else:
            x = np.multiply(raw, self.a, dtype=np.float32)
            x += self.b
            if self.server_dtype != "float32":
                if not valid.all():
                    x[:, ~valid] = 0.0  # NaN/inf nodata must not decide the range check
                lo, hi = float(x.min()), float(x.max())
                if lo < -self.limit or hi > self.limit:
                    np.clip(x, -self.limit, self.limit, out=x)
            out = to_server_dtype(x, self.server_dtype)
        if not valid.all():
            out[:, ~valid] = 0
        return out


def tile_locations(ds: Any, grid: TileGrid, location_shape: tuple[int, ...],
                   mode: str = "tile") -> dict[tuple[int, int], np.ndarray]:
    """location_coords (lon, lat) per tile, in float32: the tile centre, or the raster centre as the
    IOProcessor does. The payload encoder casts them to the server's dtype."""
    from rasterio.warp import transform as warp_transform

    if ds.crs is None:
        raise InputError(
            "The model takes the location (lon, lat) of each tile, and the raster has no CRS.",
            "Assign the raster's coordinate reference system (e.g. with gdal_edit.py -a_srs) and retry.")
    tiles = list(grid)
    if mode == "raster":
        cols = [ds.width / 2.0] * len(tiles)
        rows = [ds.height / 2.0] * len(tiles)
    elif mode == "tile":
        cols = [t.x0 + min(t.width, ds.width - t.x0) / 2.0 for t in tiles]
        rows = [t.y0 + min(t.height, ds.height - t.y0) / 2.0 for t in tiles]
    else:
        raise ValueError(f"location mode {mode!r}: use 'tile' or 'raster'")
    xs, ys = [], []
    for c, r in zip(cols, rows):
        x, y = ds.transform * (c, r)
        xs.append(x)
        ys.append(y)
    lons, lats = warp_transform(ds.crs, "EPSG:4326", xs, ys)
    return {t.index: np.array([lon, lat], dtype=np.float32).reshape(location_shape)
            for t, lon, lat in zip(tiles, lons, lats)}


class _Outputs:
    """Class (and probability) GeoTIFFs written row band by row band into temp files, renamed at the end."""

    def __init__(self, ds: Any, output_path: str, probability_path: str, spec: ModelSpec) -> None:
        import rasterio
        from rasterio.errors import RasterioError

        self.spec = spec
        self.final = [output_path] + ([probability_path] if probability_path else [])
        self.temps: list[str] = []
        self.files: list[Any] = []
        self.stats = raster.StatsAccumulator(ds.crs.to_wkt() if ds.crs else None, ds.transform)
        profile = raster.output_profile(ds)
        try:
            for i, path in enumerate(self.final):
                self.temps.append(raster.temp_beside(path))
                if i == 0:
                    self.files.append(rasterio.open(self.temps[0], "w", **profile))
                else:
                    self.files.append(rasterio.open(self.temps[1], "w", **dict(
                        profile, dtype="float32", nodata=PROBABILITY_NODATA)))
        except (RasterioError, OutputError) as exc:
            self.discard()
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"Cannot create the output next to {output_path}: {exc}.",
                              "Choose a folder you can write to, with free space.") from None

    def sink(self, row0: int, logits: np.ndarray, valid: np.ndarray) -> None:
        from rasterio.windows import Window

        spec = self.spec
        h, w = valid.shape
        window = Window(0, row0, w, h)
        if spec.num_classes == 2:  # argmax of two, ties to class 0, without the index array
            other = logits[1 - spec.water_class]
            mine = logits[spec.water_class]
            water = mine > other if spec.water_class == 1 else mine >= other
        else:
            water = np.argmax(logits, axis=0) == spec.water_class
        classes = water.astype(np.uint8)  # CLASS_WATER = 1, CLASS_NOT_WATER = 0
        self.stats.add(window, classes, valid)
        classes[~valid] = raster.NODATA
        self.files[0].write(classes, 1, window=window)
        if len(self.files) > 1:
            top = logits.max(axis=0)
            expsum = np.exp(logits - top).sum(axis=0)
            prob = (np.exp(logits[spec.water_class] - top) / expsum).astype(np.float32)
            prob[~valid] = PROBABILITY_NODATA
            self.files[1].write(prob, 1, window=window)

    def commit(self) -> None:
        from rasterio.errors import RasterioError

        try:
            for f in self.files:
                f.close()
        except RasterioError as exc:
            self.discard()
            raise OutputError(f"Writing the flood map failed: {exc}.", "Check free disk space.") from None
        self.files = []
        # All outputs or none: with a probability raster too, an older file at a target is set aside first
        # and put back if a later rename fails (the output folder removed meanwhile, say).
        backups: dict[str, str] = {}
        renamed: list[str] = []
        try:
            for tmp, final in zip(self.temps, self.final):
                if len(self.final) > 1 and os.path.lexists(final):
                    backup = raster.temp_beside(final)
                    try:
                        os.replace(final, backup)
                    except OSError:
                        os.remove(backup)
                        raise
                    backups[final] = backup
                os.replace(tmp, final)
                renamed.append(final)
        except (OSError, OutputError) as exc:
            for path in renamed:
                try:
                    os.remove(path)
                except OSError as undo:
                    log.warning("could not remove %s: %s", path, undo)
            for final, backup in backups.items():
                try:
                    os.replace(backup, final)
                except OSError as undo:
                    log.warning("could not put back the older %s (it is %s): %s", final, backup, undo)
            self.discard()
            failed = self.final[len(renamed)]
            detail = exc.message if isinstance(exc, OutputError) else (exc.strerror or str(exc))
            raise OutputError(
                f"Moving the finished map into place as '{failed}' failed: {detail}.",
                "Check that the output folder still exists and that you can write to it, then run again.",
            ) from None
        for backup in backups.values():
            try:
                os.remove(backup)
            except OSError as exc:
                log.warning("could not remove the older output set aside as %s: %s", backup, exc)
        self.temps = []

    def discard(self) -> None:
        """Remove the temp files. Closing first may fail on a full disk; the files go either way."""
        from rasterio.errors import RasterioError

        for f in self.files:
            try:
                f.close()
            except (RasterioError, OSError) as exc:  # the error being raised already says what failed
                log.debug("closing a discarded output failed: %s", exc)
        self.files = []
        for tmp in self.temps:
            for path in (tmp, tmp + ".aux.xml"):
                if os.path.exists(path):
                    os.remove(path)
        self.temps = []


# ----------------------------------------------------------------------------------------------
# the run


class _ThreadDatasets:
    """One rasterio dataset per worker thread (a GDAL handle must not be shared between threads)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.local()
        self.lock = threading.Lock()
        self.opened: list[Any] = []

    def get(self) -> Any:
        ds = getattr(self.local, "ds", None)
        if ds is None:
            import rasterio

            ds = rasterio.open(self.path)
            self.local.ds = ds
            with self.lock:
                self.opened.append(ds)
        return ds

    def close_all(self) -> None:
        with self.lock:
            for ds in self.opened:
                ds.close()
            self.opened.clear()


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def run_tensor(request: Any, client: Any, spec: ModelSpec, band_indices: list[int],
               progress: Optional[Progress] = None, *, model: Optional[str] = None,
               encoding: Optional[str] = None, answer: Optional[str] = None, location_mode: str = "tile",
               progress_span: tuple[float, float] = (0.0, 100.0)) -> TensorRunStats:
    """Map floods on `request.input_path` through a tensor-mode vLLM server, writing `request.output_path`.

    `band_indices` are 0-based input band indices in the model's band order. `request` is a
    MapFloodsRequest (overlap, concurrency, scale, offset, probability_path are read from it).
    Raises Cancelled (nothing left behind) when `progress.is_canceled()` turns true. Progress goes from
    progress_span[0] to progress_span[1] percent, tile by tile. `location_mode` "raster" sends the raster
    centre for every tile (what the IOProcessor does) instead of each tile's centre.
    """
    import rasterio

    progress = progress or NullProgress()
    t_start = time.monotonic()
    spec.validate_for_tensor()
    in_path, out_path = str(request.input_path), str(request.output_path)
    prob_path = str(getattr(request, "probability_path", "") or "")
    raster.check_output_path(out_path, in_path)
    if prob_path:
        raster.check_output_path(prob_path, in_path)
        if os.path.abspath(prob_path) == os.path.abspath(out_path):
            raise OutputError("The probability output and the class output are the same file.",
                              "Give the probability raster its own file name.")

    concurrency = int(getattr(request, "concurrency", None) or DEFAULT_CONCURRENCY)
    if concurrency < 1:
        raise InputError(f"concurrency={concurrency}; it must be at least 1.", "Use 1 or more.")
    frac = getattr(request, "overlap", None)
    frac = DEFAULT_OVERLAP if frac is None else float(frac)
    if not 0 <= frac < 0.5:
        raise InputError(f"overlap={frac} is not a fraction of the tile in [0, 0.5).",
                         "Use e.g. 0.125 (1/8 of the tile) or 0 for no overlap.")
    model = model or getattr(request, "model", "") or ""
    if not model:
        raise InputError("No served model name was given.", "Pass the name GET /v1/models lists.")

    cache = min(GDAL_CACHE_BYTES, _current_cache_bytes())
    with rasterio.Env(GDAL_CACHEMAX=cache):
        try:
            src = rasterio.open(in_path)
        except rasterio.errors.RasterioError as exc:
            raise InputError(f"Cannot open the input raster {in_path}: {exc}.",
                             "Check the path (or URL) and that GDAL can read the format.") from exc
        with src:
            bands = _band_numbers(band_indices, src.count, spec.channels)
            scale = getattr(request, "scale", None)
            offset = getattr(request, "offset", None)
            offset = 0.0 if offset is None else float(offset)
            if scale is None:
                scale = detect_scale(src, bands)
                progress.info(f"Reflectance scale auto-detected: x{scale:g}"
                              + (f", offset {offset:g}" if offset else ""))
            scale = float(scale)
            ov = overlap_pixels(min(spec.tile_height, spec.tile_width), frac)
            grid = TileGrid.build(src.width, src.height, spec.tile_width, spec.tile_height, ov, ov)
            locations = (tile_locations(src, grid, spec.location_shape, location_mode)
                         if spec.has_location else {})
            version = server_version(client) if encoding is None or answer is None else ""
            if encoding is None:
                encoding = choose_encoding(version)
            if answer is None:
                answer = choose_answer(version)
            encoder = PayloadEncoder(model, spec, encoding, answer)
            encoding = encoder.encoding  # bfloat16 travels only as torch.save bytes
            normalise = Normaliser(spec, scale, offset, src.dtypes[bands[0] - 1])
            mask_read = _mask_needs_read(src, bands)
            outputs = _Outputs(src, out_path, prob_path, spec)
            progress.info(
                f"Tensor transport: {src.width}x{src.height} px in {len(grid)} tiles of "
                f"{spec.tile_width}x{spec.tile_height} (overlap {ov} px), {concurrency} in flight, "
                f"{encoding} tensors in {spec.dtype}, {answer} logits")
            try:
                n_requests = _run_tiles(in_path, grid, bands, mask_read, normalise, encoder, locations,
                                        client, spec, outputs, concurrency, progress, progress_span)
                outputs.commit()
            except BaseException:
                outputs.discard()
                raise
            seconds = time.monotonic() - t_start
            total = src.width * src.height
    progress.set_progress(progress_span[1])
    progress.info(f"Tensor transport done: {len(grid)} tiles, {n_requests} requests in {seconds:.1f} s")
    st = outputs.stats.result()
    return TensorRunStats(
        output_path=out_path, water_pixels=st.water_pixels, valid_pixels=st.valid_pixels,
        water_fraction=st.water_fraction, water_area_km2=st.water_area_km2, total_pixels=total,
        tiles=len(grid), requests=n_requests, seconds=seconds,
        encoding=encoding, tile_size=spec.tile_size, overlap=ov, concurrency=concurrency, scale=scale,
        offset=offset, probability_path=prob_path, answer=answer,
    )


def _current_cache_bytes() -> int:
    from rasterio._env import get_gdal_config

    value = get_gdal_config("GDAL_CACHEMAX")
    try:
        value = int(value)
    except (TypeError, ValueError):
        return GDAL_CACHE_BYTES
    return value * 1024 * 1024 if value < 100000 else value  # GDAL reads small values as MB


def _run_tiles(in_path: str, grid: TileGrid, bands: list[int], mask_read: bool, normalise: Normaliser,
               encoder: PayloadEncoder, locations: dict, client: Any, spec: ModelSpec, outputs: _Outputs,
               concurrency: int, progress: Progress, span: tuple[float, float]) -> int:
    """Send every tile with at most `concurrency` in flight; stitch results as they come back."""
    from rasterio.errors import RasterioError

    stop = threading.Event()
    datasets = _ThreadDatasets(in_path)
    stitcher = RowBandStitcher(grid, spec.num_classes, outputs.sink)
    sent = [0]
    lock = threading.Lock()
    on_wire: set[int] = set()  # worker threads with a request outstanding

    def work(tile: Tile) -> Optional[tuple[Tile, Optional[np.ndarray], np.ndarray]]:
        if stop.is_set():
            return None
        try:
            raw, valid = read_tile(datasets.get(), bands, tile, mask_read)
        except RasterioError as exc:
            raise InputError(f"Reading the input raster failed at pixel ({tile.x0}, {tile.y0}): {exc}.",
                             "Check that the file is complete and readable (gdalinfo -checksum).") from None
        if not valid.any():
            return tile, None, valid  # nothing to ask the model about
        body = encoder.encode(normalise(raw, valid), locations.get(tile.index))
        del raw
        ident = threading.get_ident()
        with lock:
            if stop.is_set():
                return None
            sent[0] += 1
            on_wire.add(ident)
        try:
            logits = post_tile(client, body, encoder, spec)
        finally:
            # Under the lock that the cancel path aborts under: a thread is aborted only while it is on the
            # wire, and its abort mark is cleared before its ident can be reused by another thread.
            with lock:
                on_wire.discard(ident)
                _forget_thread()
        del body
        if stop.is_set():
            return None
        if np.isnan(logits).any():  # NaN would silently read as "not water" everywhere it lands
            raise ServerError(
                f"The model returned NaN logits for the tile at pixel ({tile.x0}, {tile.y0}).",
                "The input is probably outside the range the model expects (an overflow in float16): check "
                "SCALE/OFFSET (reflectance 0-1) and BANDS, or serve the model in float32.")
        return tile, logits, valid

    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="floodmapper-tile")
    tiles = iter(grid)
    pending: set[Future] = set()
    total = len(grid)
    done_count = 0
    t0 = last_info = time.monotonic()
    clean_exit = False
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < concurrency:
                tile = next(tiles, None)
                if tile is None:
                    exhausted = True
                    break
                pending.add(executor.submit(work, tile))
            if not pending:
                break
            finished, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
            check_cancel(progress)
            for fut in finished:
                try:
                    result = fut.result()
                except FloodMapperError as exc:
                    if isinstance(exc, EngineDied):
                        exc.message += (
                            f" This run sent {spec.dtype} tensors of shape [{spec.channels}, {spec.tile_height}, "
                            f"{spec.tile_width}] (dtype: {spec.dtype_reason or 'from the model spec'}).")
                        exc.hint += (" Restart the server with an explicit --dtype and give Flood Mapper the same "
                                     "one (SERVER_DTYPE), and give the served model's config.json as MODEL_SPEC "
                                     "so the tiles have the model's shape.")
                    if not isinstance(exc, Cancelled) and done_count:
                        # what was done, so the user can judge a retry (nothing of it is kept)
                        exc.message += (f" The run stopped after {done_count} of {total} tiles; no output "
                                        "was written.")
                    raise
                if result is None:  # only after stop, which only a raise sets
                    continue
                stitcher.add(*result)
                done_count += 1
            if finished:
                now = time.monotonic()
                progress.set_progress(span[0] + (span[1] - span[0]) * done_count / total)
                if now - last_info >= _INFO_EVERY_S or done_count == total:
                    rate = done_count / max(now - t0, 1e-9)
                    progress.info(f"Tile {done_count}/{total}, {rate:.2f} tiles/s, "
                                  f"ETA {_fmt_eta((total - done_count) / rate if rate else 0)}")
                    last_info = now
        if not stitcher.finished:
            raise FloodMapperError("Internal error: some raster rows were never written.",
                                   "Please report this with the raster size and tile size.")
        clean_exit = True
        return sent[0]
    finally:
        with lock:
            stop.set()
            if not clean_exit:
                _abort_threads(list(on_wire))  # vLLM sees the hang-up and drops those requests
        if clean_exit:
            executor.shutdown(wait=True)
            datasets.close_all()
        else:
            # Drop what is queued; the aborted requests end in their threads and are ignored. The threads'
            # datasets are closed once those threads are done, off the caller's thread.
            for fut in pending:
                fut.cancel()
            executor.shutdown(wait=False, cancel_futures=True)
            threading.Thread(target=_close_later, args=(executor, datasets), daemon=True,
                             name="floodmapper-tile-cleanup").start()


def _close_later(executor: ThreadPoolExecutor, datasets: _ThreadDatasets) -> None:
    executor.shutdown(wait=True)
    datasets.close_all()


__all__ = [
    "DEFAULT_CONCURRENCY", "DEFAULT_OVERLAP", "PayloadEncoder", "TensorRunStats", "decode_logits",
    "base64_backend", "choose_answer", "choose_encoding", "post_tile", "npy_b64", "run_tensor",
]
