"""Model preparation: a TerraTorch training run turned into a folder vLLM can serve.

inputs.py parses the YAML and the input spec, checkpoint.py reads and writes weights without torch,
rules.py holds the validation rules, serving_env.py finds the serving TerraTorch version, builder.py
writes the folder, cli.py is `scripts/prepare-model`. Callers import from here.
"""

from .builder import ModelPreparationFailed, PreparedModel, prepare_model
from .checkpoint import Tensor, read_weights, write_safetensors
from .cli import main
from .inputs import load_input_spec, load_ttconfig
from .rules import ERROR, WARNING, Problem
from .serving_env import detect_terratorch_version

__all__ = [
    "ERROR",
    "WARNING",
    "ModelPreparationFailed",
    "PreparedModel",
    "Problem",
    "Tensor",
    "detect_terratorch_version",
    "load_input_spec",
    "load_ttconfig",
    "main",
    "prepare_model",
    "read_weights",
    "write_safetensors",
]
