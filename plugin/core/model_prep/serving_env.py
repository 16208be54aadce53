"""The TerraTorch version of the environment that will serve the model, read without importing it."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Optional

from ..settings import default_vllm_python


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
    candidates.append(default_vllm_python())
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
