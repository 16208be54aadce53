"""The model-folder generator (issue 7): one test per validation rule, with the exact message."""

from __future__ import annotations

import copy
import io
import json
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import yaml

from plugin.core.model_prep import builder as mc
from plugin.core.model_prep import checkpoint
from plugin.core.model_prep.rules import ERROR, WARNING, Problem

ROOT = Path(__file__).resolve().parents[2]
BANDS = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]
MA = "model.init_args.model_args"


def base_config() -> dict:
    """Seed 003's Sen1Floods11 config, shrunk (what a LightningCLI YAML holds)."""
    return {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1},
        "model": {
            "class_path": "terratorch.tasks.SemanticSegmentationTask",
            "init_args": {
                "model_factory": "EncoderDecoderFactory",
                "model_args": {
                    "backbone": "prithvi_eo_tiny",
                    "backbone_pretrained": False,
                    "backbone_bands": list(BANDS),
                    "decoder": "UperNetDecoder",
                    "decoder_channels": 32,
                    "num_classes": 2,
                    "necks": [{"name": "SelectIndices", "indices": [0, 1, 2, 3]},
                              {"name": "ReshapeTokensToImage"}],
                },
                "loss": "ce",
                "tiled_inference_parameters": {"h_crop": 256, "w_crop": 256},
            },
        },
        "data": {
            "class_path": "terratorch.datamodules.GenericNonGeoSegmentationDataModule",
            "init_args": {
                "batch_size": 4,
                "num_classes": 2,
                "dataset_bands": list(BANDS),
                "output_bands": list(BANDS),
                "means": [0.1, 0.1, 0.1, 0.3, 0.2, 0.1],
                "stds": [0.05, 0.05, 0.05, 0.1, 0.1, 0.05],
                "test_transform": [{"class_path": "albumentations.pytorch.transforms.ToTensorV2"}],
            },
        },
    }


SPEC = {"target": "pixel_values", "data": {"pixel_values": {"type": "torch.Tensor", "shape": [6, 256, 256]}}}


def tensors(num_classes: int = 2, in_chans: int = 6, scale_modules: bool = False) -> dict:
    rng = np.random.default_rng(0)
    t = {
        "encoder.patch_embed.proj.weight": rng.standard_normal((8, in_chans, 1, 4, 4)).astype(np.float32),
        "encoder.pos_embed": np.zeros((1, 17, 8), np.float32),
        "decoder.bottleneck.norm.running_mean": rng.standard_normal(32).astype(np.float32),
        "decoder.bottleneck.norm.num_batches_tracked": np.array(7, np.int64),
        "head.head.1.weight": rng.standard_normal((num_classes, 32, 1, 1)).astype(np.float32),
        "head.head.1.bias": np.zeros(num_classes, np.float32),
    }
    if scale_modules:
        t["decoder.fpn1.0.weight"] = rng.standard_normal((8, 4, 2, 2)).astype(np.float32)
        t["decoder.fpn2.0.bias"] = rng.standard_normal(4).astype(np.float32)
    return t


def write_st(path: Path, arrays: dict) -> Path:
    kinds = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}
    checkpoint.write_safetensors(path, {k: checkpoint.Tensor(kinds[v.dtype], v) for k, v in arrays.items()})
    return path


@pytest.fixture
def run(tmp_path):
    """prepare_model on (config, spec, tensors) in tmp_path; returns the result or the failure."""

    def _run(cfg=None, spec=None, arrays=None, version="1.2.13", out="model", raw_spec=None, **kw):
        cfg = base_config() if cfg is None else cfg
        yml = tmp_path / "config.yaml"
        yml.write_text(yaml.safe_dump(cfg))
        w = kw.pop("weights", None) or write_st(tmp_path / "w.safetensors", tensors() if arrays is None else arrays)
        try:
            text = raw_spec if raw_spec is not None else json.dumps(SPEC if spec is None else spec)
            return mc.prepare_model(yml, text, w, tmp_path / out,
                                    terratorch_version=version, **kw)
        except mc.ModelPreparationFailed as exc:
            return exc

    return _run


def only_error(res) -> Problem:
    assert isinstance(res, mc.ModelPreparationFailed), f"expected a failure, got {res}"
    errors = [p for p in res.problems if p.level == ERROR]
    assert len(errors) == 1, errors
    return errors[0]


# ---------------------------------------------------------------------------------------------- valid run


