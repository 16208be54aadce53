"""What the tensor transport must know about a model to feed it tiles itself.

In tensor-to-tensor mode the server does no pre-processing: the client selects the bands, scales to
reflectance, normalises with the training means/stds, cuts tiles of the size the model was profiled with,
and casts to the dtype the server runs (a float32 tensor sent to a float16 server kills the server). All of
that lives in the model folder's `config.json` (vLLM's TerraTorch layout: `pretrained_cfg.input/model/data`), so a
`ModelSpec` is read from there: a local folder or file, a URL, or a built-in preset for models whose config
lacks something (e.g. means/stds kept in the datamodule class rather than in the config).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from .errors import ModelSpecError

PIXEL_VALUES = "pixel_values"
LOCATION_COORDS = "location_coords"

SEN1FLOODS11_BANDS = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")

# terratorch.datamodules.sen1floods11.Sen1Floods11NonGeoDataModule (1.2.x): per-band statistics of
# reflectance scaled to 0-1 (constant_scale 0.0001). The datamodule picks them by its `bands` argument.
_SEN1FLOODS11_MEANS = {
    "COASTAL_AEROSOL": 0.16450718, "BLUE": 0.1412956, "GREEN": 0.13795798, "RED": 0.12353792,
    "RED_EDGE_1": 0.1481099, "RED_EDGE_2": 0.23991728, "RED_EDGE_3": 0.28587557, "NIR_BROAD": 0.26345379,
    "NIR_NARROW": 0.30902815, "WATER_VAPOR": 0.04911151, "CIRRUS": 0.00652506, "SWIR_1": 0.2044958,
    "SWIR_2": 0.11912015,
}
_SEN1FLOODS11_STDS = {
    "COASTAL_AEROSOL": 0.06977374, "BLUE": 0.07406382, "GREEN": 0.07370365, "RED": 0.08692279,
    "RED_EDGE_1": 0.07778555, "RED_EDGE_2": 0.09105416, "RED_EDGE_3": 0.10690993, "NIR_BROAD": 0.10096586,
    "NIR_NARROW": 0.11798815, "WATER_VAPOR": 0.03380113, "CIRRUS": 0.01463465, "SWIR_1": 0.09772074,
    "SWIR_2": 0.07659938,
}
_SEN1FLOODS11_ALL_BANDS = tuple(_SEN1FLOODS11_MEANS)

# Datamodules whose statistics are class constants, keyed by the class name (last dotted component).
KNOWN_DATAMODULES: dict[str, tuple[dict[str, float], dict[str, float], tuple[str, ...]]] = {
    "Sen1Floods11NonGeoDataModule": (_SEN1FLOODS11_MEANS, _SEN1FLOODS11_STDS, _SEN1FLOODS11_ALL_BANDS),
}

_DTYPES = {
    "float16": "float16", "half": "float16", "fp16": "float16", "torch.float16": "float16",
    "float32": "float32", "float": "float32", "fp32": "float32", "torch.float32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16", "torch.bfloat16": "bfloat16",
}

PRESET_PRITHVI_SEN1FLOODS11 = "prithvi-eo-2.0-300m-tl-sen1floods11"
PRESET_DEMO = "floodmapper-demo"


@dataclass(frozen=True)
class ModelSpec:
    """The tensor contract of one served model (everything a client needs to build its requests)."""

    channels: int
    tile_height: int
    tile_width: int
    num_classes: int
    means: tuple[float, ...]
    stds: tuple[float, ...]
    bands: tuple[str, ...] = ()
    dtype: str = "float16"  # what the server runs; the client casts every tensor to it
    dtype_reason: str = ""  # where `dtype` came from, for the log
    input_name: str = PIXEL_VALUES
    location_name: Optional[str] = None  # "location_coords" when the model takes it
    location_shape: tuple[int, ...] = (1, 2)
    location_order: tuple[str, str] = ("lon", "lat")
    water_class: int = 1
    name: str = ""
    source: str = ""
    extra_inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def tile_size(self) -> int:
        return max(self.tile_height, self.tile_width)

    @property
    def has_location(self) -> bool:
        return self.location_name is not None

    def with_dtype(self, dtype: str, reason: str = "") -> ModelSpec:
        """The same spec for a server started with another `--dtype`."""
        return replace(self, dtype=normalise_dtype(dtype, "dtype"), dtype_reason=reason)

    def validate_for_tensor(self) -> ModelSpec:
        """Raise ModelSpecError naming the first thing tensor mode would need and does not have."""
        if self.channels < 1:
            raise ModelSpecError("The model spec has no input channels (pixel_values shape).",
                                 "Give pretrained_cfg.input.data.pixel_values.shape as [C, H, W].")
        if self.tile_height < 1 or self.tile_width < 1:
            raise ModelSpecError("The model spec has no tile size.",
                                 "Give pretrained_cfg.input.data.pixel_values.shape as [C, H, W].")
        if self.num_classes < 2:
            raise ModelSpecError(
                f"The model spec has num_classes={self.num_classes}; a segmentation model needs at least 2.",
                "Set pretrained_cfg.model.init_args.model_args.num_classes in config.json.")
        if not 0 <= self.water_class < self.num_classes:
            raise ModelSpecError(f"water_class {self.water_class} is not one of the {self.num_classes} classes.")
        if len(self.means) != self.channels or len(self.stds) != self.channels:
            raise ModelSpecError(
                f"The model takes {self.channels} channels but the spec has {len(self.means)} means and "
                f"{len(self.stds)} stds.",
                "Fix pretrained_cfg.data.init_args.means/stds so there is one value per input band.")
        if any(s <= 0 for s in self.stds):
            raise ModelSpecError("A std in pretrained_cfg.data.init_args.stds is <= 0.",
                                 "Every normalisation std must be positive.")
        if self.bands and len(self.bands) != self.channels:
            raise ModelSpecError(
                f"The spec names {len(self.bands)} bands for a {self.channels}-channel input.",
                "Make the band list (model_args.backbone_bands or data.init_args.bands) match pixel_values.")
        if self.extra_inputs:
            names = ", ".join(sorted(self.extra_inputs))
            raise ModelSpecError(
                f"The model declares inputs the tensor transport cannot fill: {names}.",
                "Use the image-to-image transport for this model, or serve a model that takes only "
                "pixel_values (and optionally location_coords).")
        return self


def normalise_dtype(value: Any, key: str = "dtype") -> str:
    norm = _DTYPES.get(str(value).strip().lower())
    if norm is None:
        raise ModelSpecError(f"Unknown dtype {value!r} in {key}.", "Use float16, float32 or bfloat16.")
    return norm


def vllm_auto_dtype(declared: Optional[str]) -> str:
    """The dtype `vllm serve --dtype auto` runs a TerraTorch (pooling) model in, from config.json's torch_dtype.

    vLLM prefers float16 for pooling models and casts a float32 (or undeclared) model down to it; a bfloat16
    model stays bfloat16. A server started with an explicit `--dtype` runs that instead, and no client can ask
    a server which it runs: hence SERVER_DTYPE, and `--dtype` in every serve command this project shows.
    """
    return "bfloat16" if declared == "bfloat16" else "float16"


def _dig(cfg: Any, path: str) -> Any:
    cur = cfg
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _floats(values: Any, key: str) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise ModelSpecError(f"{key} must be a non-empty list of numbers.", "Fix it in config.json.")
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"{key} must be a list of numbers ({exc}).", "Fix it in config.json.") from exc


def spec_from_config(cfg: dict[str, Any], source: str = "", name: str = "") -> ModelSpec:
    """Read a vLLM TerraTorch config.json (already parsed) into a validated ModelSpec."""
    if not isinstance(cfg, dict):
        raise ModelSpecError(f"The model config from {source or 'the given source'} is not a JSON object.")
    pcfg = cfg.get("pretrained_cfg")
    if not isinstance(pcfg, dict):
        raise ModelSpecError(f"The model config from {source or 'the given source'} has no pretrained_cfg.",
                             "A vLLM TerraTorch config.json needs pretrained_cfg.input, .model and .data.")
    inputs = _dig(pcfg, "input.data")
    if not isinstance(inputs, dict) or not inputs:
        raise ModelSpecError("The model config has no pretrained_cfg.input.data.",
                             "Declare the model inputs (pixel_values shape [C, H, W]) in config.json.")
    target = _dig(pcfg, "input.target") or PIXEL_VALUES
    if target not in inputs:
        raise ModelSpecError(f"pretrained_cfg.input.target names {target!r}, which input.data does not declare.")
    shape = _dig(inputs, f"{target}.shape")
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ModelSpecError(
            f"pretrained_cfg.input.data.{target}.shape is {shape!r}; the tensor transport needs [C, H, W].",
            "Give the image input's shape as three positive integers.")
    channels, height, width = shape

    location_name = None
    location_shape: tuple[int, ...] = (1, 2)
    extra: dict[str, Any] = {}
    for key, value in inputs.items():
        if key == target:
            continue
        if key == LOCATION_COORDS:
            location_name = key
            lshape = _dig(value, "shape")
            if lshape is not None:
                if not isinstance(lshape, list) or [int(v) for v in lshape][-1:] != [2]:
                    raise ModelSpecError(f"pretrained_cfg.input.data.location_coords.shape is {lshape!r}; "
                                         "expected [..., 2] (lon, lat).")
                location_shape = tuple(int(v) for v in lshape)
        else:
            extra[key] = value

    margs = _dig(pcfg, "model.init_args.model_args") or {}
    num_classes = margs.get("num_classes", _dig(pcfg, "model.init_args.num_classes"))
    if num_classes is None:
        raise ModelSpecError("The model config has no pretrained_cfg.model.init_args.model_args.num_classes.",
                             "Add the number of output classes (2 for water / not water).")
    try:
        num_classes = int(num_classes)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"model_args.num_classes is {num_classes!r}, not an integer.") from exc

    # The IOProcessor tiles with tiled_inference_parameters.{h_crop,w_crop}|crop; follow it so both
    # transports cut the same tiles. Without it the declared input shape is what the server profiled.
    tip = _dig(pcfg, "model.init_args.tiled_inference_parameters") or {}
    if isinstance(tip, dict):
        height = int(tip.get("h_crop", tip.get("crop", height)))
        width = int(tip.get("w_crop", tip.get("crop", width)))

    data_args = _dig(pcfg, "data.init_args") or {}
    data_class = str(_dig(pcfg, "data.class_path") or "")
    bands_raw = data_args.get("bands") or data_args.get("output_bands") or margs.get("backbone_bands") or ()
    bands = tuple(str(b) for b in bands_raw) if isinstance(bands_raw, (list, tuple)) else ()

    means_raw, stds_raw = data_args.get("means"), data_args.get("stds")
    if means_raw is not None or stds_raw is not None:
        if means_raw is None:
            raise ModelSpecError("pretrained_cfg.data.init_args has stds but no means.", "Add the means.")
        if stds_raw is None:
            raise ModelSpecError("pretrained_cfg.data.init_args has means but no stds.", "Add the stds.")
        means = _floats(means_raw, "pretrained_cfg.data.init_args.means")
        stds = _floats(stds_raw, "pretrained_cfg.data.init_args.stds")
    else:
        known = KNOWN_DATAMODULES.get(data_class.rsplit(".", 1)[-1]) if data_class else None
        if known is None:
            where = f" (datamodule {data_class})" if data_class else ""
            raise ModelSpecError(
                f"The model config has no pretrained_cfg.data.init_args.means/stds{where}.",
                "Add the normalisation means and stds to config.json, or pick a built-in preset.")
        table_means, table_stds, default_bands = known
        use = bands or default_bands
        missing = [b for b in use if b not in table_means]
        if missing:
            raise ModelSpecError(f"{data_class} has no statistics for band(s) {', '.join(missing)}.",
                                 "Add pretrained_cfg.data.init_args.means/stds to config.json.")
        means = tuple(table_means[b] for b in use)
        stds = tuple(table_stds[b] for b in use)
        bands = tuple(use)

    declared = cfg.get("torch_dtype") or cfg.get("dtype")
    dtype = vllm_auto_dtype(normalise_dtype(declared, "config.json torch_dtype") if declared else None)
    reason = (f"what `vllm serve --dtype auto` runs for config.json's torch_dtype {declared}" if declared
              else "what `vllm serve --dtype auto` runs for a config.json without torch_dtype")

    spec = ModelSpec(
        channels=int(channels), tile_height=height, tile_width=width, num_classes=num_classes,
        means=means, stds=stds, bands=bands, dtype=dtype, dtype_reason=reason, input_name=target,
        location_name=location_name, location_shape=location_shape,
        water_class=int(cfg.get("floodmapper_water_class", 1)),
        name=name, source=source, extra_inputs=extra,
    )
    return spec.validate_for_tensor()


def _prithvi_sen1floods11() -> ModelSpec:
    return ModelSpec(
        channels=6, tile_height=512, tile_width=512, num_classes=2,
        means=(0.1413, 0.1380, 0.1235, 0.3090, 0.2045, 0.1191),
        stds=(0.0741, 0.0737, 0.0869, 0.1180, 0.0977, 0.0766),
        bands=SEN1FLOODS11_BANDS, dtype="float16", location_name=LOCATION_COORDS,
        dtype_reason="what `vllm serve --dtype auto` runs for this model's published config",
        name=PRESET_PRITHVI_SEN1FLOODS11, source=f"preset:{PRESET_PRITHVI_SEN1FLOODS11}",
    )


def _demo_model() -> ModelSpec:
    from .settings import DEMO_MODEL_DIR

    spec = load_model_spec(str(DEMO_MODEL_DIR))
    return replace(spec, name=PRESET_DEMO, source=f"preset:{PRESET_DEMO} ({spec.source})")


PRESETS = {
    PRESET_PRITHVI_SEN1FLOODS11: _prithvi_sen1floods11,
    PRESET_DEMO: _demo_model,
}


def preset_for_model_name(model: str) -> Optional[str]:
    """The preset a served model name stands for (a folder path or HF id whose last part matches), if any."""
    last = model.rstrip("/").rsplit("/", 1)[-1].lower()
    if last in PRESETS:
        return last
    if PRESET_PRITHVI_SEN1FLOODS11 in last:
        return PRESET_PRITHVI_SEN1FLOODS11
    return None


def served_spec_source(model: str, root: str) -> str:
    """Where a served model's spec is, from its name and the `root` /v1/models gives: "" when its name is a
    preset (resolve_model_spec finds it by name), else the preset its folder stands for, or that folder when
    it is on this computer (the local engine, a loopback server)."""
    if preset_for_model_name(model) or not root:
        return ""
    return preset_for_model_name(root) or (root if os.path.isfile(os.path.join(root, "config.json")) else "")


def load_model_spec(source: str, *, session: Any = None, timeout: float = 30.0) -> ModelSpec:
    """A ModelSpec from a preset name, a model folder, a config.json file or an http(s) URL to one."""
    src = (source or "").strip()
    if not src:
        raise ModelSpecError("No model spec was given for the tensor transport.",
                             "Give the model's config.json (folder, file or URL) or a preset name: "
                             + ", ".join(PRESETS) + ".")
    if src.lower() in PRESETS:
        return PRESETS[src.lower()]()
    if src.startswith(("http://", "https://")):
        return _spec_from_url(src, session=session, timeout=timeout)
    path = Path(os.path.expanduser(src))
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelSpecError(f"Model config {path} does not exist.",
                             "Give the model folder (with config.json), the file itself, a URL, or a preset: "
                             + ", ".join(PRESETS) + ".")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"Cannot read model config {path}: {exc}.", "Check that it is valid JSON.") from exc
    return spec_from_config(cfg, source=str(path), name=path.parent.name)


def _spec_from_url(url: str, *, session: Any = None, timeout: float = 30.0) -> ModelSpec:
    import requests

    if url.endswith("/"):
        url += "config.json"
    getter = session if session is not None else requests
    try:
        resp = getter.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise ModelSpecError(f"Cannot fetch the model config {url}: {exc}.",
                             "Check the URL and the network, or give a local config.json.") from exc
    if resp.status_code != 200:
        raise ModelSpecError(f"Fetching the model config {url} answered HTTP {resp.status_code}.",
                             "Check the URL (it must point at the model's config.json).")
    try:
        cfg = resp.json()
    except ValueError as exc:
        raise ModelSpecError(f"The model config at {url} is not JSON.",
                             "The URL must serve config.json itself (a raw file URL).") from exc
    name = url.rstrip("/").rsplit("/", 2)[-2] if url.count("/") > 3 else ""
    return spec_from_config(cfg, source=url, name=name)


def resolve_model_spec(source: str, model_name: str = "", *, session: Any = None) -> ModelSpec:
    """The spec to use: the explicit source, else the preset the served model's name stands for."""
    if source and source.strip():
        return load_model_spec(source, session=session)
    preset = preset_for_model_name(model_name) if model_name else None
    if preset:
        return PRESETS[preset]()
    raise ModelSpecError(
        f"The tensor transport needs the model's config.json and none was given for model {model_name!r}.",
        "Set the model spec (MODEL_SPEC parameter: the served model's config.json folder, file, URL or a preset: "
        + ", ".join(PRESETS) + "), or use the image-to-image transport.")
