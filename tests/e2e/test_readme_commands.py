"""Every command README.md shows works as written, so the README and the code cannot drift apart.

The commands are read from README.md itself: each line of its code blocks (continuations joined, trailing
`# comments` dropped) and each inline `code` span that starts like a command. Each must match one entry of
KNOWN, which says how it is checked:

- run      run here for real, from the checkout (as the README says), on the demo model, with the README's
           placeholders (scene.tif, CONFIG.yaml, scenes/, http://127.0.0.1:8000 ...) pointing into a temporary
           folder or at this session's demo server;
- covered  another runnable command runs exactly it (checked in that command's script);
- suite    the test suite itself (this test is part of it): the Makefile target is checked;
- gpu      needs another host (a GPU, a Hugging Face download): the pinned requirements file is checked;
- host     changes the user's own QGIS Python: what it installs is pinned in requirements/qgis.txt instead;
- release  run before every release, not in CI (QGIS versions in chroots): the script and its target are checked;
- prose    names a program, with nothing to run.

A command the README gains that KNOWN does not match fails test_every_readme_command_is_known.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from plugin.core.settings import DEMO_MODEL_DIR, Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
COMMAND_START = re.compile(
    r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:sudo\s+)?"
    r"(?:make|pip3?|python3?(?:\.\d+)?|vllm|qgis_process(?:\.bin)?|apt(?:-get)?|bash|sh|git|curl|wget|docker|"
    r"scripts/\S+|\.venv/\S+|~/\S+|\./\S+|/\S+/python3?)(?:\s|$)"
)
BATCH = (r"~/\.local/share/floodmapper/vllm-env/bin/python -m plugin\.batch scenes/ --out floods/ "
         r"\[--recursive\] \[--model DIR\] \[--max-num-seqs 8\]")
REMOTE = (r"scripts/qgis-process run floodmapper:map_floods -- INPUT=scene\.tif BACKEND=0 "
          r"SERVER_URL=http://127\.0\.0\.1:8000 OUTPUT=flood\.tif")
PREPARE = r"scripts/prepare-model --ttconfig CONFIG\.yaml -i INPUT_SPEC --weights CKPT --out DIR"
LOCAL = r"scripts/qgis-process run floodmapper:map_floods -- INPUT=scene\.tif BACKEND=1 OUTPUT=flood\.tif"
OUTLINE = (r"scripts/qgis-process run floodmapper:flood_outline -- input=scene\.tif backend=1 "
           r"map_floods:flood_map=flood\.tif dissolve:flood_outline=outline\.gpkg")
BAND_FILES = (r"scripts/qgis-process run gdal:buildvirtualraster -- INPUT=B02_10m\.jp2 INPUT=B03_10m\.jp2 "
              r"INPUT=B04_10m\.jp2 INPUT=B8A_20m\.jp2 INPUT=B11_20m\.jp2 INPUT=B12_20m\.jp2 RESOLUTION=1 "
              r"SEPARATE=true OUTPUT=stack\.vrt")
AREA = (r'scripts/qgis-process run floodmapper:map_floods -- INPUT=stack\.vrt '
        r'"EXTENT=15\.20,15\.35,45\.10,45\.20 \[EPSG:4326\]" CLOUD_MASK=SCL_20m\.jp2 OFFSET=-0\.1 BACKEND=0 '
        r"SERVER_URL=http://127\.0\.0\.1:8000 OUTPUT=flood\.tif")
PRODUCT_ZIP = "S2B_MSIL2A_20240501T100031_N0510_R122_T33TWM_20240501T123456.zip"
PRODUCT = (rf"scripts/qgis-process run floodmapper:map_floods -- INPUT={re.escape(PRODUCT_ZIP)} "
           rf"CLOUD_MASK={re.escape(PRODUCT_ZIP)} BACKEND=0 SERVER_URL=http://127\.0\.0\.1:8000 OUTPUT=flood\.tif")
LANDSAT_SCENE = "LC09_L2SP_013032_20231008_20231009_02_T1"
LANDSAT = (rf"scripts/qgis-process run floodmapper:map_floods -- INPUT={LANDSAT_SCENE}_SR_B5\.TIF "
           rf"CLOUD_MASK={LANDSAT_SCENE}_QA_PIXEL\.TIF BACKEND=0 SERVER_URL=http://127\.0\.0\.1:8000 OUTPUT=flood\.tif")
REFERENCE_TEST = "tests/e2e/test_reference_model.py"
BATCH_PRODUCTS = r"\.venv/bin/python -m plugin\.batch downloads/ --out floods/ --clouds"
BATCH_TEST = "tests/e2e/test_batch.py"
# what a test that covers README commands must contain (it runs them with these)
COVERING_TESTS = {
    "tests/qgis/test_flood_outline_model.py": ["floodmapper:flood_outline"],
    BATCH_TEST: ['[sys.executable, "-m", "plugin.batch", str(downloads), "--out", str(out)', '"--clouds"'],
    REFERENCE_TEST: ['"make-reference-model"', '"--dtype", DTYPE', "start_server(", '["--tensor"]',
                     '"--served-model-name", SERVED_NAME', 'SERVED_NAME = "prithvi-reference"'],
}
KNOWN = [  # (full-match pattern, kind, what checks it)
    (BAND_FILES, "run", "test_band_files_to_a_flood_map_of_an_area"),
    (AREA, "run", "test_band_files_to_a_flood_map_of_an_area"),
    (PRODUCT, "run", "test_a_downloaded_product_to_a_flood_map"),
    (LANDSAT, "run", "test_one_band_file_of_a_landsat_scene_to_a_flood_map"),
    (r"make demo", "run", "test_make_demo_and_batch_on_a_folder"),
    (r"make package", "run", "test_make_package"),
    (r"scripts/qgis-process help floodmapper:map_floods", "run", "test_qgis_process_help"),
    (REMOTE, "run", "test_serve_demo_serves_and_qgis_process_maps_remotely"),
    (r"scripts/serve-demo", "run", "test_serve_demo_serves_and_qgis_process_maps_remotely, test_serve_demo_ctrl_c"),
    (PREPARE, "run", "test_prepare_model"),
    (BATCH, "run", "test_make_demo_and_batch_on_a_folder"),
    (BATCH_PRODUCTS, "covered", BATCH_TEST),
    (LOCAL, "covered", "make demo (scripts/demo)"),
    (r"make setup", "covered", "make demo"),
    (r"python3 -m venv --system-site-packages", "covered", "make setup (scripts/setup)"),
    (r"make test", "suite", "test"),
    (r"make test-quick", "suite", "test-quick"),
    (r"vllm serve ibm-nasa-geospatial/Prithvi-EO-2\.0-300M-TL-Sen1Floods11 --model-impl terratorch --dtype float16 "
     r"--io-processor-plugin terratorch_segmentation --skip-tokenizer-init --enforce-eager --enable-mm-embeds"
     r"(?: --host 0\.0\.0\.0 --port 8000)?", "gpu", "a GPU host with the 300M model from Hugging Face"),
    (OUTLINE, "covered", "tests/qgis/test_flood_outline_model.py"),
    (r"make test-qgis-versions", "release", "test-qgis-versions"),
    (r"scripts/test-qgis-versions(?: --shell trixie)?", "release", "test-qgis-versions"),
    (r"vllm serve --dtype auto", "prose", "vLLM's automatic dtype, named"),
    (r"pip install vllm terratorch", "gpu", "a GPU host's vLLM environment"),
    (r"pip install pybase64", "host", "pybase64"),
    (r"scripts/make-reference-model DIR \[--dtype float32\|float16\|bfloat16\]", "covered", REFERENCE_TEST),
    (r"FLOODMAPPER_MODEL=DIR scripts/serve-demo --tensor --dtype float32 --served-model-name prithvi-reference",
     "covered", REFERENCE_TEST),
    (r"pip install huggingface_hub", "gpu", "a Hugging Face download of the 300M model"),
    (r"huggingface-cli download ibm-nasa-geospatial/Prithvi-EO-2\.0-300M-TL-Sen1Floods11 "
     r"--local-dir Prithvi-EO-2\.0-300M-TL-Sen1Floods11", "gpu", "a Hugging Face download of the 300M model"),
    (r"vllm serve \./Prithvi-EO-2\.0-300M-TL-Sen1Floods11 --served-model-name prithvi-sen1floods11 "
     r"--model-impl terratorch --skip-tokenizer-init --enforce-eager --enable-mm-embeds --dtype float16 "
     r"\[--io-processor-plugin terratorch_segmentation\]", "gpu", "a host with the 300M model from Hugging Face"),
    (r"vllm serve", "prose", "vLLM's server command, named"),
]
SPEC = '{"target": "pixel_values", "data": {"pixel_values": {"type": "torch.Tensor", "shape": [6, 256, 256]}}}'


@dataclass(frozen=True)
class Command:
    text: str
    where: str  # "README.md:LINE"


def readme_commands(text: str) -> list[Command]:
    """Code-block lines (fenced or indented) and command-like inline code spans, in README order."""
    commands: list[Command] = []
    lines = text.splitlines()
    in_fence = in_block = False
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        indented = line.startswith("    ") and line.strip() != ""
        previous_blank = number == 1 or lines[number - 2].strip() == ""
        if in_fence or (indented and (in_block or previous_blank)):
            in_block = indented
            code = re.sub(r"\s+#\s.*$", "", line.strip())  # a trailing comment (never a URL's #anchor)
            if not pending:
                start = number
            pending = f"{pending} {code}".strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            if pending:
                commands.append(Command(re.sub(r"\s+", " ", pending), f"README.md:{start}"))
            pending = ""
            continue
        in_block = False
        for span in re.findall(r"`([^`\n]+)`", line):
            span = span.strip()
            if COMMAND_START.match(span) and (" " in span or span.startswith(("scripts/", "./"))):
                commands.append(Command(span, f"README.md:{number}"))
    return commands


def classify(command: Command) -> tuple[str, str, str]:
    for pattern, kind, what in KNOWN:
        if re.fullmatch(pattern, command.text):
            return pattern, kind, what
    raise LookupError(command)


def readme_command(pattern: str) -> str:
    """The README's text of the command KNOWN's `pattern` stands for (fails if the README dropped it)."""
    found = [c.text for c in readme_commands(README.read_text()) if re.fullmatch(pattern, c.text)]
    assert found, f"README.md no longer shows a command matching {pattern!r}"
    return found[0]


def start(command: str, substitutions: dict[str, str], tmp_path: Path, env: dict | None = None) -> tuple:
    """The README command with its placeholders filled in, started by bash from the checkout."""
    for placeholder, value in substitutions.items():
        assert placeholder in command, (placeholder, command)
        command = command.replace(placeholder, value)
    environ = dict(os.environ, QT_QPA_PLATFORM="offscreen", FLOODMAPPER_QGIS_STATE=str(tmp_path / "qgis-state"),
                   **(env or {}))
    proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    return command, proc, time.monotonic()


def finish(started: tuple, timeout: float) -> str:
    """Wait for a started command; its stdout, after asserting it succeeded (its process group is ended)."""
    command, proc, t0 = started
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of it may outlive the test
        except ProcessLookupError:
            pass
    print(f"$ {command}\n  exit {proc.returncode} in {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, f"{command}\n{out[-3000:]}\n{err[-3000:]}"
    return out


def run(command: str, substitutions: dict[str, str], tmp_path: Path, timeout: float, env: dict | None = None) -> str:
    return finish(start(command, substitutions, tmp_path, env), timeout)


# --- every command is known, and the ones not run here are checked otherwise -----------------------------------

def test_every_readme_command_is_known():
    commands = readme_commands(README.read_text())
    unknown = []
    used = set()
    for command in commands:
        try:
            used.add(classify(command)[0])
        except LookupError:
            unknown.append(f"{command.where}: {command.text}")
    assert unknown == [], ("README.md shows commands this test does not know; add each to KNOWN with how it "
                           "is checked:\n" + "\n".join(unknown))
    stale = [pattern for pattern, _, _ in KNOWN if pattern not in used]
    assert stale == [], f"KNOWN lists commands README.md no longer shows: {stale}"
    assert len(commands) >= 15  # the extraction itself works (blocks, continuations, inline spans)


def test_commands_not_run_here_are_checked_where_they_live():
    makefile = (ROOT / "Makefile").read_text()
    for _pattern, kind, what in KNOWN:
        if kind == "suite":
            assert re.search(rf"^{re.escape(what)}:", makefile, re.M), f"no Makefile target {what}"
        if kind == "host":
            assert re.search(rf"^{what}==", (ROOT / "requirements" / "qgis.txt").read_text(), re.M)
        if kind == "release":
            assert re.search(rf"^{re.escape(what)}:", makefile, re.M), f"no Makefile target {what}"
            assert "--shell" in (ROOT / "scripts" / "test-qgis-versions").read_text()
        if kind == "covered" and what.startswith("tests/"):
            text = (ROOT / what).read_text()
            for needed in COVERING_TESTS[what]:
                assert needed in text, f"{what} no longer runs the README's command with {needed}"
    assert re.search(r"^demo: setup$", makefile, re.M), "make demo no longer runs make setup"
    assert "-m venv --system-site-packages .venv" in (ROOT / "scripts" / "setup").read_text()
    gpu = (ROOT / "requirements" / "vllm-gpu.txt").read_text()
    assert re.search(r"^vllm==", gpu, re.M) and re.search(r"^terratorch==", gpu, re.M)
    local = readme_command(LOCAL).replace("scene.tif", '"$out/scene.tif"').replace("flood.tif", '"$out/flood.tif"')
    # the demo adds the pre-event image (the flood extent) to the README's command
    demo = re.sub(r'\s+PRE_EVENT="[^"]*"\s*\\\n\s*', " ", (ROOT / "scripts" / "demo").read_text())
    assert local in demo, "make demo no longer runs the README's BACKEND=1 command"


def test_extraction_reads_blocks_continuations_comments_and_spans():
    text = ("Intro `make package` and `vllm` and `config.json`.\n\n    make demo    # comment\n    a \\\n"
            "      b --x\n\n```\nscripts/serve-demo --tensor\n```\n")
    assert [c.text for c in readme_commands(text)] == ["make package", "make demo", "a b --x",
                                                       "scripts/serve-demo --tensor"]
    with pytest.raises(LookupError):
        classify(Command("make clean-everything", "x"))


# --- run for real ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared_model(tmp_path_factory) -> Path:
    """The README's prepare-model command on the demo model's own training config and weights."""
    tmp = tmp_path_factory.mktemp("prepare")
    out = tmp / "model"
    run(readme_command(PREPARE), {
        "CONFIG.yaml": str(DEMO_MODEL_DIR / "training.yaml"), "INPUT_SPEC": shlex.quote(SPEC),
        "CKPT": str(DEMO_MODEL_DIR / "model.safetensors"), "DIR": str(out)}, tmp, 300)
    return out


def test_prepare_model(prepared_model):
    config = json.loads((prepared_model / "config.json").read_text())
    demo = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["pretrained_cfg"] == demo["pretrained_cfg"]
    weights = prepared_model / "model.safetensors"
    assert weights.stat().st_size == (DEMO_MODEL_DIR / "model.safetensors").stat().st_size


def test_make_package(tmp_path):
    run(readme_command(r"make package"), {}, tmp_path, 300, env={"DIST": str(tmp_path / "dist")})
    (zip_path,) = (tmp_path / "dist").glob("floodmapper-*.zip")
    assert zip_path.stat().st_size > 1_000_000


def test_qgis_process_help(tmp_path):
    out = run(readme_command(r"scripts/qgis-process help floodmapper:map_floods"), {}, tmp_path, 300)
    for name in ("INPUT", "BACKEND", "SERVER_URL", "MODEL_SPEC", "OUTPUT", "WATER_AREA_KM2"):
        assert name in out, name


def _scene(path: Path, seed: int, size: int = 256) -> Path:
    from scripts import scenes

    path.parent.mkdir(parents=True, exist_ok=True)
    scenes.generate_scene(path, seed=seed, width=size, height=size)
    return path


@pytest.mark.vllm
def test_serve_demo_serves_and_qgis_process_maps_remotely(vllm_server, tmp_path):
    """The session's image-to-image server is scripts/serve-demo (its log starts with the script's banner)."""
    assert vllm_server.log.read_text().startswith("serve-demo: "), "the demo server was not started by serve-demo"
    scene = _scene(tmp_path / "scene.tif", seed=9101)
    run(readme_command(REMOTE), {"scene.tif": str(scene), "flood.tif": str(tmp_path / "flood.tif"),
                                 "http://127.0.0.1:8000": vllm_server.url}, tmp_path, 600)
    assert (tmp_path / "flood.tif").is_file() and (tmp_path / "flood.qml").is_file()


@pytest.mark.vllm
def test_band_files_to_a_flood_map_of_an_area(vllm_server, tmp_path):
    """Sentinel-2 L2A band files as downloaded (B02-B04 at 10 m; B8A, B11, B12 and SCL at 20 m; reflectance x 10000
    + 1000, as since processing baseline 04.00) -> the README's VRT -> a flood map of an extent, clouds left out."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform as warp_transform

    from scripts.scenes import iou, synthesize

    refl, truth = synthesize(9401, 384, 320)  # BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2
    dn = (np.rint(refl * 10000) + 1000).clip(1, 65535).astype(np.uint16)
    x0, y0 = 500000.0, 4990000.0
    names = {}
    for i, band in enumerate(("B02_10m", "B03_10m", "B04_10m", "B8A_20m", "B11_20m", "B12_20m", "SCL_20m")):
        if band == "SCL_20m":
            data = np.full((160, 192), 4, np.uint8)
            data[100:130, 20:80] = 9  # a cloud
        elif band.endswith("20m"):
            data = dn[i].reshape(160, 2, 192, 2).mean(axis=(1, 3)).astype(np.uint16)
        else:
            data = dn[i]
        px = 10 if band.endswith("10m") else 20
        path = tmp_path / f"T33TWM_20240501T100031_{band}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                           dtype=data.dtype, crs="EPSG:32633", transform=from_origin(x0, y0, px, px)) as dst:
            dst.write(data, 1)
        names[f"{band}.jp2"] = str(path)
    vrt = tmp_path / "stack.vrt"
    run(readme_command(BAND_FILES), {**{k: v for k, v in names.items() if k != "SCL_20m.jp2"},
                                     "stack.vrt": str(vrt)}, tmp_path, 300)
    # the extent: pixels 40-296 x 30-286 of the stack, in lon/lat
    (lon0, lon1), (lat1, lat0) = warp_transform("EPSG:32633", "EPSG:4326", [x0 + 400.5, x0 + 2959.5],
                                                [y0 - 300.5, y0 - 2859.5])
    out = tmp_path / "flood.tif"
    stdout = run(readme_command(AREA), {"stack.vrt": str(vrt), "SCL_20m.jp2": names["SCL_20m.jp2"],
                                        "15.20,15.35,45.10,45.20": f"{lon0!r},{lon1!r},{lat0!r},{lat1!r}",
                                        "http://127.0.0.1:8000": vllm_server.url, "flood.tif": str(out)},
                 tmp_path, 600)
    with rasterio.open(out) as ds:
        classes, t = ds.read(1), ds.transform
    col, row = round((t.c - x0) / 10), round((y0 - t.f) / 10)
    assert (t.c - x0) / 10 == col and (y0 - t.f) / 10 == row and 38 <= col <= 40 and 28 <= row <= 30
    h, w = classes.shape
    assert 256 <= w <= 260 and 256 <= h <= 260
    cloud = np.zeros(truth.shape, bool)
    cloud[200:260, 40:160] = True  # the SCL cloud at 10 m
    cloud = cloud[row:row + h, col:col + w]
    np.testing.assert_array_equal(classes == 255, cloud)
    assert f"CLOUD_PIXELS:\t{int(cloud.sum())}" in stdout, stdout[-2000:]
    assert iou(classes, np.where(cloud, 255, truth[row:row + h, col:col + w])) >= 0.85


