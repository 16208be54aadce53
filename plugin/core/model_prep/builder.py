"""Build the folder vLLM serves from a TerraTorch training run (LightningCLI YAML + checkpoint).

vLLM's TerraTorch loader needs a `config.json` (`architectures: ["Terratorch"]`, `num_classes: 0`,
`pretrained_cfg` = {input, model, data}) and the weights beside it. `prepare_model` reads the inputs,
runs every rule (rules.py), rewrites what the serving TerraTorch needs rewritten, and writes
`config.json` + `model.safetensors` atomically; if any problem is an error it writes nothing.

Weights are written as one flat `model.safetensors` (keys relative to the TerraTorch model, the form
vLLM's loader prefixes with `inference_runner.model.`), optionally in float16.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ModelSpecError
from ..output import AtomicOutputs
from ..versions import version_tuple
from .checkpoint import WEIGHT_SUFFIXES, Tensor, read_weights, write_safetensors
from .inputs import load_input_spec, load_ttconfig
from .rules import (
    ERROR,
    REMOVED_MODEL_ARGS,
    WARNING,
    Problem,
    check_data_section,
    check_input_spec,
    check_model_section,
    check_weights,
)
from .serving_env import detect_terratorch_version

PathLike = Union[str, Path]
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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


def _read_checked_weights(path: Path, problems: list[Problem]) -> dict[str, Tensor]:
    """The checkpoint's model tensors, or {} with the reason appended to `problems`."""
    if not path.is_file():
        problems.append(Problem(ERROR, "weights", f"{path} does not exist; pass the checkpoint (.ckpt, .pt or "
                                ".safetensors) saved by training"))
        return {}
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        problems.append(Problem(ERROR, "weights", f"{path.name} has an unknown extension; pass a Lightning "
                                ".ckpt, a torch .pt/.pth or a .safetensors file"))
        return {}
    try:
        tensors = read_weights(path)
    except (ModelSpecError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, EOFError,
            json.JSONDecodeError, OSError) as exc:
        problems.append(Problem(ERROR, "weights", f"{path.name} could not be read ({exc}); pass the "
                                "checkpoint written by TerraTorch/Lightning training or torch.save()"))
        return {}
    if not tensors:
        problems.append(Problem(ERROR, "weights", f"{path.name} holds no model tensors (no state_dict "
                                "with model.* entries, no flat tensor dict); pass the training checkpoint"))
    return tensors


def _move_scale_module_weights(tensors: dict[str, Tensor], original_args: dict, config: dict) -> dict[str, Tensor]:
    """The old UperNet scale modules' weights (`decoder.fpnN.*`) renamed into the neck build_config appended."""
    if not (original_args.get("decoder_scale_modules") and config):
        return tensors
    new_args = config["pretrained_cfg"]["model"]["init_args"]["model_args"]
    if "decoder_scale_modules" in new_args:  # kept: the serving TerraTorch still takes it
        return tensors
    idx = len(new_args["necks"]) - 1
    moved = {}
    for k, v in tensors.items():
        m = re.match(r"decoder\.(fpn[1-4]\..*)", k)
        moved[f"neck.{idx}.{m.group(1)}" if m else k] = v
    return moved


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def _check_output(out: Path, inputs: list[Path], overwrite: bool, problems: list[Problem]) -> None:
    """The output folder may be written: new or empty (or `overwrite`), holding no input, in an existing parent."""
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


def _write_folder(out: Path, tensors: dict[str, Tensor], config: dict, fp16: bool,
                  extra_files: dict[str, str]) -> int:
    """Fill a temporary folder beside `out`, then move it into place (a previous `out` is set aside and
    removed only once the new one is there); returns the weights' size. Never a half-written folder."""
    outputs = AtomicOutputs([str(out)], folders=True)
    try:
        tmp = Path(outputs.temps[0])
        size = write_safetensors(tmp / WEIGHTS_NAME, tensors, fp16=fp16)
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
            fh.write("\n")
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        outputs.commit()
    except BaseException:
        outputs.discard()
        raise
    return size


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
    tensors = _read_checked_weights(wpath, problems)
    if cfg is not None and isinstance(cfg.get("model"), dict) and tensors:
        margs = (cfg["model"].get("init_args") or {}).get("model_args") or {}
        if isinstance(margs, dict):
            check_weights(tensors, margs, problems)
            tensors = _move_scale_module_weights(tensors, margs, config)
    _check_output(out, inputs, overwrite, problems)
    if any(p.level == ERROR for p in problems):
        raise ModelPreparationFailed(problems)
    size = _write_folder(out, tensors, config, fp16, extra_files or {})
    return PreparedModel(out, config, out / WEIGHTS_NAME, problems, tensors=len(tensors), weights_bytes=size)
