"""Turn a TerraTorch training run (LightningCLI YAML + checkpoint) into a folder vLLM can serve.

vLLM's TerraTorch loader needs a `config.json` (`architectures: ["Terratorch"]`, `num_classes: 0`,
`pretrained_cfg` = {input, model, data}) and the weights beside it. Writing that by hand is where
models fail to serve: a band list that disagrees with the datamodule, a shape that is not a list of
ints, an argument the installed TerraTorch no longer accepts, a missing `data` section (the
segmentation IOProcessor refuses to start without it). Each such mistake otherwise shows up a
minute later as a stack trace in a server log; here every one is reported at once, as a
`Problem(level, key, message)` naming the key and the fix, and nothing is written if any is an error.

Weights are converted to one flat `model.safetensors` (keys relative to the TerraTorch model, the form
vLLM's loader prefixes with `inference_runner.model.`), optionally in float16, with numpy only: the
QGIS Python has no torch. Lightning `.ckpt`, `.pt`/`.pth` (torch zip format) and `.safetensors` are
read without torch and without executing pickled code (a restricted unpickler that only rebuilds
tensors and plain containers).

QGIS-free; PyYAML is imported only when a YAML file is read.
"""

from __future__ import annotations

import copy
import glob
import json
import math
import os
import pickle
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import ModelSpecError
from .model_prep.checkpoint import WEIGHT_SUFFIXES, Tensor, read_weights, write_safetensors
from .versions import version_tuple

PathLike = Union[str, Path]
ERROR = "ERROR"
WARNING = "WARNING"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
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


class ModelPreparationFailed(ModelSpecError):
    """At least one Problem is an error; nothing was written. `problems` holds all of them."""

    def __init__(self, problems: list[Problem]) -> None:
        errors = [p for p in problems if p.level == ERROR]
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"The model folder was not written: {len(errors)} error(s).\n{lines}",
            "Fix the entries named above and run again.",
        )
        self.problems = problems


@dataclass
class PreparedModel:
    out_dir: Path
    config: dict
    weights: Path
    problems: list[Problem] = field(default_factory=list)  # warnings only (errors raise)
    tensors: int = 0
    weights_bytes: int = 0

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == WARNING]


# ----------------------------------------------------------------------------------------------
# reading the inputs


