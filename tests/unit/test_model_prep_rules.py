"""The validation rules, one test per rule with its exact message, run through prepare_model."""

from __future__ import annotations

import copy
import functools

import pytest

from plugin.core.model_prep import ERROR, Problem
from tests.fixtures.training_run import BANDS, MA, SPEC, only_error, prepare, tensors, training_config


@pytest.fixture
def run(tmp_path):
    """prepare_model on (config, spec, tensors) in tmp_path; returns the result or the failure."""
    return functools.partial(prepare, tmp_path)


# ---------------------------------------------------------------------------------------------- config and spec


def test_missing_model_section(run):
    cfg = training_config()
    del cfg["model"]
    assert only_error(run(cfg)) == Problem(
        ERROR, "model", "the TerraTorch config has no (or an empty) `model` section; add the LightningCLI model "
        "section used for training (class_path: terratorch.tasks.SemanticSegmentationTask, init_args: "
        "model_factory, model_args)")


def test_empty_model_section(run):
    cfg = training_config()
    cfg["model"] = {}
    assert only_error(run(cfg)).key == "model"


def test_empty_model_args(run):
    cfg = training_config()
    cfg["model"]["init_args"]["model_args"] = {}
    assert only_error(run(cfg)) == Problem(
        ERROR, MA, "missing or empty; it must give at least backbone, decoder and num_classes")


def test_missing_data_section(run, tmp_path):
    cfg = training_config()
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
    cfg = training_config()
    cfg["data"]["init_args"]["output_bands"] = ["BLUE", "GREEN", "RED", "NIR_BROAD", "SWIR_1", "SWIR_2"]
    assert only_error(run(cfg)) == Problem(
        ERROR, f"{MA}.backbone_bands",
        f"{BANDS} disagrees with data.init_args.output_bands "
        "['BLUE', 'GREEN', 'RED', 'NIR_BROAD', 'SWIR_1', 'SWIR_2']; the model would be fed the wrong bands. "
        "Make both the same list, in the same order")


def test_bands_in_other_order_are_an_error(run):
    cfg = training_config()
    cfg["data"]["init_args"]["output_bands"] = list(reversed(BANDS))
    assert only_error(run(cfg)).key == f"{MA}.backbone_bands"


def test_means_count_must_match_bands(run):
    cfg = training_config()
    cfg["data"]["init_args"]["means"] = [0.1, 0.1, 0.1]
    assert only_error(run(cfg)) == Problem(
        ERROR, "data.init_args.means", "has 3 values for 6 bands; give one per band, in band order")


def test_missing_stds(run):
    cfg = training_config()
    del cfg["data"]["init_args"]["stds"]
    assert only_error(run(cfg)) == Problem(
        ERROR, "data.init_args.stds", "missing; the IOProcessor normalises every tile with it. Give the "
        "per-band values used in training (reflectance 0-1 units)")


def test_stds_must_be_positive(run):
    cfg = training_config()
    cfg["data"]["init_args"]["stds"][2] = 0
    assert only_error(run(cfg)) == Problem(
        ERROR, "data.init_args.stds", "contains a value <= 0; standard deviations must be positive")


def test_means_in_digital_numbers_warn(run):
    cfg = training_config()
    cfg["data"]["init_args"]["means"] = [1000.0, 1100, 1200, 3000, 2000, 1000]
    res = run(cfg)
    assert [p.key for p in res.warnings] == ["data.init_args.means"]


def test_short_transform_class_path(run):
    cfg = training_config()
    cfg["data"]["init_args"]["test_transform"] = [{"class_path": "ToTensorV2"}]
    assert only_error(run(cfg)) == Problem(
        ERROR, "data.init_args.test_transform[0].class_path", "is 'ToTensorV2'; the IOProcessor imports "
        "transforms by full dotted path, e.g. albumentations.pytorch.transforms.ToTensorV2")


def test_data_class_path_must_be_dotted(run):
    cfg = training_config()
    cfg["data"]["class_path"] = "GenericNonGeoSegmentationDataModule"
    assert only_error(run(cfg)).key == "data.class_path"


def test_unknown_task(run):
    cfg = training_config()
    cfg["model"]["class_path"] = "terratorch.tasks.ClassificationTask"
    assert only_error(run(cfg)) == Problem(
        ERROR, "model.class_path", "'terratorch.tasks.ClassificationTask' is not a task vLLM's TerraTorch runner "
        "can build; use terratorch.tasks.SemanticSegmentationTask")


def test_missing_num_classes(run):
    cfg = training_config()
    del cfg["model"]["init_args"]["model_args"]["num_classes"]
    assert only_error(run(cfg)).key == f"{MA}.num_classes"


# ---------------------------------------------------------------------------------------------- checkpoint


def test_num_classes_disagrees_with_checkpoint(run):
    assert only_error(run(arrays=tensors(num_classes=3))) == Problem(
        ERROR, f"{MA}.num_classes",
        "is 2 but the checkpoint's head (head.head.1.weight) outputs 3 classes; set num_classes: 3")


def test_band_count_disagrees_with_checkpoint(run):
    assert only_error(run(arrays=tensors(in_chans=4))) == Problem(
        ERROR, f"{MA}.backbone_bands", "lists 6 bands but the checkpoint's encoder.patch_embed.proj.weight takes "
        "4 input channels; list the bands the model was trained on")


# ---------------------------------------------------------------------------------------------- tiled inference


def test_tiled_inference_without_crop(run):
    cfg = training_config()
    cfg["model"]["init_args"]["tiled_inference_parameters"] = {"h_stride": 128}
    assert only_error(run(cfg)) == Problem(
        ERROR, "model.init_args.tiled_inference_parameters", "has neither `crop` nor `h_crop` and `w_crop`; the "
        "IOProcessor refuses to start without them. Add h_crop and w_crop (tile size in px)")


def test_tiled_inference_missing_warns(run):
    cfg = training_config()
    del cfg["model"]["init_args"]["tiled_inference_parameters"]
    res = run(cfg)
    assert [p.key for p in res.warnings] == ["model.init_args.tiled_inference_parameters"]
