"""torch.save()'s file format for one dense tensor, written without torch.

vLLM takes `image_embeds` as `.npy` bytes (from 0.19) or as `torch.save` bytes. numpy has no bfloat16, so a
bfloat16 server can only be fed this way, and QGIS's Python has no torch: the few bytes of pickle that
torch.save writes for a contiguous tensor are written here by hand. `torch.load(..., weights_only=True)`
(what vLLM uses) reads them: the pickle names only `torch._utils._rebuild_tensor_v2`, a storage class and
`collections.OrderedDict`, which its restricted unpickler allows.

bfloat16 values are carried in numpy as uint16 (the upper half of a float32, rounded to nearest even).
"""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np

# numpy dtype (or "bfloat16") -> torch's legacy storage class name, as torch.save pickles it
STORAGE_CLASSES = {
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "float64": "DoubleStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "uint8": "ByteStorage",
}
_ALIGN = 64  # torch aligns storages to 64 bytes in its archives (for mmap); its reader does not need it


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values -> bfloat16 bit patterns (uint16), rounded to nearest, ties to even (as torch does).

    NaN stays NaN (its quiet bit is kept); the callers never send one.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32."""
    return (np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)  # BININT
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _pickle(storage_class: str, shape: tuple[int, ...]) -> bytes:
    """The pickle torch.save writes for a contiguous tensor: _rebuild_tensor_v2(storage, 0, size, stride,
    False, OrderedDict()), with the storage as persistent id ('storage', class, '0', 'cpu', numel)."""
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    stride = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
    return b"".join([
        b"\x80\x02",  # PROTO 2
        b"ctorch._utils\n_rebuild_tensor_v2\n",  # GLOBAL
        b"(",  # MARK: the arguments
        b"(", _text("storage"), b"ctorch\n", storage_class.encode(), b"\n", _text("0"), _text("cpu"),
        _int(numel), b"t",  # the persistent id tuple
        b"Q",  # BINPERSID
        _int(0),  # storage offset
        _tuple(shape), _tuple(stride),
        b"\x89",  # NEWFALSE: requires_grad
        b"ccollections\nOrderedDict\n)R",  # OrderedDict(): backward hooks
        b"t",  # TUPLE: the arguments
        b"R",  # REDUCE
        b".",  # STOP
    ])


def _stored(archive: zipfile.ZipFile, name: str, data: bytes, align: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    if align:
        # local header = 30 bytes + name + extra: pad the extra field so the data starts on a boundary
        start = archive.fp.tell() + 30 + len(name.encode()) + 4
        pad = -start % _ALIGN
        info.extra = struct.pack("<HH", 0xF0F0, pad) + b"\0" * pad  # an unknown extra id: readers skip it
    archive.writestr(info, data)


def save_bytes(array: np.ndarray, dtype: str) -> bytes:
    """torch.save(tensor) of `array` as a `dtype` tensor (for "bfloat16", `array` holds its uint16 bits)."""
    if dtype not in STORAGE_CLASSES:
        raise ValueError(f"no torch storage for dtype {dtype!r}")
    if dtype == "bfloat16":
        if array.dtype != np.uint16:
            raise TypeError("bfloat16 tensors are given as their uint16 bit patterns")
    elif array.dtype != np.dtype(dtype):
        raise TypeError(f"array is {array.dtype}, not {dtype}")
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        _stored(archive, "archive/data.pkl", _pickle(STORAGE_CLASSES[dtype], tuple(data.shape)))
        _stored(archive, "archive/byteorder", b"little")
        _stored(archive, "archive/data/0", memoryview(data).cast("B").tobytes(), align=True)
        _stored(archive, "archive/version", b"3\n")
    return buf.getvalue()