def load_ttconfig(path: PathLike) -> dict:
    """Read a LightningCLI YAML; raises ModelSpecError naming the file on any problem."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the interpreter
        raise ModelSpecError(
            "PyYAML is not installed in this Python, so the TerraTorch YAML cannot be read.",
            "Install it (Debian: apt install python3-yaml; pip: pip install pyyaml).",
        ) from exc
    p = Path(path)
    if not p.is_file():
        raise ModelSpecError(f"TerraTorch config {p} does not exist.", "Pass the YAML used for training.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelSpecError(f"TerraTorch config {p} is not valid YAML: {exc}", "Fix the YAML syntax.") from exc
    if not isinstance(data, dict):
        raise ModelSpecError(
            f"TerraTorch config {p} is not a mapping with `model` and `data` sections.",
            "Pass the LightningCLI YAML used for training (the one with `model:` and `data:`).",
        )
    return data


def load_input_spec(spec: Union[str, PathLike, dict]) -> dict:
    """The input specification from JSON text, a JSON file path, or an already parsed dict."""
    if isinstance(spec, dict):
        return spec
    text = str(spec).strip()
    if not text.startswith("{"):
        p = Path(text).expanduser()
        if not p.is_file():
            raise ModelSpecError(
                f"Input spec {text!r} is neither JSON text nor an existing file.",
                'Pass JSON such as {"target": "pixel_values", "data": {"pixel_values": '
                '{"type": "torch.Tensor", "shape": [6, 512, 512]}}} or the path of a file holding it.',
            )
        text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"Input spec is not valid JSON: {exc}", "Fix the JSON syntax.") from exc
    if not isinstance(data, dict):
        raise ModelSpecError("Input spec must be a JSON object with a `data` entry.",
                             'Wrap it as {"data": {...}, "target": "..."}.')
    return data


# ----------------------------------------------------------------------------------------------
# TerraTorch version of the serving environment


def detect_terratorch_version(vllm_python: Optional[str] = None) -> Optional[str]:
    """TerraTorch version in the environment that will serve the model, read from its dist-info.

    Looks at the vLLM environment's site-packages (no import: that takes 20 s), then at this
    interpreter. None when it cannot be found.
    """
    candidates = []
    if vllm_python:
        candidates.append(vllm_python)
    if os.environ.get("FLOODMAPPER_VLLM_PYTHON"):
        candidates.append(os.environ["FLOODMAPPER_VLLM_PYTHON"])
    try:
        from .settings import default_vllm_python

        candidates.append(default_vllm_python())
    except ImportError:  # pragma: no cover
        pass
    for py in candidates:
        prefix = Path(py).expanduser().parent.parent
        hits = sorted(glob.glob(str(prefix / "lib" / "python3*" / "site-packages" / "terratorch-*.dist-info")))
        for hit in hits:
            m = re.match(r"terratorch-([^-]+)\.dist-info", Path(hit).name)
            if m:
                return m.group(1)
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("terratorch")
    except PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------
# validation


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


# ----------------------------------------------------------------------------------------------
# the generator


def build_config(ttconfig: dict, input_spec: Optional[dict], terratorch_version: Optional[str] = None) -> tuple:
    """(config.json dict, problems) from a parsed LightningCLI config and input spec. Writes nothing.

    `input_spec` None means it could not be read (already reported): its checks are skipped.
    """
    problems: list[Problem] = []
    if not isinstance(ttconfig, dict):
        problems.append(Problem(ERROR, "ttconfig", "is not a mapping; pass the LightningCLI YAML"))
        return {}, problems
    model = ttconfig.get("model")
    data = ttconfig.get("data")
    if input_spec is not None:
        check_input_spec(input_spec, problems)
    check_model_section(model, problems, terratorch_version)
    check_data_section(data, model, input_spec, problems)
    if input_spec is None or any(p.level == ERROR for p in problems):
        return {}, problems
    model = copy.deepcopy(model)
    init_args = model["init_args"]
    init_args.setdefault("model_factory", "EncoderDecoderFactory")
    model_args = init_args["model_args"]
    if model_args.get("backbone_pretrained") is True:
        model_args["backbone_pretrained"] = False
    installed = version_tuple(terratorch_version) if terratorch_version else None
    for arg, (dropped_in, _why) in REMOVED_MODEL_ARGS.items():
        if arg in model_args and installed is not None and installed >= dropped_in:
            value = model_args.pop(arg)
            if arg == "decoder_scale_modules" and value:
                necks = list(model_args.get("necks") or [])
                necks.append({"name": "LearnedInterpolateToPyramidal"})
                model_args["necks"] = necks
    pretrained_cfg: dict[str, Any] = {}
    if "seed_everything" in ttconfig:
        pretrained_cfg["seed_everything"] = ttconfig["seed_everything"]
    spec = {"data": copy.deepcopy(input_spec["data"])}
    if input_spec.get("target") is not None:
        spec = {"target": input_spec["target"], **spec}
    pretrained_cfg.update({"input": spec, "model": model, "data": copy.deepcopy(data)})
    config = {"architectures": ["Terratorch"], "num_classes": 0, "pretrained_cfg": pretrained_cfg}
    return config, problems


def _scale_modules_moved(original_args: dict, config: dict) -> Optional[int]:
    """Index of the neck that received the old UperNet scale modules, if build_config appended one."""
    new_args = config["pretrained_cfg"]["model"]["init_args"]["model_args"]
    if original_args.get("decoder_scale_modules") and "decoder_scale_modules" not in new_args:
        return len(new_args["necks"]) - 1
    return None


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def prepare_model(
    ttconfig: Union[PathLike, dict],
    input_spec: Union[str, PathLike, dict],
    weights: PathLike,
    out_dir: PathLike,
    *,
    fp16: bool = False,
    terratorch_version: Optional[str] = "detect",
    overwrite: bool = False,
    extra_files: Optional[dict[str, str]] = None,
) -> PreparedModel:
    """Validate everything, then write `out_dir` (config.json + model.safetensors) atomically.

    Raises ModelPreparationFailed (with every Problem) when any check is an error; then nothing is
    written. Warnings come back in the result. `terratorch_version="detect"` reads the version from
    the vLLM environment; None skips the version-dependent rewrites (with a warning).
    """
    problems: list[Problem] = []
    if terratorch_version == "detect":
        terratorch_version = detect_terratorch_version()
    out = Path(out_dir).expanduser()
    wpath = Path(weights).expanduser()
    inputs = [wpath] + ([Path(ttconfig)] if not isinstance(ttconfig, dict) else [])
    try:
        cfg = ttconfig if isinstance(ttconfig, dict) else load_ttconfig(ttconfig)
    except ModelSpecError as exc:
        problems.append(Problem(ERROR, "ttconfig", str(exc)))
        cfg = None
    try:
        spec = load_input_spec(input_spec)
    except ModelSpecError as exc:
        problems.append(Problem(ERROR, "input", str(exc)))
        spec = None
    config: dict = {}
    if cfg is not None:
        config, more = build_config(cfg, spec, terratorch_version)
        problems.extend(more)
    tensors: dict[str, Tensor] = {}
    if not wpath.is_file():
        problems.append(Problem(ERROR, "weights", f"{wpath} does not exist; pass the checkpoint (.ckpt, .pt or "
                                ".safetensors) saved by training"))
    elif wpath.suffix.lower() not in WEIGHT_SUFFIXES:
        problems.append(Problem(ERROR, "weights", f"{wpath.name} has an unknown extension; pass a Lightning "
                                ".ckpt, a torch .pt/.pth or a .safetensors file"))
    else:
        try:
            tensors = read_weights(wpath)
        except (ModelSpecError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, EOFError,
                json.JSONDecodeError, OSError) as exc:
            problems.append(Problem(ERROR, "weights", f"{wpath.name} could not be read ({exc}); pass the "
                                    "checkpoint written by TerraTorch/Lightning training or torch.save()"))
        else:
            if not tensors:
                problems.append(Problem(ERROR, "weights", f"{wpath.name} holds no model tensors (no state_dict "
                                        "with model.* entries, no flat tensor dict); pass the training checkpoint"))
    if cfg is not None and isinstance(cfg.get("model"), dict) and tensors:
        margs = (cfg["model"].get("init_args") or {}).get("model_args") or {}
        if isinstance(margs, dict):
            check_weights(tensors, margs, problems)
            if margs.get("decoder_scale_modules") and config:
                idx = _scale_modules_moved(margs, config)
                if idx is not None:
                    moved = {}
                    for k, v in tensors.items():
                        m = re.match(r"decoder\.(fpn[1-4]\..*)", k)
                        moved[f"neck.{idx}.{m.group(1)}" if m else k] = v
                    tensors = moved
    if out.exists() and not out.is_dir():
        problems.append(Problem(ERROR, "out", f"{out} exists and is not a folder; choose a folder path"))
    elif out.exists() and any(out.iterdir()) and not overwrite:
        problems.append(Problem(ERROR, "out", f"{out} exists and is not empty; choose a new folder or allow "
                                "overwriting (--overwrite)"))
    for p in inputs:
        if out.exists() and _inside(p, out):
            problems.append(Problem(ERROR, "out", f"{out} holds the input {p.name}; writing there would "
                                    "replace it. Choose another output folder"))
    if not out.parent.exists():
        problems.append(Problem(ERROR, "out", f"parent folder {out.parent} does not exist; create it first"))
    if any(p.level == ERROR for p in problems):
        raise ModelPreparationFailed(problems)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        size = write_safetensors(tmp / WEIGHTS_NAME, tensors, fp16=fp16)
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
            fh.write("\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return PreparedModel(out, config, out / WEIGHTS_NAME, problems, tensors=len(tensors), weights_bytes=size)


def main(argv: Optional[list[str]] = None) -> int:
    """CLI: exit 0 written, 2 validation errors, 1 other failure."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="prepare-model",
        description="Write a vLLM-ready TerraTorch model folder (config.json + model.safetensors), "
                    "after checking the config, input spec and checkpoint agree.")
    ap.add_argument("--ttconfig", required=True, help="TerraTorch LightningCLI YAML (model + data sections)")
    ap.add_argument("-i", "--input", required=True, help="input spec: JSON text or a JSON file")
    ap.add_argument("--weights", required=True, help="checkpoint: .ckpt, .pt/.pth or .safetensors")
    ap.add_argument("--out", required=True, help="output folder (written atomically)")
    ap.add_argument("--fp16", action="store_true", help="store float weights as float16 (half the size)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ap.add_argument("--terratorch-version", default="detect",
                    help="TerraTorch version vLLM runs (default: read from the vLLM environment)")
    a = ap.parse_args(argv)
    try:
        res = prepare_model(a.ttconfig, a.input, a.weights, a.out, fp16=a.fp16, overwrite=a.overwrite,
                            terratorch_version=a.terratorch_version)
    except ModelPreparationFailed as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 2
    except (ModelSpecError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    for p in res.warnings:
        print(p, file=sys.stderr)
    print(f"wrote {res.out_dir} ({res.tensors} tensors, {res.weights_bytes / 1e6:.1f} MB of weights)")
    return 0
