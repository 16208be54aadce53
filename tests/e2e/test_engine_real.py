"""The plugin's LocalEngine with the real vLLM environment on the demo model: start, serve, stop clean.

It starts its own `vllm serve` (not the session fixture's), because what is tested is the engine's own
process handling: the flags it picks from `vllm_entry.py --check`, the health wait, and that stop()
leaves no process of its group behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from plugin.core import engine as eng
from plugin.core.settings import DEMO_MODEL_NAME, Settings

pytestmark = [pytest.mark.vllm, pytest.mark.engine]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def test_local_engine_lifecycle(tmp_path):
    settings = Settings().with_env()
    assert Path(settings.vllm_python).exists(), f"no vLLM environment at {settings.vllm_python}"
    lines: list[str] = []
    engine = eng.LocalEngine(settings, tmp_path / "logs", on_log=lines.append)
    try:
        t0 = time.monotonic()
        url = engine.ensure_running()
        print(f"LocalEngine start to /health: {time.monotonic() - t0:.1f} s (incl. --check)")
        assert requests.get(url + "/health", timeout=10).status_code == 200
        models = [m["id"] for m in requests.get(url + "/v1/models", timeout=10).json()["data"]]
        expected = DEMO_MODEL_NAME if eng.is_demo_model(settings.model) else settings.model
        assert models == [expected] == [engine.model_id]
        assert "--enable-mm-embeds" in engine.command  # vLLM 0.32 >= 0.11.1
        assert engine.info is not None and engine.info.device == "cpu"

        assert engine.state() == "healthy"
        version = requests.get(url + "/version", timeout=10).json()["version"]
        assert version.startswith(engine.info.vllm)

        leader = engine.pid
        members = group_members(leader)
        assert len(members) >= 3, f"API server, engine core and worker expected in the group, got {members}"
        assert any("Application startup complete" in line for line in lines)
        assert engine.ensure_running() == url and engine.pid == leader  # reused, not restarted
        out_dir = engine.output_dir
    finally:
        t0 = time.monotonic()
        engine.stop()
        print(f"stop took {time.monotonic() - t0:.1f} s")
    assert group_members(leader) == []
    assert not os.path.exists(out_dir)
    assert "engine stopped" in engine.log_path.read_text()
