"""The `prepare_model` Processing algorithm: a folder on success, every problem in one exception on failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

# QGIS-facing: also run on QGIS 3.40 and the newest QGIS (scripts/test-qgis-versions)
pytestmark = pytest.mark.qgis_versions

BANDS = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]
SPEC = {"target": "pixel_values", "data": {"pixel_values": {"type": "torch.Tensor", "shape": [6, 256, 256]}}}


def _config() -> dict:
    return {
        "model": {
            "class_path": "terratorch.tasks.SemanticSegmentationTask",
            "init_args": {
                "model_factory": "EncoderDecoderFactory",
                "model_args": {"backbone": "prithvi_eo_tiny", "backbone_pretrained": True, "backbone_bands": BANDS,
                               "decoder": "UperNetDecoder", "decoder_channels": 16, "num_classes": 2},
                "tiled_inference_parameters": {"h_crop": 256, "w_crop": 256},
            },
        },
        "data": {
            "class_path": "terratorch.datamodules.GenericNonGeoSegmentationDataModule",
            "init_args": {"dataset_bands": BANDS, "output_bands": BANDS, "means": [0.1] * 6, "stds": [0.05] * 6,
                          "test_transform": [{"class_path": "albumentations.pytorch.transforms.ToTensorV2"}]},
        },
    }


@pytest.fixture
def inputs(tmp_path):
    from floodmapper.plugin.core.model_prep import Tensor, write_safetensors

    yml = tmp_path / "config.yaml"
    yml.write_text(yaml.safe_dump(_config()))
    w = tmp_path / "w.safetensors"
    head = np.ones((2, 16, 1, 1), np.float32)
    write_safetensors(w, {"head.head.1.weight": Tensor("F32", head),
                          "encoder.patch_embed.proj.weight": Tensor("F32", np.ones((4, 6, 1, 2, 2), np.float32))})
    return yml, w


def _run(params):
    import processing

    from floodmapper.plugin.processing.prepare_model import PrepareModelAlgorithm

    return processing.run(PrepareModelAlgorithm(), params)


def test_prepare_model_writes_folder_and_reports_warnings(qgis_processing, inputs, tmp_path):
    yml, w = inputs
    out = tmp_path / "served"
    res = _run({"TTCONFIG": str(yml), "INPUT_SPEC": json.dumps(SPEC), "WEIGHTS": str(w), "FP16": True,
                "OUTPUT": str(out)})
    assert res["OUTPUT"] == str(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Terratorch"]
    assert cfg["pretrained_cfg"]["input"] == SPEC
    assert cfg["pretrained_cfg"]["model"]["init_args"]["model_args"]["backbone_pretrained"] is False
    assert (out / "model.safetensors").stat().st_size > 0
    assert "backbone_pretrained" in res["WARNINGS"]


def test_input_spec_may_be_a_file(qgis_processing, inputs, tmp_path):
    yml, w = inputs
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    res = _run({"TTCONFIG": str(yml), "INPUT_SPEC": str(spec), "WEIGHTS": str(w), "OUTPUT": str(tmp_path / "m")})
    assert json.loads((tmp_path / "m" / "config.json").read_text())["pretrained_cfg"]["input"] == SPEC
    assert res["OUTPUT"] == str(tmp_path / "m")


def test_errors_raise_one_exception_listing_all_and_write_nothing(qgis_processing, inputs, tmp_path):
    from qgis.core import QgsProcessingException

    yml, w = inputs
    cfg = _config()
    del cfg["data"]
    cfg["model"]["init_args"]["model_args"]["backbone_bands"] = BANDS[:4]
    yml.write_text(yaml.safe_dump(cfg))
    bad_spec = {"target": "image", "data": SPEC["data"]}
    out = tmp_path / "never"
    with pytest.raises(QgsProcessingException) as ei:
        _run({"TTCONFIG": str(yml), "INPUT_SPEC": json.dumps(bad_spec), "WEIGHTS": str(w), "OUTPUT": str(out)})
    text = str(ei.value)
    assert "ERROR data: the TerraTorch config has no `data` section" in text
    assert "ERROR input.target: 'image' is not among the inputs" in text
    assert "ERROR model.init_args.model_args.backbone_bands: lists 4 bands but the checkpoint's" in text
    assert not out.exists()


def test_algorithm_runs_with_context_and_feedback(qgis_processing, inputs, tmp_path):
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    from floodmapper.plugin.processing.prepare_model import PrepareModelAlgorithm

    class Recorder(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.warnings = []

        def pushWarning(self, warning):
            self.warnings.append(warning)
            super().pushWarning(warning)

    yml, w = inputs
    alg = PrepareModelAlgorithm().create()
    ctx = QgsProcessingContext()
    fb = Recorder()
    params = {"TTCONFIG": str(yml), "INPUT_SPEC": json.dumps(SPEC), "WEIGHTS": str(w), "OUTPUT": str(tmp_path / "o")}
    res, ok = alg.run(params, ctx, fb)
    assert ok
    assert res["OUTPUT"] == str(tmp_path / "o")
    assert any("backbone_pretrained" in m for m in fb.warnings)
    assert alg.name() == "prepare_model"
    assert {p.name() for p in alg.parameterDefinitions()} >= {"TTCONFIG", "INPUT_SPEC", "WEIGHTS", "OUTPUT"}
    assert {o.name() for o in alg.outputDefinitions()} >= {"OUTPUT", "WARNINGS"}
