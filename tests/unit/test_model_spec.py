"""ModelSpec from a vLLM TerraTorch config.json, a URL and the presets."""

from __future__ import annotations

import copy
import json

import pytest

from plugin.core import model_spec as ms
from plugin.core.errors import ModelSpecError
from plugin.core.model_spec import ModelSpec, load_model_spec, resolve_model_spec, spec_from_config
from tests.fixtures.fake_http import FakeHttpServer, Reply

# The published Prithvi-EO-2.0-300M-TL Sen1Floods11 config, plus the advised `data` section.
PUBLISHED_CONFIG = {
    "architectures": ["Terratorch"],
    "num_classes": 0,
    "pretrained_cfg": {
        "seed_everything": 0,
        "input": {
            "target": "pixel_values",
            "data": {
                "pixel_values": {"type": "torch.Tensor", "shape": [6, 512, 512]},
                "location_coords": {"type": "torch.Tensor", "shape": [1, 2]},
            },
        },
        "model": {
            "class_path": "terratorch.tasks.SemanticSegmentationTask",
            "init_args": {
                "model_args": {
                    "backbone_pretrained": True,
                    "backbone": "prithvi_eo_v2_300_tl",
                    "decoder": "UperNetDecoder",
                    "num_classes": 2,
                    "backbone_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
                },
                "model_factory": "EncoderDecoderFactory",
            },
        },
        "data": {
            "class_path": "terratorch.datamodules.GenericNonGeoSegmentationDataModule",
            "init_args": {
                "means": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                "stds": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06],
            },
        },
    },
}


def cfg(**changes):
    c = copy.deepcopy(PUBLISHED_CONFIG)
    for path, value in changes.items():
        cur = c
        keys = path.split("__")
        for k in keys[:-1]:
            cur = cur[k]
        if value is None:
            cur.pop(keys[-1], None)
        else:
            cur[keys[-1]] = value
    return c


def test_seed_003_config_reads_everything():
    spec = spec_from_config(PUBLISHED_CONFIG, source="x")
    assert (spec.channels, spec.tile_height, spec.tile_width, spec.num_classes) == (6, 512, 512, 2)
    assert spec.means == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    assert spec.stds[-1] == 0.06
    assert spec.bands == ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
    assert spec.has_location and spec.location_shape == (1, 2) and spec.location_order == ("lon", "lat")
    assert spec.dtype == "float16"  # no torch_dtype: what vLLM serves TerraTorch models in
    assert spec.input_name == "pixel_values"


def test_no_location_input():
    c = cfg(pretrained_cfg__input__data__location_coords=None)
    assert not spec_from_config(c).has_location


