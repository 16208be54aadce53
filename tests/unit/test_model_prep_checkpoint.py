"""Checkpoints read without torch (torch zip through a restricted unpickler, safetensors)."""

from __future__ import annotations

import io
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from plugin.core.errors import ModelSpecError
from plugin.core.model_prep import checkpoint, read_weights
from tests.fixtures.training_run import tensors


class _FakeStorage:
    def __init__(self, arr):
        self.arr = arr


def _fake_torch(monkeypatch) -> types.SimpleNamespace:
    """Fake `torch` globals so pickle names them as torch.save does (the QGIS Python has no torch)."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*a):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name in ("FloatStorage", "LongStorage", "HalfStorage"):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch_mod, name, storage_types[name])
    torch_mod._utils = utils_mod
    # an arbitrary class in the hyper-parameters, as Lightning checkpoints carry
    extra_mod = types.ModuleType("lightning_fake")
    extra_mod.AttributeDict = type("AttributeDict", (dict,), {"__module__": "lightning_fake"})
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
    monkeypatch.setitem(sys.modules, "lightning_fake", extra_mod)
    return types.SimpleNamespace(rebuild=_rebuild_tensor_v2, storage_types=storage_types,
                                 AttributeDict=extra_mod.AttributeDict)


def _torch_save(path: Path, obj, fake) -> None:
    """Write torch's zip layout: archive/data.pkl with persistent storage ids, archive/data/<key>."""
    kinds = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
             np.dtype(np.float16): "HalfStorage"}

    class T:  # reduces the way torch.Tensor does
        def __init__(self, arr):
            self.arr = arr

        def __reduce_ex__(self, proto):
            strides = tuple(s // self.arr.itemsize for s in self.arr.strides)
            return (fake.rebuild, (_FakeStorage(self.arr), 0, tuple(self.arr.shape), strides, False, OrderedDict()))

    class P(pickle.Pickler):
        keys: list = []

        def persistent_id(self, o):
            if isinstance(o, _FakeStorage):
                self.keys.append(o.arr)
                return ("storage", fake.storage_types[kinds[o.arr.dtype]], str(len(self.keys) - 1), "cpu",
                        o.arr.size)
            return None

    def wrap(o):
        if isinstance(o, np.ndarray):
            return T(o.copy(order="C"))
        if isinstance(o, dict):
            return type(o)((k, wrap(v)) for k, v in o.items())
        if isinstance(o, list):
            return [wrap(v) for v in o]
        return o

    buf = io.BytesIO()
    p = P(buf, protocol=2)
    p.keys = []
    p.dump(wrap(obj))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for i, arr in enumerate(p.keys):
            zf.writestr(f"archive/data/{i}", arr.tobytes())


def test_lightning_ckpt_is_read_without_torch(tmp_path, monkeypatch):
    arrays = tensors()
    sd = OrderedDict(("model." + k, v) for k, v in arrays.items())
    sd["criterion.weight"] = np.ones(2, np.float32)  # not part of the served model
    ckpt = tmp_path / "epoch=3.ckpt"
    fake = _fake_torch(monkeypatch)
    _torch_save(ckpt, {"epoch": 3, "global_step": 40, "state_dict": sd,
                       "hyper_parameters": fake.AttributeDict(lr=0.001),
                       "optimizer_states": [{"state": {0: {"exp_avg": np.zeros(3, np.float32)}}}]}, fake)
    monkeypatch.delitem(sys.modules, "torch")  # reading must not need it
    monkeypatch.delitem(sys.modules, "lightning_fake")
    got = read_weights(ckpt)
    assert sorted(got) == sorted(k for k in arrays if "pos_embed" not in k)
    for k, t in got.items():
        assert np.array_equal(t.array, arrays[k]), k
    assert got["decoder.bottleneck.norm.num_batches_tracked"].dtype == "I64"
    assert got["decoder.bottleneck.norm.num_batches_tracked"].array.shape == ()


def test_flat_pt_state_dict(tmp_path, monkeypatch):
    arrays = tensors()
    pt = tmp_path / "w.pt"
    _torch_save(pt, OrderedDict(arrays), _fake_torch(monkeypatch))
    got = read_weights(pt)
    assert np.array_equal(got["head.head.1.weight"].array, arrays["head.head.1.weight"])


def test_read_torch_zip_takes_a_path_or_a_file_object(tmp_path, monkeypatch):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64)}
    pt = tmp_path / "t.pt"
    _torch_save(pt, OrderedDict(arrays), _fake_torch(monkeypatch))
    for source in (pt, str(pt), io.BytesIO(pt.read_bytes())):
        got = checkpoint.read_torch_zip(source)
        assert np.array_equal(got["w"].array, arrays["w"]) and got["w"].dtype == "F32"
        assert got["n"].dtype == "I64" and got["n"].array.shape == () and int(got["n"].array) == 3


def test_read_torch_zip_names_what_is_not_a_torch_file(tmp_path):
    bad = tmp_path / "old.pt"
    bad.write_bytes(b"\x80\x02 legacy pickle, not a zip")
    with pytest.raises(ModelSpecError, match=r"old\.pt is not a torch zip checkpoint \(it may use torch's pre-1\.6"):
        checkpoint.read_torch_zip(str(bad))
    with pytest.raises(ModelSpecError, match="the tensor is not a torch zip checkpoint"):
        checkpoint.read_torch_zip(io.BytesIO(b"not a zip"))


def test_non_contiguous_tensor_is_rebuilt_from_strides(tmp_path, monkeypatch):
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    storage = checkpoint._rebuild_tensor(("F32", base.ravel()), 1, (2, 2), (4, 1))
    assert np.array_equal(storage.array, base[:2, 1:3])
    transposed = checkpoint._rebuild_tensor(("F32", base.ravel()), 0, (4, 3), (1, 4))
    assert np.array_equal(transposed.array, base.T)


def test_unpickler_never_imports(tmp_path):
    evil = tmp_path / "evil.pt"
    payload = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echoq\x00\x85q\x01Rq\x02."
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    got = read_weights(evil)  # os.system is replaced by an inert placeholder
    assert got == {}
