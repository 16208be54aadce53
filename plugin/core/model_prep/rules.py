"""Validation rules: what vLLM's TerraTorch loader accepts, each failure a Problem naming the fix.

Writing vLLM's `config.json` by hand is where models fail to serve: a band list that disagrees with the
datamodule, a shape that is not a list of ints, an argument the installed TerraTorch no longer accepts,
a missing `data` section (the segmentation IOProcessor refuses to start without it). Each such mistake
otherwise shows up a minute later as a stack trace in a server log; here each rule appends a
`Problem(level, key, message)` naming the key and the fix, so every one is reported at once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..versions import version_tuple
from .checkpoint import Tensor

ERROR = "ERROR"
WARNING = "WARNING"
TASKS = ("SemanticSegmentationTask", "PixelwiseRegressionTask")

# Arguments a TerraTorch release removed: (model_args key, release that dropped it, what replaces it).
REMOVED_MODEL_ARGS = {
    "decoder_scale_modules": (
        (1, 2, 12),
        "UperNetDecoder no longer takes scale_modules (building the model fails with TypeError); "
        "a plain ViT backbone gets the same pyramid from the LearnedInterpolateToPyramidal neck",
    ),
}


@dataclass(frozen=True)
class Problem:
    level: str  # ERROR | WARNING
    key: str  # dotted path of the offending entry, e.g. model.init_args.model_args.backbone_bands
    message: str  # what is wrong and how to fix it

    def __str__(self) -> str:
        return f"{self.level} {self.key}: {self.message}"


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_input_spec(spec: Any, problems: list[Problem]) -> None:
    if not isinstance(spec, dict) or not spec:
        problems.append(Problem(ERROR, "input", "the input spec is empty; give at least "
                                '{"data": {"pixel_values": {"type": "torch.Tensor", "shape": [C, H, W]}}}'))
        return
    for key in spec:
        if key not in ("data", "target"):
            problems.append(Problem(WARNING, f"input.{key}", f"unknown entry {key!r} is ignored by vLLM; "
                                    "only `data` and `target` are read (remove it or check its spelling)"))
    data = spec.get("data")
    if not isinstance(data, dict) or not data:
        problems.append(Problem(ERROR, "input.data", "missing or empty; it must map each model input name "
                                'to {"type": "torch.Tensor", "shape": [...]}, e.g. "pixel_values" with [6, 512, 512]'))
        return
    for name, entry in data.items():
        key = f"input.data.{name}"
        if not isinstance(entry, dict):
            problems.append(Problem(ERROR, key, 'must be an object {"type": "torch.Tensor", "shape": [...]}'))
            continue
        if entry.get("type") != "torch.Tensor":
            problems.append(Problem(ERROR, f"{key}.type", f"is {entry.get('type')!r}; the only type vLLM's "
                                    'TerraTorch loader accepts is "torch.Tensor"'))
        shape = entry.get("shape")
        if not isinstance(shape, list) or not shape or not all(_is_pos_int(s) for s in shape):
            problems.append(Problem(ERROR, f"{key}.shape", f"is {shape!r}; it must be a non-empty list of "
                                    "positive integers, e.g. [6, 512, 512] (channels, height, width)"))
        for extra in entry:
            if extra not in ("type", "shape"):
                problems.append(Problem(WARNING, f"{key}.{extra}", "unknown entry, ignored by vLLM"))
    target = spec.get("target")
    if target is not None and target not in data:
        problems.append(Problem(ERROR, "input.target", f"{target!r} is not among the inputs "
                                f"({', '.join(map(repr, data))}); name one of them, or drop `target` to pass "
                                "every input by keyword"))
    if "location_coords" in data and isinstance(data["location_coords"], dict):
        shape = data["location_coords"].get("shape")
        if isinstance(shape, list) and shape != [1, 2]:
            problems.append(Problem(WARNING, "input.data.location_coords.shape",
                                    f"is {shape}; the segmentation IOProcessor sends (lon, lat) as [1, 2]"))


def _model_bands(model_args: dict) -> Optional[list]:
    bands = model_args.get("backbone_bands")
    return list(bands) if isinstance(bands, (list, tuple)) else None


def _data_bands(init_args: dict) -> tuple[Optional[str], Optional[list]]:
    for key in ("output_bands", "bands", "dataset_bands"):
        v = init_args.get(key)
        if isinstance(v, (list, tuple)) and v:
            return key, list(v)
    return None, None


def check_model_section(model: Any, problems: list[Problem], terratorch_version: Optional[str]) -> None:
    if not isinstance(model, dict) or not model:
        problems.append(Problem(ERROR, "model", "the TerraTorch config has no (or an empty) `model` section; "
                                "add the LightningCLI model section used for training (class_path: "
                                "terratorch.tasks.SemanticSegmentationTask, init_args: model_factory, model_args)"))
        return
    class_path = model.get("class_path")
    if not isinstance(class_path, str) or not class_path:
        problems.append(Problem(ERROR, "model.class_path", "missing; vLLM picks the task from it: set "
                                "terratorch.tasks.SemanticSegmentationTask"))
    elif not any(t in class_path for t in TASKS):
        problems.append(Problem(ERROR, "model.class_path", f"{class_path!r} is not a task vLLM's TerraTorch "
                                "runner can build; use terratorch.tasks.SemanticSegmentationTask"))
    elif "PixelwiseRegressionTask" in class_path:
        problems.append(Problem(WARNING, "model.class_path", "a regression model serves, but the "
                                "terratorch_segmentation IOProcessor argmaxes its output; use tensor transport"))
    init_args = model.get("init_args")
    if not isinstance(init_args, dict) or not init_args:
        problems.append(Problem(ERROR, "model.init_args", "missing or empty; it must hold model_factory and "
                                "model_args (backbone, decoder, num_classes, ...)"))
        return
    factory = init_args.get("model_factory")
    if factory is None:
        problems.append(Problem(WARNING, "model.init_args.model_factory", "not set; vLLM needs it explicitly, "
                                "so TerraTorch's default EncoderDecoderFactory was written"))
    elif not isinstance(factory, str) or not factory:
        problems.append(Problem(ERROR, "model.init_args.model_factory", f"is {factory!r}; name a registered "
                                "factory such as EncoderDecoderFactory"))
    model_args = init_args.get("model_args")
    if not isinstance(model_args, dict) or not model_args:
        problems.append(Problem(ERROR, "model.init_args.model_args", "missing or empty; it must give at least "
                                "backbone, decoder and num_classes"))
        return
    ma = "model.init_args.model_args"
    if not isinstance(model_args.get("backbone"), str) or not model_args.get("backbone"):
        problems.append(Problem(ERROR, f"{ma}.backbone", "missing; name the backbone the checkpoint was "
                                "trained with (e.g. prithvi_eo_v2_300_tl)"))
    nc = model_args.get("num_classes")
    if class_path and "SemanticSegmentationTask" in str(class_path):
        if not _is_pos_int(nc):
            problems.append(Problem(ERROR, f"{ma}.num_classes", f"is {nc!r}; a segmentation model needs the "
                                    "number of classes it was trained with (2 for water / not water)"))
        elif nc > 2:
            problems.append(Problem(WARNING, f"{ma}.num_classes", f"is {nc}; the segmentation IOProcessor writes "
                                    "class x 255 into a uint8 band, so classes above 1 overflow (use tensor "
                                    "transport for multi-class models)"))
    if model_args.get("backbone_pretrained") is True:
        problems.append(Problem(WARNING, f"{ma}.backbone_pretrained", "was true; written as false: vLLM builds "
                                "the model before loading this checkpoint, and true would download the "
                                "pretrained backbone on every start (and fail offline)"))
    bands = model_args.get("backbone_bands")
    if bands is not None and (not isinstance(bands, list) or not bands
                              or not all(isinstance(b, (str, int)) for b in bands)):
        problems.append(Problem(ERROR, f"{ma}.backbone_bands", f"is {bands!r}; it must be a list of band "
                                "names such as [BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2]"))
    necks = model_args.get("necks")
    if necks is not None:
        if not isinstance(necks, list) or not all(isinstance(n, dict) and n.get("name") for n in necks):
            problems.append(Problem(ERROR, f"{ma}.necks", "must be a list of {name: ..., <args>} entries, "
                                    "e.g. [{name: SelectIndices, indices: [5, 11, 17, 23]}, "
                                    "{name: ReshapeTokensToImage}]"))
    installed = version_tuple(terratorch_version) if terratorch_version else None
    for arg, (dropped_in, why) in REMOVED_MODEL_ARGS.items():
        if arg not in model_args:
            continue
        release = ".".join(map(str, dropped_in))
        if installed is None:
            problems.append(Problem(WARNING, f"{ma}.{arg}", f"TerraTorch {release} dropped it ({why}); the "
                                    "serving TerraTorch version is unknown, so it was kept. Remove it if "
                                    f"vLLM runs TerraTorch >= {release}"))
        elif installed >= dropped_in:
            problems.append(Problem(WARNING, f"{ma}.{arg}", f"dropped in TerraTorch {release} (installed: "
                                    f"{terratorch_version}): {why}. Removed from the written config"
                                    + (" and its weights moved to an appended LearnedInterpolateToPyramidal neck"
                                       if arg == "decoder_scale_modules" and model_args.get(arg) else "")))
    tip = init_args.get("tiled_inference_parameters")
    key = "model.init_args.tiled_inference_parameters"
    if tip is None:
        problems.append(Problem(WARNING, key, "not set; the segmentation IOProcessor then cuts 512x512 tiles. "
                                "Set {h_crop: N, w_crop: N} to the tile size the model was trained on"))
    elif not isinstance(tip, dict):
        problems.append(Problem(ERROR, key, f"is {tip!r}; it must be a mapping such as {{h_crop: 512, w_crop: 512}}"))
    else:
        has_hw = "h_crop" in tip and "w_crop" in tip
        if not has_hw and "crop" not in tip:
            problems.append(Problem(ERROR, key, "has neither `crop` nor `h_crop` and `w_crop`; the IOProcessor "
                                    "refuses to start without them. Add h_crop and w_crop (tile size in px)"))
        for k in ("crop", "h_crop", "w_crop", "h_stride", "w_stride", "stride"):
            if k in tip and tip[k] is not None and not _is_pos_int(tip[k]):
                problems.append(Problem(ERROR, f"{key}.{k}", f"is {tip[k]!r}; it must be a positive integer"))


def check_data_section(data: Any, model: Any, spec: Any, problems: list[Problem]) -> None:
    if data is None:
        problems.append(Problem(ERROR, "data", "the TerraTorch config has no `data` section; the "
                                "terratorch_segmentation IOProcessor refuses to start without it and clients "
                                "read the bands, means and stds there. Add the LightningCLI data section "
                                "(class_path + init_args with means, stds and bands) used for training"))
        return
    if not isinstance(data, dict) or not data:
        problems.append(Problem(ERROR, "data", "is empty; add class_path and init_args (means, stds, bands)"))
        return
    cp = data.get("class_path")
    if not isinstance(cp, str) or "." not in cp:
        problems.append(Problem(ERROR, "data.class_path", f"is {cp!r}; the IOProcessor imports it by full "
                                "dotted path, e.g. terratorch.datamodules.GenericNonGeoSegmentationDataModule"))
    ia = data.get("init_args")
    if not isinstance(ia, dict) or not ia:
        problems.append(Problem(ERROR, "data.init_args", "missing or empty; it must give means, stds and "
                                "the band list (dataset_bands / output_bands)"))
        return
    model_args = {}
    if isinstance(model, dict) and isinstance(model.get("init_args"), dict):
        model_args = model["init_args"].get("model_args") or {}
    mbands = _model_bands(model_args) if isinstance(model_args, dict) else None
    dkey, dbands = _data_bands(ia)
    if mbands is not None and dbands is not None and [str(b) for b in mbands] != [str(b) for b in dbands]:
        problems.append(Problem(ERROR, "model.init_args.model_args.backbone_bands",
                                f"{mbands} disagrees with data.init_args.{dkey} {dbands}; the model would be "
                                "fed the wrong bands. Make both the same list, in the same order"))
    nbands = len(mbands) if mbands is not None else (len(dbands) if dbands is not None else None)
    for stat in ("means", "stds"):
        v = ia.get(stat)
        key = f"data.init_args.{stat}"
        if v is None:
            problems.append(Problem(ERROR, key, "missing; the IOProcessor normalises every tile with it. Give "
                                    "the per-band values used in training (reflectance 0-1 units)"))
            continue
        if not isinstance(v, list) or not v or not all(_is_number(x) for x in v):
            problems.append(Problem(ERROR, key, f"is {v!r}; it must be a list of numbers, one per band"))
            continue
        if nbands is not None and len(v) != nbands:
            problems.append(Problem(ERROR, key, f"has {len(v)} values for {nbands} bands; give one per band, "
                                    "in band order"))
        if stat == "stds" and any(x <= 0 for x in v):
            problems.append(Problem(ERROR, key, "contains a value <= 0; standard deviations must be positive"))
        if stat == "means" and any(x > 2 for x in v):
            problems.append(Problem(WARNING, key, "looks like raw digital numbers (> 2); the IOProcessor scales "
                                    "rasters whose mean is above 1 to 0-1 reflectance (/10000) before "
                                    "normalising, so means/stds should be in 0-1 units"))
    for tkey in ("test_transform", "val_transform", "train_transform"):
        tr = ia.get(tkey)
        if tr is None:
            continue
        if not isinstance(tr, list):
            problems.append(Problem(ERROR, f"data.init_args.{tkey}", "must be a list of {class_path: ...}"))
            continue
        for i, t in enumerate(tr):
            cpt = t.get("class_path") if isinstance(t, dict) else None
            if not isinstance(cpt, str) or "." not in cpt:
                problems.append(Problem(ERROR, f"data.init_args.{tkey}[{i}].class_path",
                                        f"is {cpt!r}; the IOProcessor imports transforms by full dotted path, "
                                        "e.g. albumentations.pytorch.transforms.ToTensorV2"))
    # the target tensor's channel count must match the bands the model takes
    if isinstance(spec, dict) and isinstance(spec.get("data"), dict) and nbands is not None:
        tname = spec.get("target") or ("pixel_values" if "pixel_values" in spec["data"] else None)
        entry = spec["data"].get(tname) if tname else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(shape, list) and shape and _is_pos_int(shape[0]) and len(shape) in (3, 4):
            if shape[0] != nbands:
                problems.append(Problem(ERROR, f"input.data.{tname}.shape", f"starts with {shape[0]} channels "
                                        f"but the model takes {nbands} bands; use [{nbands}, H, W]"))


def check_weights(tensors: dict[str, Tensor], model_args: dict, problems: list[Problem]) -> None:
    """Cross-checks that need no model build: class count and input channels."""
    ma = "model.init_args.model_args"
    heads = sorted(
        ((int(m.group(1)), k) for k in tensors if (m := re.fullmatch(r"head\.head\.(\d+)\.weight", k))),
    )
    nc = model_args.get("num_classes")
    if heads and _is_pos_int(nc):
        shape = tensors[heads[-1][1]].array.shape
        if shape and shape[0] != nc:
            problems.append(Problem(ERROR, f"{ma}.num_classes", f"is {nc} but the checkpoint's head "
                                    f"({heads[-1][1]}) outputs {shape[0]} classes; set num_classes: {shape[0]}"))
    bands = _model_bands(model_args)
    for k, t in tensors.items():
        if k.endswith("patch_embed.proj.weight") and t.array.ndim >= 4 and bands is not None:
            if t.array.shape[1] != len(bands):
                problems.append(Problem(ERROR, f"{ma}.backbone_bands", f"lists {len(bands)} bands but the "
                                        f"checkpoint's {k} takes {t.array.shape[1]} input channels; list the "
                                        "bands the model was trained on"))
            break