def test_valid_run_writes_config_and_weights(run, tmp_path):
    res = run()
    assert isinstance(res, mc.PreparedModel)
    assert res.warnings == []
    out = tmp_path / "model"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Terratorch"] and cfg["num_classes"] == 0
    pc = cfg["pretrained_cfg"]
    assert set(pc) == {"seed_everything", "input", "model", "data"}  # the trainer section is not carried
    assert pc["input"] == SPEC
    assert pc["model"]["init_args"]["tiled_inference_parameters"] == {"h_crop": 256, "w_crop": 256}
    assert pc["data"]["init_args"]["means"] == [0.1, 0.1, 0.1, 0.3, 0.2, 0.1]
    assert pc["data"]["init_args"]["output_bands"] == BANDS
    got = checkpoint.read_weights(out / "model.safetensors")
    assert "encoder.pos_embed" not in got  # recomputed at build, as vLLM's Lightning path skips it
    assert got["decoder.bottleneck.norm.num_batches_tracked"].dtype == "I64"
    assert np.array_equal(got["head.head.1.weight"].array, tensors()["head.head.1.weight"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]  # no temp left


def test_fp16_halves_float_tensors_and_keeps_integers(run, tmp_path):
    res = run(fp16=True)
    got = checkpoint.read_weights(res.weights)
    assert got["head.head.1.weight"].dtype == "F16"
    assert got["decoder.bottleneck.norm.num_batches_tracked"].dtype == "I64"
    assert np.allclose(got["head.head.1.weight"].array, tensors()["head.head.1.weight"], atol=1e-2)


# ---------------------------------------------------------------------------------------------- rules


def test_missing_model_section(run):
    cfg = base_config()
    del cfg["model"]
    assert only_error(run(cfg)) == Problem(
        ERROR, "model", "the TerraTorch config has no (or an empty) `model` section; add the LightningCLI model "
        "section used for training (class_path: terratorch.tasks.SemanticSegmentationTask, init_args: "
        "model_factory, model_args)")


def test_empty_model_section(run):
    cfg = base_config()
    cfg["model"] = {}
    assert only_error(run(cfg)).key == "model"


def test_empty_model_args(run):
    cfg = base_config()
    cfg["model"]["init_args"]["model_args"] = {}
    assert only_error(run(cfg)) == Problem(
        ERROR, MA, "missing or empty; it must give at least backbone, decoder and num_classes")


def test_missing_data_section(run, tmp_path):
    cfg = base_config()
    del cfg["data"]
    assert only_error(run(cfg)) == Problem(
        ERROR, "data", "the TerraTorch config has no `data` section; the terratorch_segmentation IOProcessor "
        "refuses to start without it and clients read the bands, means and stds there. Add the LightningCLI "
        "data section (class_path + init_args with means, stds and bands) used for training")
    assert not (tmp_path / "model").exists()


def test_input_shape_not_list_of_positive_ints(run):
    spec = copy.deepcopy(SPEC)
    spec["data"]["pixel_values"]["shape"] = [6, "256", 0]
    assert only_error(run(spec=spec)) == Problem(
        ERROR, "input.data.pixel_values.shape", "is [6, '256', 0]; it must be a non-empty list of positive "
        "integers, e.g. [6, 512, 512] (channels, height, width)")


def test_input_shape_must_be_a_list(run):
    spec = copy.deepcopy(SPEC)
    spec["data"]["pixel_values"]["shape"] = "6x256x256"
    assert only_error(run(spec=spec)).key == "input.data.pixel_values.shape"


def test_input_type_must_be_tensor(run):
    spec = copy.deepcopy(SPEC)
    spec["data"]["pixel_values"]["type"] = "numpy.ndarray"
    assert only_error(run(spec=spec)) == Problem(
        ERROR, "input.data.pixel_values.type",
        "is 'numpy.ndarray'; the only type vLLM's TerraTorch loader accepts is \"torch.Tensor\"")


def test_target_not_among_inputs(run):
    spec = copy.deepcopy(SPEC)
    spec["target"] = "image"
    assert only_error(run(spec=spec)) == Problem(
        ERROR, "input.target", "'image' is not among the inputs ('pixel_values'); name one of them, or drop "
        "`target` to pass every input by keyword")


def test_missing_input_data(run):
    assert only_error(run(spec={"target": "pixel_values"})).key == "input.data"


def test_input_channels_disagree_with_bands(run):
    spec = copy.deepcopy(SPEC)
    spec["data"]["pixel_values"]["shape"] = [4, 256, 256]
    assert only_error(run(spec=spec)) == Problem(
        ERROR, "input.data.pixel_values.shape",
        "starts with 4 channels but the model takes 6 bands; use [6, H, W]")


def test_bands_disagree_with_data_section(run):
    cfg = base_config()
    cfg["data"]["init_args"]["output_bands"] = ["BLUE", "GREEN", "RED", "NIR_BROAD", "SWIR_1", "SWIR_2"]
    assert only_error(run(cfg)) == Problem(
        ERROR, f"{MA}.backbone_bands",
        f"{BANDS} disagrees with data.init_args.output_bands "
        "['BLUE', 'GREEN', 'RED', 'NIR_BROAD', 'SWIR_1', 'SWIR_2']; the model would be fed the wrong bands. "
        "Make both the same list, in the same order")


def test_bands_in_other_order_are_an_error(run):
    cfg = base_config()
    cfg["data"]["init_args"]["output_bands"] = list(reversed(BANDS))
    assert only_error(run(cfg)).key == f"{MA}.backbone_bands"


def test_means_count_must_match_bands(run):
    cfg = base_config()
    cfg["data"]["init_args"]["means"] = [0.1, 0.1, 0.1]
    assert only_error(run(cfg)) == Problem(
        ERROR, "data.init_args.means", "has 3 values for 6 bands; give one per band, in band order")


def test_missing_stds(run):
    cfg = base_config()
    del cfg["data"]["init_args"]["stds"]
    assert only_error(run(cfg)) == Problem(
        ERROR, "data.init_args.stds", "missing; the IOProcessor normalises every tile with it. Give the "
        "per-band values used in training (reflectance 0-1 units)")


def test_stds_must_be_positive(run):
    cfg = base_config()
    cfg["data"]["init_args"]["stds"][2] = 0
    assert only_error(run(cfg)) == Problem(
        ERROR, "data.init_args.stds", "contains a value <= 0; standard deviations must be positive")


def test_means_in_digital_numbers_warn(run):
    cfg = base_config()
    cfg["data"]["init_args"]["means"] = [1000.0, 1100, 1200, 3000, 2000, 1000]
    res = run(cfg)
    assert [p.key for p in res.warnings] == ["data.init_args.means"]


def test_short_transform_class_path(run):
    cfg = base_config()
    cfg["data"]["init_args"]["test_transform"] = [{"class_path": "ToTensorV2"}]
    assert only_error(run(cfg)) == Problem(
        ERROR, "data.init_args.test_transform[0].class_path", "is 'ToTensorV2'; the IOProcessor imports "
        "transforms by full dotted path, e.g. albumentations.pytorch.transforms.ToTensorV2")


def test_data_class_path_must_be_dotted(run):
    cfg = base_config()
    cfg["data"]["class_path"] = "GenericNonGeoSegmentationDataModule"
    assert only_error(run(cfg)).key == "data.class_path"


def test_unknown_task(run):
    cfg = base_config()
    cfg["model"]["class_path"] = "terratorch.tasks.ClassificationTask"
    assert only_error(run(cfg)) == Problem(
        ERROR, "model.class_path", "'terratorch.tasks.ClassificationTask' is not a task vLLM's TerraTorch runner "
        "can build; use terratorch.tasks.SemanticSegmentationTask")


def test_missing_num_classes(run):
    cfg = base_config()
    del cfg["model"]["init_args"]["model_args"]["num_classes"]
    assert only_error(run(cfg)).key == f"{MA}.num_classes"


def test_num_classes_disagrees_with_checkpoint(run):
    assert only_error(run(arrays=tensors(num_classes=3))) == Problem(
        ERROR, f"{MA}.num_classes",
        "is 2 but the checkpoint's head (head.head.1.weight) outputs 3 classes; set num_classes: 3")


def test_band_count_disagrees_with_checkpoint(run):
    assert only_error(run(arrays=tensors(in_chans=4))) == Problem(
        ERROR, f"{MA}.backbone_bands", "lists 6 bands but the checkpoint's encoder.patch_embed.proj.weight takes "
        "4 input channels; list the bands the model was trained on")


def test_tiled_inference_without_crop(run):
    cfg = base_config()
    cfg["model"]["init_args"]["tiled_inference_parameters"] = {"h_stride": 128}
    assert only_error(run(cfg)) == Problem(
        ERROR, "model.init_args.tiled_inference_parameters", "has neither `crop` nor `h_crop` and `w_crop`; the "
        "IOProcessor refuses to start without them. Add h_crop and w_crop (tile size in px)")


def test_tiled_inference_missing_warns(run):
    cfg = base_config()
    del cfg["model"]["init_args"]["tiled_inference_parameters"]
    res = run(cfg)
    assert [p.key for p in res.warnings] == ["model.init_args.tiled_inference_parameters"]


def test_decoder_scale_modules_on_1_2_13_is_rewritten_with_a_warning(run, tmp_path):
    cfg = base_config()
    cfg["model"]["init_args"]["model_args"]["decoder_scale_modules"] = True
    res = run(cfg, arrays=tensors(scale_modules=True))
    assert res.warnings == [Problem(
        WARNING, f"{MA}.decoder_scale_modules",
        "dropped in TerraTorch 1.2.12 (installed: 1.2.13): UperNetDecoder no longer takes scale_modules (building "
        "the model fails with TypeError); a plain ViT backbone gets the same pyramid from the "
        "LearnedInterpolateToPyramidal neck. Removed from the written config and its weights moved to an "
        "appended LearnedInterpolateToPyramidal neck")]
    margs = res.config["pretrained_cfg"]["model"]["init_args"]["model_args"]
    assert "decoder_scale_modules" not in margs
    assert margs["necks"][-1] == {"name": "LearnedInterpolateToPyramidal"}
    got = checkpoint.read_weights(res.weights)
    assert "neck.2.fpn1.0.weight" in got and "neck.2.fpn2.0.bias" in got
    assert not any(k.startswith("decoder.fpn") for k in got)


def test_decoder_scale_modules_kept_for_1_2_11(run):
    cfg = base_config()
    cfg["model"]["init_args"]["model_args"]["decoder_scale_modules"] = True
    res = run(cfg, arrays=tensors(scale_modules=True), version="1.2.11")
    assert res.warnings == []
    assert res.config["pretrained_cfg"]["model"]["init_args"]["model_args"]["decoder_scale_modules"] is True


def test_decoder_scale_modules_unknown_version_warns_and_keeps(run):
    cfg = base_config()
    cfg["model"]["init_args"]["model_args"]["decoder_scale_modules"] = True
    res = run(cfg, version=None)
    assert [p.key for p in res.warnings] == [f"{MA}.decoder_scale_modules"]
    assert "1.2.12" in res.warnings[0].message
    assert res.config["pretrained_cfg"]["model"]["init_args"]["model_args"]["decoder_scale_modules"] is True


def test_backbone_pretrained_true_is_written_false(run):
    cfg = base_config()
    cfg["model"]["init_args"]["model_args"]["backbone_pretrained"] = True
    res = run(cfg)
    assert [p.key for p in res.warnings] == [f"{MA}.backbone_pretrained"]
    assert res.config["pretrained_cfg"]["model"]["init_args"]["model_args"]["backbone_pretrained"] is False


def test_model_factory_defaults_with_warning(run):
    cfg = base_config()
    del cfg["model"]["init_args"]["model_factory"]
    res = run(cfg)
    assert [p.key for p in res.warnings] == ["model.init_args.model_factory"]
    assert res.config["pretrained_cfg"]["model"]["init_args"]["model_factory"] == "EncoderDecoderFactory"


def test_weights_missing(run, tmp_path):
    p = only_error(run(weights=tmp_path / "nope.ckpt"))
    assert p.key == "weights" and "nope.ckpt does not exist" in p.message


def test_weights_unknown_extension(run, tmp_path):
    w = tmp_path / "w.h5"
    w.write_bytes(b"x")
    assert only_error(run(weights=w)) == Problem(
        ERROR, "weights", "w.h5 has an unknown extension; pass a Lightning .ckpt, a torch .pt/.pth or a "
        ".safetensors file")


def test_weights_not_a_checkpoint(run, tmp_path):
    w = tmp_path / "w.pt"
    w.write_bytes(b"not a zip at all")
    p = only_error(run(weights=w))
    assert p.key == "weights" and "pre-1.6 format" in p.message


def test_every_problem_reported_in_one_run_and_nothing_written(run, tmp_path):
    cfg = base_config()
    cfg["data"]["init_args"]["output_bands"] = ["B1"] * 6
    cfg["data"]["init_args"]["stds"] = [0.1] * 6
    cfg["data"]["init_args"]["stds"][0] = -1
    cfg["model"]["init_args"]["model_args"]["backbone_pretrained"] = True
    spec = copy.deepcopy(SPEC)
    spec["target"] = "x"
    res = run(cfg, spec=spec, arrays=tensors(num_classes=5))
    assert isinstance(res, mc.ModelPreparationFailed)
    keys = {(p.level, p.key) for p in res.problems}
    assert keys >= {(ERROR, "input.target"), (ERROR, f"{MA}.backbone_bands"), (ERROR, "data.init_args.stds"),
                    (ERROR, f"{MA}.num_classes"), (WARNING, f"{MA}.backbone_pretrained")}
    assert "4 error(s)" in res.message
    assert not (tmp_path / "model").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]


