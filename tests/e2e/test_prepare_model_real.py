"""prepare-model output served by the REAL vLLM.

A YAML equivalent to the published Prithvi-EO-2.0-300M-TL Sen1Floods11 configuration (backbone_pretrained:
true, decoder_scale_modules: true, no tiled_inference_parameters, 512 input), pointed at the tiny
prithvi_eo_tiny backbone, and a Lightning-style checkpoint made by the vLLM environment's torch +
TerraTorch in a subprocess. The checkpoint emulates one trained with TerraTorch <= 1.2.11, where the
UperNet decoder held the scale modules (`decoder.fpn1..4`); the installed 1.2.13 rejects that argument,
so the generator must move those weights to a LearnedInterpolateToPyramidal neck. The folder is then
served by `scripts/serve-demo` and a /pooling request must answer with the same mask the subprocess
computed locally with the original weights (proving the weights were loaded, not re-initialised).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from rasterio.io import MemoryFile

from plugin.core.settings import Settings
from scripts import scenes
from tests.fixtures.servers import start_serve_demo, stop_group, wait_healthy

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
BANDS = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]
MEANS = [0.1413, 0.1380, 0.1235, 0.3090, 0.2045, 0.1191]  # the Sen1Floods11 model's, reflectance 0-1
STDS = [0.0741, 0.0737, 0.0869, 0.1180, 0.0977, 0.0766]

PUBLISHED_CONFIG = {
    "seed_everything": 0,
    "trainer": {"accelerator": "auto", "max_epochs": 100},
    "model": {
        "class_path": "terratorch.tasks.SemanticSegmentationTask",
        "init_args": {
            "model_args": {
                "backbone_pretrained": True,
                "backbone": "prithvi_eo_tiny",  # published: prithvi_eo_v2_300_tl (no download here)
                "decoder": "UperNetDecoder",
                "decoder_channels": 16,  # published: 256
                "decoder_scale_modules": True,
                "num_classes": 2,
                "rescale": True,
                "backbone_bands": BANDS,
                "head_dropout": 0.1,
                "necks": [{"name": "SelectIndices", "indices": [0, 1, 2, 3]},  # published: 5, 11, 17, 23
                          {"name": "ReshapeTokensToImage"}],
            },
            "model_factory": "EncoderDecoderFactory",
            "loss": "ce",
            "ignore_index": -1,
            "lr": 0.001,
            "freeze_backbone": False,
            "freeze_decoder": False,
            "plot_on_val": 10,
        },
    },
    "data": {
        "class_path": "terratorch.datamodules.GenericNonGeoSegmentationDataModule",
        "init_args": {
            "batch_size": 1, "num_workers": 0, "num_classes": 2,
            "dataset_bands": BANDS, "output_bands": BANDS, "rgb_indices": [2, 1, 0],
            "means": MEANS, "stds": STDS, "constant_scale": 1.0,
            "no_data_replace": 0, "no_label_replace": -1,
            "train_data_root": "data/S2L1CHand", "train_label_data_root": "data/LabelHand",
            "test_transform": [{"class_path": "albumentations.pytorch.transforms.ToTensorV2"}],
        },
    },
}
INPUT_SPEC = {"target": "pixel_values",
              "data": {"pixel_values": {"type": "torch.Tensor", "shape": [6, 512, 512]}}}

# Runs in the vLLM environment: build the model as TerraTorch 1.2.13 does, centre the last bias so both
# classes appear on the scene, predict it the IOProcessor's way (fp32), and save a 1.2.11-style checkpoint.
MAKE_CKPT = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np, rasterio, torch
from terratorch.tasks import SemanticSegmentationTask
cfg, scene, ckpt, expected = sys.argv[1:5]
cfg = json.loads(open(cfg).read())
torch.manual_seed(0)
ma = dict(cfg["model_args"]); ma["backbone_pretrained"] = False
ma.pop("decoder_scale_modules")
ma["necks"] = ma["necks"] + [{"name": "LearnedInterpolateToPyramidal"}]
task = SemanticSegmentationTask(model_factory="EncoderDecoderFactory", model_args=ma, loss="ce")
model = task.model.eval()
with rasterio.open(scene) as src:
    img = src.read().astype("float32")
img = img / 10000.0 if img.mean() > 1 else img
h, w = img.shape[1:]
ph, pw = (-h) % 512, (-w) % 512
x = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="reflect")
m = np.array(cfg["means"], "float32")[:, None, None]; s = np.array(cfg["stds"], "float32")[:, None, None]
x = torch.from_numpy((x - m) / s)[None]
def predict():
    out = np.zeros(x.shape[2:], "uint8")
    with torch.no_grad():
        for i in range(0, x.shape[2], 512):
            for j in range(0, x.shape[3], 512):
                out[i:i+512, j:j+512] = model(x[:, :, i:i+512, j:j+512]).output.argmax(1)[0].numpy()
    return out[:h, :w]
with torch.no_grad():
    logits = model(x[:, :, :512, :512]).output
    d = (logits[:, 1] - logits[:, 0]).flatten()
    model.head.head[-1].bias[1] -= d.median()
pred = predict()
np.save(expected, pred)
sd = {}
for k, v in task.state_dict().items():
    sd[k.replace("model.neck.2.", "model.decoder.")] = v  # where TerraTorch <= 1.2.11 kept scale modules
opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
torch.save({"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.6.6", "state_dict": sd,
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
            "hyper_parameters": {"model_args": cfg["model_args"], "lr": 1e-3}}, ckpt)
print("water fraction", float(pred.mean()))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prepared_folder_is_served_by_real_vllm(tmp_path):
    py = Settings().with_env().vllm_python
    if not Path(py).exists():
        pytest.skip(f"no vLLM environment at {py} (scripts/setup-vllm-env builds it)")
    scene = tmp_path / "scene.tif"
    scenes.generate_scene(scene, seed=31337, width=300, height=260, crs="EPSG:32633")
    cfg_json = tmp_path / "ckpt-cfg.json"
    cfg_json.write_text(json.dumps({"model_args": PUBLISHED_CONFIG["model"]["init_args"]["model_args"],
                                    "means": MEANS, "stds": STDS}))
    ckpt = tmp_path / "epoch=0-step=1.ckpt"
    expected = tmp_path / "expected.npy"
    made = subprocess.run([py, "-c", MAKE_CKPT, str(cfg_json), str(scene), str(ckpt), str(expected)],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert made.returncode == 0, made.stderr[-4000:]
    ref = np.load(expected)
    assert 0.05 < ref.mean() < 0.95, "the reference mask must hold both classes to prove anything"

    yml = tmp_path / "config.yaml"
    yml.write_text(yaml.safe_dump(PUBLISHED_CONFIG, sort_keys=False))
    out = tmp_path / "served-model"
    prep = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare-model"), "--ttconfig", str(yml),
                           "-i", json.dumps(INPUT_SPEC), "--weights", str(ckpt), "--out", str(out), "--fp16"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, FLOODMAPPER_VLLM_PYTHON=py))
    assert prep.returncode == 0, prep.stderr
    assert "WARNING model.init_args.model_args.decoder_scale_modules: dropped in TerraTorch 1.2.12" in prep.stderr
    assert "WARNING model.init_args.model_args.backbone_pretrained" in prep.stderr
    written = json.loads((out / "config.json").read_text())
    margs = written["pretrained_cfg"]["model"]["init_args"]["model_args"]
    assert "decoder_scale_modules" not in margs and margs["backbone_pretrained"] is False
    assert margs["necks"][-1] == {"name": "LearnedInterpolateToPyramidal"}

    port = _free_port()
    log = tmp_path / "serve.log"
    serve_out = tmp_path / "serve-out"
    serve_out.mkdir()
    proc = start_serve_demo(port, log, serve_out, env={"FLOODMAPPER_MODEL": str(out), "FLOODMAPPER_VLLM_PYTHON": py})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        model = requests.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        r = requests.post(url + "/pooling", timeout=600, json={
            "model": model, "softmax": False,
            "data": {"data": str(scene), "data_format": "path", "out_data_format": "b64_json",
                     "indices": [0, 1, 2, 3, 4, 5]}})
        assert r.status_code == 200, r.text[:2000]
        with MemoryFile(base64.b64decode(r.json()["data"]["data"])) as mem, mem.open() as ds:
            got = ds.read(1) == 255
        assert got.shape == ref.shape
        agreement = float((got == (ref == 1)).mean())
        print(f"\nserver vs local reference (fp16 vs fp32): {agreement:.4f} of pixels agree")
        assert agreement > 0.97, "the served model does not compute what the checkpoint holds"
    finally:
        stop_group(proc.pid)