@pytest.mark.vllm
def test_a_downloaded_product_to_a_flood_map(vllm_server, tmp_path):
    """A Sentinel-2 L2A product's .zip as the Copernicus Data Space delivers it (B02-B04 at 10 m; B8A, B11, B12 and
    SCL at 20 m; reflectance x 10000 + 1000) -> the README's one command -> a flood map, clouds left out."""
    import numpy as np
    import rasterio

    from scripts.scenes import iou, synthesize
    from tests.fixtures.sentinel2_safe import NAME, write_l2a

    assert PRODUCT_ZIP == f"{NAME}.zip"
    refl, truth = synthesize(9402, 384, 324)  # BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2 = B02 ... B12
    dn = (np.rint(refl * 10000) + 1000).clip(1, 65535).astype(np.uint16)
    scl = np.full((162, 192), 4, np.uint8)
    scl[100:130, 20:80] = 9  # a cloud
    archive = write_l2a(tmp_path / "download", dn, scl=scl, zipped=True)
    out = tmp_path / "flood.tif"
    stdout = run(readme_command(PRODUCT), {PRODUCT_ZIP: str(archive), "http://127.0.0.1:8000": vllm_server.url,
                                           "flood.tif": str(out)}, tmp_path, 600)
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    cloud = np.zeros(truth.shape, bool)
    cloud[200:260, 40:160] = True  # the SCL cloud at 10 m
    np.testing.assert_array_equal(classes == 255, cloud)
    assert f"CLOUD_PIXELS:\t{int(cloud.sum())}" in stdout, stdout[-2000:]
    assert iou(classes, np.where(cloud, 255, truth)) >= 0.85


