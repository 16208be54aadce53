"""The wire format of tensor requests and answers: tiles as base64 `.npy` (or torch.save) inside the
/pooling JSON, and logits back as raw bytes or base64.

The request body is the JSON around the base64 tensors, kept in parts that are sent one after the other (no
json.dumps of megabytes, no joined copy); the answer is read in place where it can be (no second copy of the
logits). The float16 trap: a tensor in another dtype
than the server's stops its engine, so every tensor goes in the server's dtype and nothing else.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Optional

import numpy as np

from ..errors import ServerError
from ..model_spec import ModelSpec
from ..versions import version_tuple
from . import torch_save
from .lookup import lookup

_fast_b64: Any = None  # pybase64 once imported: SIMD base64, ~10x the stdlib's speed (which holds the GIL)


def load_fast_base64() -> bool:
    """Use pybase64 from now on if it can be imported; tried again by each encoder, so that a package the plugin's
    Install added in this QGIS session counts from the next run on."""
    global _fast_b64
    if _fast_b64 is None:
        try:
            import pybase64
        except ImportError:
            return False
        _fast_b64 = pybase64
    return True


load_fast_base64()


def _b64encode(data: Any) -> bytes:
    return _fast_b64.b64encode(data) if _fast_b64 is not None else base64.b64encode(data)


def _b64decode(data: Any) -> bytes:
    return _fast_b64.b64decode(data) if _fast_b64 is not None else base64.b64decode(data)


def base64_backend() -> str:
    return "pybase64" if _fast_b64 is not None else "stdlib"


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
    return b"".join(npy_b64_parts(arr))


def npy_b64_parts(arr: np.ndarray) -> tuple[bytes, bytes]:
    """npy_b64 in two parts, the header's and the data's, that follow each other unchanged (no joined copy)."""
    arr = np.ascontiguousarray(arr)
    return _b64encode(_npy_header(arr.shape, arr.dtype)), _b64encode(memoryview(arr).cast("B"))


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


class Body:
    """A request body in parts, sent one after the other under its total Content-Length: the megabytes of base64
    are never copied into one joined string. It can be sent again (a retried request iterates it anew)."""

    __slots__ = ("parts", "length")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = tuple(part for part in parts if part)
        self.length = sum(len(part) for part in self.parts)

    def __len__(self) -> int:  # requests declares it as Content-Length (a body without one goes chunked)
        return self.length

    def __iter__(self) -> Any:
        return iter(self.parts)

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


class PayloadEncoder:
    """Builds the /pooling JSON body around the base64 tensors (no json.dumps of megabytes)."""

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
        load_fast_base64()
        self.base64 = base64_backend()  # which encoder this run's tiles go through
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
        """The body as one bytes string."""
        return bytes(self.body(pixels, location))

    def body(self, pixels: np.ndarray, location: Optional[np.ndarray] = None) -> Body:
        """The body in parts, what a tile's request sends."""
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
            if self.encoding == ENCODING_NPY:
                header, data = npy_b64_parts(tensor)
                out += [part + header, data]  # the JSON before a tensor goes out with its .npy header
            else:
                out += [part, torch_b64(tensor, self.server_dtype)]
        out.append(self._parts[-1])
        return Body(out)


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


_FLOAT16_TABLE: Optional[np.ndarray] = None


def logits_float32(logits: np.ndarray) -> np.ndarray:
    """Logits as float32, what the NaN check and the blending work in.

    float16 logits go through a 65536-entry table indexed by their bit patterns: exact for every value
    (NaN and inf included), and cheaper than numpy's own float16 cast and float16 NaN test, which have no
    vector path on most numpy builds (together ~2 ms of a 512x512 tile, ~0.4 ms this way).
    """
    global _FLOAT16_TABLE
    if logits.dtype != np.float16:  # float32, or a byte order this machine does not have
        return logits.astype(np.float32, copy=False)
    if _FLOAT16_TABLE is None:
        _FLOAT16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return lookup(_FLOAT16_TABLE, np.ascontiguousarray(logits).view(np.uint16))


def choose_answer(version: str) -> str:
    """The logits format to ask for: raw bytes from vLLM >= 0.12, base64 before (or when unknown)."""
    if version and version_tuple(version) >= BYTES_MIN_VERSION:
        return ANSWER_BYTES
    return ANSWER_BASE64


def choose_encoding(version: str) -> str:
    """npy for vLLM >= 0.19 (no torch needed here), torch.save bytes before. Unknown -> npy."""
    if not version:
        return ENCODING_NPY
    return ENCODING_NPY if version_tuple(version) >= NPY_MIN_VERSION else ENCODING_TORCH
