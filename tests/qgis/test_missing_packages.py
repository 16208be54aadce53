"""Without numpy, rasterio and requests (nor the optional pybase64) in QGIS's Python the plugin loads, says what is
missing, and its Install button really installs the pinned packages with pip into the profile (PyPI through this
machine's pip set-up).

Each phase is a separate QGIS process (pytest with pytest-qgis, no conftest) in which those modules cannot be
imported from anywhere but the plugin's package folder: tests/qgis/cases_without_packages.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugin.core import dependencies as deps

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "qgis" / "cases_without_packages.py"
BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "from tests.fixtures.import_blocker import boot_pytest; boot_pytest()")


def _phase(phase: str, workdir: Path, scene: Path) -> str:
    plugins = workdir / "plugins"
    plugins.mkdir(exist_ok=True)
    if not (plugins / "floodmapper").exists():
        (plugins / "floodmapper").symlink_to(ROOT, target_is_directory=True)
    ini = workdir / "pytest.ini"  # -c makes workdir the rootdir: pytest-qgis keeps its profile there
    ini.write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    env = dict(os.environ, FLOODMAPPER_TEST_PHASE=phase, FLOODMAPPER_TEST_SCENE=str(scene),
               FLOODMAPPER_TEST_PLUGINS=str(plugins), FLOODMAPPER_TEST_BLOCK="numpy,rasterio,requests,pybase64",
               FLOODMAPPER_TEST_ALLOW=str(workdir / ".qgis-settings"), QT_QPA_PLATFORM="offscreen")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", BOOT, str(ROOT), "-c", str(ini), "--noconftest", "-q", "-s", "-rs",
         "-p", "no:cacheprovider", str(CASES)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1200,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


@pytest.mark.qgis_versions
def test_plugin_without_packages_loads_installs_and_reloads(tmp_path):
    from scripts import scenes

    scene = tmp_path / "scene.tif"
    scenes.generate_scene(scene, seed=7, width=64, height=64)
    t0 = time.monotonic()
    out = _phase("install", tmp_path, scene)
    print(out[-1500:])
    assert re.search(r"\b6 passed\b", out), out[-3000:]
    t1 = time.monotonic()
    folder = next((tmp_path / ".qgis-settings").rglob("floodmapper/python*"))
    installed = sorted(p.name for p in folder.glob("*.dist-info"))
    names = {n.split("-")[0] for n in installed}
    # the four blocked packages, and of their dependencies only those this QGIS lacks in a version that works
    # (Debian sid's affine 3 and no cligj: the pinned rasterio 1.4 brings affine 2 and cligj along)
    requirements = [r for need in deps.NEEDS for r in need.requirements] + list(deps.SPEEDUPS)
    dependencies = {deps.normalize(r.distribution).replace("-", "_") for r in requirements}
    assert {"numpy", "rasterio", "requests", "pybase64"} <= names and names <= dependencies, installed
    out = _phase("reload", tmp_path, scene)
    assert re.search(r"\b1 passed\b", out), out[-3000:]
    print(f"install phase {t1 - t0:.1f} s, reload phase {time.monotonic() - t1:.1f} s")
