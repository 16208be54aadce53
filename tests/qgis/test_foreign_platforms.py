"""The plugin loads on Windows and macOS, where vLLM cannot run locally: every module imports with the platform
disguised and POSIX-only modules and functions gone, the algorithms are listed, the local engine says it needs
Linux, and the remote backend maps floods (tests/fixtures/foreign_platform.py does it in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin.core import engine, engine_env
from plugin.core.errors import EngineError
from plugin.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "fixtures" / "foreign_platform.py"
SYSTEMS = {"win32": "Windows", "darwin": "macOS"}


def _disguised(tmp_path: Path, platform: str, server: str = "") -> dict:
    from scripts import scenes

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "floodmapper").symlink_to(ROOT, target_is_directory=True)
    scene = tmp_path / "scene.tif"
    scenes.generate_scene(scene, seed=11, width=96, height=80)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               FLOODMAPPER_HOME=str(tmp_path / "home"))  # not the kept engines of this computer's user
    cmd = [sys.executable, str(SCRIPT), platform, str(plugins), str(scene), str(tmp_path)]
    cmd += [server] if server else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(lines[-1])
    assert report["problems"] == [], "\n".join(report["problems"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return report


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_every_module_loads_and_the_local_engine_says_it_needs_linux(tmp_path, platform, provider_loaded):
    report = _disguised(tmp_path, platform)
    assert report["sys.platform"] == platform and report["os.name"] == ("nt" if platform == "win32" else "posix")
    assert report["algorithms"] == sorted(a.id() for a in provider_loaded.algorithms())  # all, as on Linux
    assert "floodmapper:map_floods" in report["algorithms"]
    for key in ("engine_error", "algorithm_error"):
        assert f"The local vLLM engine needs Linux: vLLM does not run on {SYSTEMS[platform]}." in report[key]
        assert "Remote vLLM server" in report[key] and "Traceback" not in report[key]


@pytest.mark.vllm
def test_remote_backend_maps_floods_on_windows(tmp_path, vllm_server):
    report = _disguised(tmp_path, "win32", vllm_server.url)
    remote = report["remote"]
    assert Path(remote["OUTPUT"]).is_file() and Path(remote["OUTPUT"]).with_suffix(".qml").is_file()
    assert remote["VALID_PIXELS"] == 96 * 80 and 0 < remote["WATER_PIXELS"] < remote["VALID_PIXELS"]


@pytest.mark.parametrize("platform", ["win32", "darwin", "cygwin"])
def test_engine_refuses_before_looking_for_python(monkeypatch, platform):
    monkeypatch.setattr(sys, "platform", platform)
    with pytest.raises(EngineError, match="needs Linux") as caught:
        engine_env.check_environment("/nonexistent/python")  # the platform, not the missing python, is reported
    assert "Remote vLLM server" in caught.value.hint
    with pytest.raises(EngineError, match="needs Linux"):
        engine.LocalEngine(Settings(vllm_python="/nonexistent/python")).ensure_running(timeout=1)
