"""Plugin settings as a plain value, with the defaults the README's set-up installs.

The QGIS side fills `Settings` from QgsSettings (plugin/toolbelt/settings.py); environment variables
override both, so `qgis_process`, CI and scripts work with no profile:

    FLOODMAPPER_VLLM_PYTHON   the vLLM environment's python (or a `vllm` command)
    FLOODMAPPER_MODEL         model for the local engine (local folder or Hugging Face id)
    FLOODMAPPER_DTYPE         the local engine's dtype (auto, float16, float32, bfloat16)
    FLOODMAPPER_SERVER_URL    default remote server URL
    FLOODMAPPER_HOME          where set-up puts the vLLM environment (default ~/.local/share/floodmapper)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parents[2]
DEMO_MODEL_DIR = PLUGIN_DIR / "resources" / "demo_model"
DEMO_MODEL_NAME = "floodmapper-demo"
# Image-to-image sends the whole raster as one request: the server reads it into memory at once inside its
# event loop (stalling every other request, /health included), with no progress and no partial
# result, against one read timeout. Above this size the tensor transport (tiles, progress, cancel, memory
# bounded by the tile) is the one that works; 25 MP is ~5000x5000 px, some minutes on a CPU server.
DEFAULT_IMAGE_MAX_MEGAPIXELS = 25.0
# A job whose server goes away (restarted, its engine stopped) waits this long for it to answer again before it
# gives up; a vLLM server restarts in 30-90 s on a CPU.
DEFAULT_RETRY_WAIT = 120.0


def floodmapper_home() -> Path:
    if os.environ.get("FLOODMAPPER_HOME"):
        return Path(os.environ["FLOODMAPPER_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "floodmapper"


def default_vllm_python() -> str:
    return str(floodmapper_home() / "vllm-env" / "bin" / "python")


@dataclass(frozen=True)
class Settings:
    # remote server
    server_url: str = "http://127.0.0.1:8000"
    authcfg: str = ""  # QGIS auth manager config id; the secret itself never lives here
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    verify_tls: bool = True
    ca_bundle: str = ""
    path_map_local: str = ""  # a local folder prefix the server sees as...
    path_map_server: str = ""  # ...this server-side prefix (image-to-image `path` to a remote server)
    image_max_megapixels: float = DEFAULT_IMAGE_MAX_MEGAPIXELS  # larger rasters: tensor transport only
    server_dtype: str = "auto"  # the remote server's --dtype (auto: what vLLM's auto runs for the model)
    retry_wait: float = DEFAULT_RETRY_WAIT  # seconds to wait for a server that went away mid-job; 0 = fail at once
    # local engine
    vllm_python: str = field(default_factory=default_vllm_python)
    model: str = str(DEMO_MODEL_DIR)
    device: str = "auto"  # auto | gpu | cpu
    dtype: str = "auto"  # auto: float16 on a GPU, on a CPU the fastest its instruction set runs (core.cpu)
    max_num_seqs: int = 8
    gpu_memory_utilization: float = 0.9
    extra_args: str = ""
    startup_timeout: float = 600.0

    def with_env(self, environ: dict[str, str] | None = None) -> Settings:
        """These settings with the FLOODMAPPER_* environment variables applied on top."""
        env = os.environ if environ is None else environ
        changes: dict[str, object] = {}
        if env.get("FLOODMAPPER_VLLM_PYTHON"):
            changes["vllm_python"] = env["FLOODMAPPER_VLLM_PYTHON"]
        if env.get("FLOODMAPPER_MODEL"):
            changes["model"] = env["FLOODMAPPER_MODEL"]
        if env.get("FLOODMAPPER_DTYPE"):
            changes["dtype"] = env["FLOODMAPPER_DTYPE"]
        if env.get("FLOODMAPPER_SERVER_URL"):
            changes["server_url"] = env["FLOODMAPPER_SERVER_URL"]
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