def test_invalid_input_spec_json(run):
    p = only_error(run(raw_spec='{"data": '))
    assert p.key == "input" and "not valid JSON" in p.message


def test_input_spec_from_file(tmp_path):
    f = tmp_path / "spec.json"
    f.write_text(json.dumps(SPEC))
    assert mc.load_input_spec(str(f)) == SPEC
    assert mc.load_input_spec(json.dumps(SPEC)) == SPEC
    with pytest.raises(mc.ModelSpecError, match="neither JSON text nor an existing file"):
        mc.load_input_spec(str(tmp_path / "missing.json"))


def test_yaml_syntax_error_is_reported(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("model: [unclosed\n")
    w = write_st(tmp_path / "w.safetensors", tensors())
    with pytest.raises(mc.ModelPreparationFailed) as ei:
        mc.prepare_model(yml, json.dumps(SPEC), w, tmp_path / "out", terratorch_version="1.2.13")
    assert [p.key for p in ei.value.problems] == ["ttconfig"]
    assert "not valid YAML" in ei.value.problems[0].message


# ---------------------------------------------------------------------------------------------- atomic writes


def test_existing_folder_needs_overwrite(run, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("x")
    p = only_error(run())
    assert p.key == "out" and "not empty" in p.message
    assert (tmp_path / "model" / "keep.txt").exists()


def test_overwrite_replaces_folder_whole(run, tmp_path):
    assert isinstance(run(), mc.PreparedModel)
    (tmp_path / "model" / "stale.pt").write_text("old")
    res = run(overwrite=True, extra_files={"README.md": "hello"})
    assert isinstance(res, mc.PreparedModel)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["README.md", "config.json",
                                                                      "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]


def test_failure_mid_write_leaves_old_folder_intact(run, tmp_path, monkeypatch):
    assert isinstance(run(), mc.PreparedModel)
    before = (tmp_path / "model" / "config.json").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mc, "write_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        run(overwrite=True)
    assert (tmp_path / "model" / "config.json").read_text() == before
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]


def test_output_folder_holding_an_input_is_refused(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    yml = out / "c.yaml"
    yml.write_text(yaml.safe_dump(base_config()))
    w = write_st(out / "w.safetensors", tensors())
    with pytest.raises(mc.ModelPreparationFailed) as ei:
        mc.prepare_model(yml, json.dumps(SPEC), w, out, terratorch_version="1.2.13", overwrite=True)
    assert {p.key for p in ei.value.problems} == {"out"}
    assert w.exists() and yml.exists()


# ---------------------------------------------------------------------------------------------- torch files


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
    got = checkpoint.read_weights(ckpt)
    assert sorted(got) == sorted(k for k in arrays if "pos_embed" not in k)
    for k, t in got.items():
        assert np.array_equal(t.array, arrays[k]), k
    assert got["decoder.bottleneck.norm.num_batches_tracked"].dtype == "I64"
    assert got["decoder.bottleneck.norm.num_batches_tracked"].array.shape == ()


def test_flat_pt_state_dict(tmp_path, monkeypatch):
    arrays = tensors()
    pt = tmp_path / "w.pt"
    _torch_save(pt, OrderedDict(arrays), _fake_torch(monkeypatch))
    got = checkpoint.read_weights(pt)
    assert np.array_equal(got["head.head.1.weight"].array, arrays["head.head.1.weight"])


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
    got = checkpoint.read_weights(evil)  # os.system is replaced by an inert placeholder
    assert got == {}


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_exit_codes(tmp_path):
    yml = tmp_path / "c.yaml"
    cfg = base_config()
    yml.write_text(yaml.safe_dump(cfg))
    w = write_st(tmp_path / "w.safetensors", tensors())
    cmd = [sys.executable, str(ROOT / "scripts" / "prepare-model"), "--ttconfig", str(yml), "-i", json.dumps(SPEC),
           "--weights", str(w), "--terratorch-version", "1.2.13"]
    ok = subprocess.run([*cmd, "--out", str(tmp_path / "ok"), "--fp16"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and (tmp_path / "ok" / "config.json").exists()
    del cfg["data"]
    yml.write_text(yaml.safe_dump(cfg))
    bad = subprocess.run([*cmd, "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "ERROR data: the TerraTorch config has no `data` section" in bad.stderr
    assert "Nothing was written." in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_detect_terratorch_version_from_dist_info(tmp_path):
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages" / "terratorch-1.2.13.dist-info"
    site.mkdir(parents=True)
    (tmp_path / "env" / "bin").mkdir()
    assert mc.detect_terratorch_version(str(tmp_path / "env" / "bin" / "python")) == "1.2.13"
