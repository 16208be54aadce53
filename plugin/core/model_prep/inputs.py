"""The preparation inputs (LightningCLI YAML, input spec JSON) parsed into dicts.

Each failure is a ModelSpecError naming the file or text and the fix. PyYAML is imported only when a
YAML file is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from ..errors import ModelSpecError

PathLike = Union[str, Path]


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
