"""scripts/prepare-model: exit 0 written, 2 validation errors (all listed, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.fixtures.training_run import SPEC, tensors, training_config, write_st

ROOT = Path(__file__).resolve().parents[2]


def test_cli_exit_codes(tmp_path):
    yml = tmp_path / "c.yaml"
    cfg = training_config()
    yml.write_text(yaml.safe_dump(cfg))
    w = write_st(tmp_path / "w.safetensors", tensors())
    cmd = [sys.executable, str(ROOT / "scripts" / "prepare-model"), "--ttconfig", str(yml), "-i", json.dumps(SPEC),
           "--weights", str(w), "--terratorch-version", "1.2.13"]
    ok = subprocess.run([*cmd, "--out", str(tmp_path / "ok"), "--fp16"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and (tmp_path / "ok" / "config.json").exists()
    del cfg["data"]
    yml.write_text(yaml.safe_dump(cfg))
    bad = subprocess.run([*cmd, "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "ERROR data: the TerraTorch config has no `data` section" in bad.stderr
    assert "Nothing was written." in bad.stderr
    assert not (tmp_path / "bad").exists()
