"""Model weights in and out without torch (Lightning .ckpt, torch .pt, safetensors).

The QGIS Python has no torch, so a Lightning `.ckpt`, a `.pt`/`.pth` (torch zip format) or a
`.safetensors` file is read here with numpy only, and without executing pickled code: a restricted
unpickler rebuilds tensors and plain containers and turns every other object into an inert
placeholder. The model's weights are written back as one flat `model.safetensors`, optionally
with float tensors in float16.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

from ..errors import ModelSpecError

PathLike = Union[str, Path]
WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".bin")


_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_STORAGE_DTYPES = {
    "DoubleStorage": ("F64", np.float64), "FloatStorage": ("F32", np.float32),
    "HalfStorage": ("F16", np.float16), "BFloat16Storage": ("BF16", np.uint16),
    "LongStorage": ("I64", np.int64), "IntStorage": ("I32", np.int32), "ShortStorage": ("I16", np.int16),
    "CharStorage": ("I8", np.int8), "ByteStorage": ("U8", np.uint8), "BoolStorage": ("BOOL", np.bool_),
}


@dataclass
class Tensor:
    """A tensor read from a checkpoint: safetensors dtype name and a numpy array (BF16 kept as raw uint16)."""

    dtype: str
    array: np.ndarray


class _Opaque:
    """Stands in for any non-tensor object in a checkpoint (optimizer state, hyper-parameters)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_args):
    dtype_name, arr = storage
    itemsize = arr.dtype.itemsize
    size = tuple(size)
    if not size:
        return Tensor(dtype_name, arr[offset:offset + 1].reshape(()).copy())
    view = np.lib.stride_tricks.as_strided(arr[offset:], shape=size, strides=tuple(s * itemsize for s in stride))
    return Tensor(dtype_name, np.ascontiguousarray(view))


def _rebuild_parameter(data, *_args):
    return data


def _rebuild_from_type_v2(func, _new_type, args, _state):
    return func(*args)


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds tensors from torch's zip format; refuses to import anything (like weights_only=True)."""

    def __init__(self, fh, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(fh)
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, tuple] = {}
        order = "little"
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode().strip()
        self.byteorder = "<" if order == "little" else ">"

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return _rebuild_from_type_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name == "Size":
            return tuple
        if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict", "slice"):
            return {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict,
                    "slice": slice}[name]
        return _Opaque

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            # torch >= 2.x untyped storages pickle a dtype; rare in checkpoints, not supported here
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        dtype_name, np_dtype = _STORAGE_DTYPES[storage_type.name]
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            arr = np.frombuffer(raw, dtype=np.dtype(np_dtype).newbyteorder(self.byteorder))
            self.storages[key] = (dtype_name, arr.astype(np.dtype(np_dtype).newbyteorder("<"), copy=False))
        return self.storages[key]


def read_torch_zip(file: Union[PathLike, IO[bytes]]) -> Any:
    """The object a torch.save() zip holds (a path or a binary file object), tensors as `Tensor`.

    Nothing is imported: objects other than tensors and plain containers become inert placeholders.
    """
    if isinstance(file, (str, Path)):
        file = Path(file)
    name = getattr(file, "name", "the tensor")
    if not zipfile.is_zipfile(file):
        raise ModelSpecError(
            f"{name} is not a torch zip checkpoint (it may use torch's pre-1.6 format).",
            "Re-save it with a recent torch: torch.save(torch.load(old), new).",
        )
    with zipfile.ZipFile(file) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise ModelSpecError(f"{name} has no data.pkl; it is not a torch.save() file.",
                                 "Pass the Lightning .ckpt or a torch.save()d state dict.")
        prefix = pkl[0][: -len("data.pkl")]
        with zf.open(pkl[0]) as fh:
            return _TorchUnpickler(fh, zf, prefix).load()


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ModelSpecError(f"{path.name} is truncated.", "Copy the weights file again.")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ModelSpecError(f"{path.name} is not a safetensors file.", "Pass a .safetensors, .ckpt or .pt.")
        header = json.loads(fh.read(n))
        blob = fh.read()
    out: dict[str, Tensor] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dt = meta["dtype"]
        if dt not in _ST_DTYPES:
            raise ModelSpecError(f"{path.name}: tensor {name} has unsupported dtype {dt}.", "")
        b, e = meta["data_offsets"]
        arr = np.frombuffer(blob[b:e], dtype=np.dtype(_ST_DTYPES[dt]).newbyteorder("<")).reshape(meta["shape"])
        out[name] = Tensor(dt, arr)
    return out


def read_weights(path: PathLike) -> dict[str, Tensor]:
    """The model's tensors from a checkpoint, keyed relative to the TerraTorch model (no `model.` prefix).

    A Lightning checkpoint's `state_dict` is used (only its `model.*` entries: losses and metrics are
    not part of the served model); a flat dict is used as it is. As vLLM's loader does for Lightning
    state dicts, `pos_embed` entries (recomputed at build) are dropped and `_timm_module.` is removed.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        raw: Any = _read_safetensors(p)
    else:
        raw = read_torch_zip(p)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        sd = {k: v for k, v in raw["state_dict"].items() if isinstance(v, Tensor)}
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    elif isinstance(raw, dict):
        sd = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
        if sd and all(k.startswith("model.") for k in sd):
            sd = {k[len("model."):]: v for k, v in sd.items()}
    else:
        sd = {}
    out = {}
    for k, v in sd.items():
        if "pos_embed" in k:
            continue
        out[k.replace("_timm_module.", "")] = v
    return out


def write_safetensors(path: PathLike, tensors: dict[str, Tensor], fp16: bool = False) -> int:
    """Write tensors as safetensors (float tensors as float16 when `fp16`); returns the file size."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        dt, arr = t.dtype, t.array
        if fp16 and dt in ("F32", "F64", "BF16"):
            if dt == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            if np.abs(arr).max(initial=0) < 65000:
                arr, dt = arr.astype(np.float16), "F16"
            else:  # out of float16 range: keep float32
                arr, dt = arr.astype(np.float32), "F32"
        data = np.ascontiguousarray(arr).astype(np.dtype(arr.dtype).newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hbytes)))
        fh.write(hbytes)
        for b in blobs:
            fh.write(b)
    return 8 + len(hbytes) + offset