def test_means_from_the_sen1floods11_datamodule_class():
    c = cfg(pretrained_cfg__data={
        "class_path": "terratorch.datamodules.Sen1Floods11NonGeoDataModule",
        "init_args": {"bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]},
    })
    spec = spec_from_config(c)
    assert spec.means == pytest.approx((0.1413, 0.1380, 0.1235, 0.3090, 0.2045, 0.1191), abs=1e-4)
    assert spec.stds == pytest.approx((0.0741, 0.0737, 0.0869, 0.1180, 0.0977, 0.0766), abs=1e-4)


def test_datamodule_class_without_bands_uses_the_model_bands():
    c = cfg(pretrained_cfg__data={"class_path": "terratorch.datamodules.Sen1Floods11NonGeoDataModule",
                                  "init_args": {}})
    spec = spec_from_config(c)
    assert spec.means[3] == pytest.approx(0.3090, abs=1e-4)  # NIR_NARROW via model_args.backbone_bands


def test_missing_means_names_the_key():
    c = cfg(pretrained_cfg__data=None)
    with pytest.raises(ModelSpecError, match=r"pretrained_cfg\.data\.init_args\.means"):
        spec_from_config(c)
    c = cfg(pretrained_cfg__data={"class_path": "my.Unknown", "init_args": {}})
    with pytest.raises(ModelSpecError, match="my.Unknown"):
        spec_from_config(c)


def test_means_without_stds_and_wrong_lengths():
    c = cfg(pretrained_cfg__data__init_args={"means": [0.1] * 6})
    with pytest.raises(ModelSpecError, match="stds"):
        spec_from_config(c)
    c = cfg(pretrained_cfg__data__init_args={"means": [0.1] * 5, "stds": [0.1] * 5})
    with pytest.raises(ModelSpecError, match="6 channels"):
        spec_from_config(c)
    c = cfg(pretrained_cfg__data__init_args={"means": [0.1] * 6, "stds": [0.1] * 5 + [0]})
    with pytest.raises(ModelSpecError, match="std"):
        spec_from_config(c)


def test_missing_num_classes_names_the_key():
    c = cfg(pretrained_cfg__model__init_args__model_args__num_classes=None)
    with pytest.raises(ModelSpecError, match="num_classes"):
        spec_from_config(c)


def test_missing_input_and_bad_shape():
    with pytest.raises(ModelSpecError, match="pretrained_cfg"):
        spec_from_config({"architectures": ["Terratorch"]})
    with pytest.raises(ModelSpecError, match=r"input\.data"):
        spec_from_config(cfg(pretrained_cfg__input=None))
    with pytest.raises(ModelSpecError, match=r"\[C, H, W\]"):
        spec_from_config(cfg(pretrained_cfg__input__data__pixel_values={"shape": [6, 1, 512, 512]}))


def test_extra_input_is_refused_by_name():
    c = cfg(pretrained_cfg__input__data__temporal_coords={"type": "torch.Tensor", "shape": [1, 2]})
    with pytest.raises(ModelSpecError, match="temporal_coords"):
        spec_from_config(c)


# vLLM's --dtype auto runs a pooling model in float16 unless its config says bfloat16 (float32 is cast down)
@pytest.mark.parametrize("value,expected", [("float32", "float16"), ("float16", "float16"), ("half", "float16"),
                                            ("bfloat16", "bfloat16"), (None, "float16")])
def test_dtype_from_config_is_what_vllm_auto_runs(value, expected):
    c = cfg(torch_dtype=value)
    spec = spec_from_config(c)
    assert spec.dtype == expected and "--dtype auto" in spec.dtype_reason


def test_unknown_dtype_and_an_explicit_server_dtype():
    with pytest.raises(ModelSpecError, match="dtype"):
        spec_from_config(cfg(torch_dtype="int8"))
    spec = spec_from_config(PUBLISHED_CONFIG).with_dtype("fp32", "the server's --dtype")
    assert spec.dtype == "float32" and spec.dtype_reason == "the server's --dtype"


def test_tiled_inference_crop_sets_the_tile():
    c = cfg(pretrained_cfg__model__init_args__tiled_inference_parameters={"crop": 256})
    spec = spec_from_config(c)
    assert (spec.tile_height, spec.tile_width) == (256, 256)
    c = cfg(pretrained_cfg__model__init_args__tiled_inference_parameters={"h_crop": 224, "w_crop": 320})
    assert (spec_from_config(c).tile_height, spec_from_config(c).tile_width) == (224, 320)


def test_load_from_folder_file_and_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_CONFIG))
    assert load_model_spec(str(tmp_path)).channels == 6
    assert load_model_spec(str(tmp_path / "config.json")).name == tmp_path.name
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_model_spec(str(tmp_path / "nope"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelSpecError, match="Cannot read"):
        load_model_spec(str(bad))
    with pytest.raises(ModelSpecError, match="preset"):
        load_model_spec("")


def test_load_from_url():
    with FakeHttpServer() as srv:
        srv.on("GET", "/m/config.json", Reply(200, PUBLISHED_CONFIG))
        srv.on("GET", "/gone/config.json", Reply(404, {"detail": "Not Found"}))
        srv.on("GET", "/html/config.json", Reply(200, "<html>login</html>", content_type="text/html"))
        spec = load_model_spec(srv.url + "/m/config.json")
        assert spec.num_classes == 2 and spec.source.endswith("/m/config.json")
        assert load_model_spec(srv.url + "/m/").channels == 6  # a folder URL gets config.json appended
        with pytest.raises(ModelSpecError, match="HTTP 404"):
            load_model_spec(srv.url + "/gone/config.json")
        with pytest.raises(ModelSpecError, match="not JSON"):
            load_model_spec(srv.url + "/html/config.json")


def test_prithvi_preset_matches_the_contract():
    spec = load_model_spec("Prithvi-EO-2.0-300M-TL-Sen1Floods11")
    assert spec.means == (0.1413, 0.1380, 0.1235, 0.3090, 0.2045, 0.1191)
    assert spec.stds == (0.0741, 0.0737, 0.0869, 0.1180, 0.0977, 0.0766)
    assert spec.tile_size == 512 and spec.has_location and spec.num_classes == 2
    assert spec.dtype == "float16"


def test_demo_preset_reads_the_demo_folder(tmp_path, monkeypatch):
    from plugin.core import settings

    c = cfg(pretrained_cfg__input__data__location_coords=None, torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(c))
    monkeypatch.setattr(settings, "DEMO_MODEL_DIR", tmp_path)
    spec = load_model_spec("floodmapper-demo")
    assert spec.name == "floodmapper-demo" and spec.dtype == "float16" and not spec.has_location


def test_shipped_demo_model_config_is_usable():
    from plugin.core.settings import DEMO_MODEL_DIR

    if not (DEMO_MODEL_DIR / "config.json").exists():
        pytest.skip("resources/demo_model/config.json not written yet")
    spec = load_model_spec("floodmapper-demo")
    assert spec.num_classes >= 2 and len(spec.means) == spec.channels


def test_resolve_by_served_model_name(tmp_path):
    assert resolve_model_spec("", "ibm-nasa-geospatial/Prithvi-EO-2.0-300M-TL-Sen1Floods11").tile_size == 512
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_CONFIG))
    assert resolve_model_spec(str(tmp_path), "whatever").channels == 6  # explicit source wins
    with pytest.raises(ModelSpecError, match="config.json"):
        resolve_model_spec("", "some-other-model")
    assert ms.preset_for_model_name("/models/floodmapper-demo/") == "floodmapper-demo"


def test_validate_catches_inconsistent_hand_made_specs():
    base = dict(channels=6, tile_height=64, tile_width=64, num_classes=2, means=(0.0,) * 6, stds=(1.0,) * 6)
    ModelSpec(**base).validate_for_tensor()
    with pytest.raises(ModelSpecError, match="num_classes"):
        ModelSpec(**dict(base, num_classes=1)).validate_for_tensor()
    with pytest.raises(ModelSpecError, match="water_class"):
        ModelSpec(**dict(base, water_class=2)).validate_for_tensor()
    with pytest.raises(ModelSpecError, match="bands"):
        ModelSpec(**dict(base, bands=("A", "B"))).validate_for_tensor()