def test_one_band_file_of_a_landsat_scene_to_a_flood_map(vllm_server, tmp_path):
    """A Landsat 9 Collection 2 Level-2 scene as USGS delivers it (SR_B1-SR_B7 band files at 30 m, values
    (reflectance + 0.2) / 0.0000275, a QA_PIXEL band of bit flags) -> the README's one command on its SR_B5 file ->
    a flood map of the whole scene, clouds left out, the band files unchanged."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from scripts.scenes import iou, synthesize
    from tests.fixtures.landsat_values import as_collection2

    refl, truth = synthesize(9603, 256, 224)  # BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2
    folder = tmp_path / "download"
    folder.mkdir()
    qa = np.full(truth.shape, 21824, np.uint16)  # clear land: flags, none of them cloud
    qa[:32, :64] |= 1 << 3  # cloud
    bands = {f"SR_B{b}": data for b, data in enumerate(as_collection2(np.concatenate([refl[:1], refl])), start=1)}
    for name, data in {**bands, "QA_PIXEL": qa}.items():
        with rasterio.open(folder / f"{LANDSAT_SCENE}_{name}.TIF", "w", driver="GTiff", width=256, height=224,
                           count=1, dtype="uint16", nodata=1 if name == "QA_PIXEL" else 0, crs="EPSG:32618",
                           transform=from_origin(500000.0, 4500000.0, 30, 30)) as dst:
            dst.write(data, 1)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "flood.tif"
    stdout = run(readme_command(LANDSAT), {
        f"{LANDSAT_SCENE}_SR_B5.TIF": str(folder / f"{LANDSAT_SCENE}_SR_B5.TIF"),
        f"{LANDSAT_SCENE}_QA_PIXEL.TIF": str(folder / f"{LANDSAT_SCENE}_QA_PIXEL.TIF"),
        "http://127.0.0.1:8000": vllm_server.url, "flood.tif": str(out)}, tmp_path, 600)
    with rasterio.open(out) as ds:
        classes, transform = ds.read(1), ds.transform
    assert transform == from_origin(500000.0, 4500000.0, 30, 30)
    cloud = np.zeros(truth.shape, bool)
    cloud[:32, :64] = True
    np.testing.assert_array_equal(classes == 255, cloud)
    assert f"CLOUD_PIXELS:\t{int(cloud.sum())}" in stdout, stdout[-2000:]
    assert iou(classes, np.where(cloud, 255, truth)) >= 0.85
    assert {name: (folder / name).read_bytes() for name in before} == before  # QGIS may add .aux.xml statistics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.vllm
@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_serve_demo_ctrl_c(tmp_path, presses):
    """`scripts/serve-demo` in the foreground; Ctrl-C (SIGINT to its process group, as a terminal sends it) stops
    it and the vLLM process group it started, even while vLLM is still starting, and removes its folders. A
    second Ctrl-C while the first one waits for vLLM to stop kills vLLM at once, and removes the folders too."""
    command = readme_command(r"scripts/serve-demo")
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        # SIGINT at its default, as a terminal's shell starts a command: tests run as a background job ignore it,
        # and a shell cannot trap a signal that was ignored when it started
        proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                                env=dict(os.environ, PORT=str(_free_port())))
    try:
        deadline = time.monotonic() + 120
        group = None
        while group is None:
            match = re.search(r"serve-demo: vLLM process group (\d+)", log.read_text())
            group = int(match.group(1)) if match else None
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        time.sleep(5)  # vLLM is importing by now
        os.killpg(proc.pid, signal.SIGINT)
        if presses == 2:
            time.sleep(0.05)  # the script is waiting for vLLM's group to go (it checks every 0.2 s)
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass  # it was quicker than that
        assert proc.wait(timeout=60) == 130, log.read_text()
        try:
            os.killpg(group, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, "Ctrl-C left vLLM's process group running"
        out_dir = re.search(r"IOProcessor outputs in (\S+)", log.read_text()).group(1)
        assert not Path(out_dir).exists(), "serve-demo left its output folder behind"
        vllm_tmp = re.search(r"vLLM's temporary files in (\S+)", log.read_text()).group(1)
        assert not Path(vllm_tmp).exists(), "serve-demo left vLLM's temporary folder behind"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if group:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.vllm
@pytest.mark.engine
def test_make_demo_and_batch_on_a_folder(prepared_model, tmp_path):
    """The two commands that start a vLLM engine of their own, side by side (each start is mostly one core's
    work). The batch line runs with its optional --model pointing at the model prepare-model just wrote."""
    out = tmp_path / "demo"
    demo = start(readme_command(r"make demo"), {}, tmp_path, env={"OUT": str(out)})
    scenes = tmp_path / "scenes"
    _scene(scenes / "a.tif", seed=9201)
    _scene(scenes / "b.tif", seed=9202, size=200)
    (scenes / "notes.txt").write_text("not a raster")
    floods = tmp_path / "floods"
    settings = Settings().with_env()
    substitutions = {"scenes/": f"{scenes}/", "floods/": f"{floods}/", "[--recursive] ": "",
                     "[--model DIR]": f"--model {prepared_model}", "[--max-num-seqs 8]": "--max-num-seqs 8"}
    if os.path.expanduser("~/.local/share/floodmapper/vllm-env/bin/python") != settings.vllm_python:
        substitutions["~/.local/share/floodmapper/vllm-env/bin/python"] = settings.vllm_python  # FLOODMAPPER_HOME
    batch = start(readme_command(BATCH), substitutions, tmp_path / "batch")
    batch_out = finish(batch, 1200)
    demo_out = finish(demo, 1200)
    assert "Done: 2 of 2 raster(s) mapped, 0 failed" in batch_out, batch_out[-2000:]
    assert sorted(p.name for p in floods.iterdir()) == ["a_flood.tif", "b_flood.tif", "flood_maps.csv"]
    for name in ("scene.tif", "flood.tif", "flood.qml", "flood.png"):
        assert (out / name).is_file(), (name, demo_out[-2000:])
    assert "WATER_AREA_KM2" in demo_out
