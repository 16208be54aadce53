"""`make package` builds a zip of runtime files that installs into a fresh QGIS profile and loads."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_zip_installs_into_fresh_profile(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), str(tmp_path / "dist")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (zip_path,) = (tmp_path / "dist").glob("floodmapper-*.zip")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        meta = zf.read("floodmapper/metadata.txt").decode()
    assert "floodmapper/__init__.py" in names and "floodmapper/metadata.txt" in names
    assert "floodmapper/plugin/processing/map_floods.py" in names
    assert "floodmapper/ui/options.ui" in names
    assert not [n for n in names if n.startswith(("floodmapper/tests/", "floodmapper/benchmarks/", "floodmapper/.ci"))]
    assert not [n for n in names if ".venv" in n or "__pycache__" in n]
    assert "version=0.1.0" in meta

    # a fresh profile with the zip extracted where QGIS's plugin installer puts it
    profile_root = tmp_path / "qgis-config"
    plugins = profile_root / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(plugins)
    ini = profile_root / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nfloodmapper=true\n")
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(profile_root), PYTHONPATH=str(site),
               QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path / "rt"))
    env.pop("QGIS_PLUGINPATH", None)
    (tmp_path / "rt").mkdir(mode=0o700)
    listing = subprocess.run(["qgis_process.bin", "list"], capture_output=True, text=True, env=env, timeout=300)
    assert "floodmapper:map_floods" in listing.stdout, listing.stdout[-2000:] + listing.stderr[-2000:]
    assert "floodmapper:prepare_model" in listing.stdout
