"""prepare_model: what the folder holds, what is rewritten for the serving TerraTorch, how it is written."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import yaml

from plugin.core.errors import ModelSpecError
from plugin.core.model_prep import (
    ERROR,
    WARNING,
    ModelPreparationFailed,
    PreparedModel,
    Problem,
    builder,
    detect_terratorch_version,
    load_input_spec,
    prepare_model,
    read_weights,
)
from tests.fixtures.training_run import BANDS, MA, SPEC, only_error, prepare, tensors, training_config, write_st


@pytest.fixture
def run(tmp_path):
    """prepare_model on (config, spec, tensors) in tmp_path; returns the result or the failure."""
    return functools.partial(prepare, tmp_path)


# ---------------------------------------------------------------------------------------------- valid run


def test_valid_run_writes_config_and_weights(run, tmp_path):
    res = run()
    assert isinstance(res, PreparedModel)
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
    got = read_weights(out / "model.safetensors")
    assert "encoder.pos_embed" not in got  # recomputed at build, as vLLM's Lightning path skips it
    assert got["decoder.bottleneck.norm.num_batches_tracked"].dtype == "I64"
    assert np.array_equal(got["head.head.1.weight"].array, tensors()["head.head.1.weight"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]  # no temp left


def test_fp16_halves_float_tensors_and_keeps_integers(run, tmp_path):
    res = run(fp16=True)
    got = read_weights(res.weights)
    assert got["head.head.1.weight"].dtype == "F16"
    assert got["decoder.bottleneck.norm.num_batches_tracked"].dtype == "I64"
    assert np.allclose(got["head.head.1.weight"].array, tensors()["head.head.1.weight"], atol=1e-2)


# ---------------------------------------------------------------------------------------------- rewrites


def test_decoder_scale_modules_on_1_2_13_is_rewritten_with_a_warning(run, tmp_path):
    cfg = training_config()
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
    got = read_weights(res.weights)
    assert "neck.2.fpn1.0.weight" in got and "neck.2.fpn2.0.bias" in got
    assert not any(k.startswith("decoder.fpn") for k in got)


def test_decoder_scale_modules_kept_for_1_2_11(run):
    cfg = training_config()
    cfg["model"]["init_args"]["model_args"]["decoder_scale_modules"] = True
    res = run(cfg, arrays=tensors(scale_modules=True), version="1.2.11")
    assert res.warnings == []
    assert res.config["pretrained_cfg"]["model"]["init_args"]["model_args"]["decoder_scale_modules"] is True


def test_decoder_scale_modules_unknown_version_warns_and_keeps(run):
    cfg = training_config()
    cfg["model"]["init_args"]["model_args"]["decoder_scale_modules"] = True
    res = run(cfg, version=None)
    assert [p.key for p in res.warnings] == [f"{MA}.decoder_scale_modules"]
    assert "1.2.12" in res.warnings[0].message
    assert res.config["pretrained_cfg"]["model"]["init_args"]["model_args"]["decoder_scale_modules"] is True


def test_backbone_pretrained_true_is_written_false(run):
    cfg = training_config()
    cfg["model"]["init_args"]["model_args"]["backbone_pretrained"] = True
    res = run(cfg)
    assert [p.key for p in res.warnings] == [f"{MA}.backbone_pretrained"]
    assert res.config["pretrained_cfg"]["model"]["init_args"]["model_args"]["backbone_pretrained"] is False


def test_model_factory_defaults_with_warning(run):
    cfg = training_config()
    del cfg["model"]["init_args"]["model_factory"]
    res = run(cfg)
    assert [p.key for p in res.warnings] == ["model.init_args.model_factory"]
    assert res.config["pretrained_cfg"]["model"]["init_args"]["model_factory"] == "EncoderDecoderFactory"


def test_detect_terratorch_version_from_dist_info(tmp_path):
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages" / "terratorch-1.2.13.dist-info"
    site.mkdir(parents=True)
    (tmp_path / "env" / "bin").mkdir()
    assert detect_terratorch_version(str(tmp_path / "env" / "bin" / "python")) == "1.2.13"


# ---------------------------------------------------------------------------------------------- inputs


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
    cfg = training_config()
    cfg["data"]["init_args"]["output_bands"] = ["B1"] * 6
    cfg["data"]["init_args"]["stds"] = [0.1] * 6
    cfg["data"]["init_args"]["stds"][0] = -1
    cfg["model"]["init_args"]["model_args"]["backbone_pretrained"] = True
    spec = copy.deepcopy(SPEC)
    spec["target"] = "x"
    res = run(cfg, spec=spec, arrays=tensors(num_classes=5))
    assert isinstance(res, ModelPreparationFailed)
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
    assert load_input_spec(str(f)) == SPEC
    assert load_input_spec(json.dumps(SPEC)) == SPEC
    with pytest.raises(ModelSpecError, match="neither JSON text nor an existing file"):
        load_input_spec(str(tmp_path / "missing.json"))


def test_yaml_syntax_error_is_reported(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("model: [unclosed\n")
    w = write_st(tmp_path / "w.safetensors", tensors())
    with pytest.raises(ModelPreparationFailed) as ei:
        prepare_model(yml, json.dumps(SPEC), w, tmp_path / "out", terratorch_version="1.2.13")
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
    assert isinstance(run(), PreparedModel)
    (tmp_path / "model" / "stale.pt").write_text("old")
    res = run(overwrite=True, extra_files={"README.md": "hello"})
    assert isinstance(res, PreparedModel)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["README.md", "config.json",
                                                                      "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]


def test_failure_mid_write_leaves_old_folder_intact(run, tmp_path, monkeypatch):
    assert isinstance(run(), PreparedModel)
    before = (tmp_path / "model" / "config.json").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(builder, "write_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        run(overwrite=True)
    assert (tmp_path / "model" / "config.json").read_text() == before
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]


def test_output_folder_holding_an_input_is_refused(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    yml = out / "c.yaml"
    yml.write_text(yaml.safe_dump(training_config()))
    w = write_st(out / "w.safetensors", tensors())
    with pytest.raises(ModelPreparationFailed) as ei:
        prepare_model(yml, json.dumps(SPEC), w, out, terratorch_version="1.2.13", overwrite=True)
    assert {p.key for p in ei.value.problems} == {"out"}
    assert w.exists() and yml.exists()
