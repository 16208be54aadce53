"""Finding QGIS's Python on each platform, and installing with the real pip into a folder (PyPI through this
machine's pip configuration): success, replacement of an older copy, failure, cancel, unusable packages."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from plugin.core import pip_installer as pi
from plugin.core.dependencies import DependencyError, Pin
from plugin.core.errors import Cancelled
from plugin.core.progress import NullProgress

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_candidates_windows_qgis():
    found = pi.python_candidates(
        executable=r"C:\Program Files\QGIS 3.40.4\bin\qgis-bin.exe",
        exec_prefix=r"C:\PROGRA~1\QGIS34~1.4\apps\Python312", base_exec_prefix=r"C:\PROGRA~1\QGIS34~1.4\apps\Python312",
        platform="win32", version=(3, 12))
    assert found[0] == r"C:\PROGRA~1\QGIS34~1.4\apps\Python312\python.exe"
    assert r"C:\Program Files\QGIS 3.40.4\bin\python.exe" in found
    assert not any(c.endswith("qgis-bin.exe") for c in found)


def test_candidates_macos_bundle():
    found = pi.python_candidates(
        executable="/Applications/QGIS-LTR.app/Contents/MacOS/QGIS",
        exec_prefix="/Applications/QGIS-LTR.app/Contents/Frameworks/Python.framework/Versions/3.9",
        base_exec_prefix="/Applications/QGIS-LTR.app/Contents/Frameworks/Python.framework/Versions/3.9",
        platform="darwin", version=(3, 9))
    assert found[0] == "/Applications/QGIS-LTR.app/Contents/Frameworks/Python.framework/Versions/3.9/bin/python3.9"
    assert "/Applications/QGIS-LTR.app/Contents/MacOS/bin/python3.9" in found
    assert "/Applications/QGIS-LTR.app/Contents/MacOS/QGIS" not in found


def test_candidates_linux_and_venv():
    assert pi.python_candidates("/usr/bin/qgis", "/usr", "/usr", "linux", (3, 11))[0] == "/usr/bin/python3.11"
    assert pi.python_candidates("/x/.venv/bin/python", "/x/.venv", "/usr", "linux", (3, 11))[0] == "/x/.venv/bin/python"


def test_find_python_skips_what_is_missing_or_another_version(tmp_path):
    other = tmp_path / "python3"
    other.write_text("#!/bin/sh\necho 3.7\n")
    other.chmod(other.stat().st_mode | stat.S_IEXEC)
    assert pi.find_python([str(tmp_path / "nothing"), str(other), sys.executable]) == sys.executable
    with pytest.raises(DependencyError, match=r"not found; tried .*python3 \(Python 3.7\)"):
        pi.find_python([str(other)])


def test_pip_command_is_exact_and_private(tmp_path):
    cmd = pi.pip_command("/usr/bin/python3", tmp_path, [Pin("rasterio", "1.4.4"), Pin("affine", "2.4.0")])
    assert cmd[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert cmd[cmd.index("--target") + 1] == str(tmp_path)
    assert cmd[-2:] == ["rasterio==1.4.4", "affine==2.4.0"]
    assert pi.command_text(["/a b/python", "-m", "pip"]) == '"/a b/python" -m pip'


def test_progress_from_pip_output():
    meter = pi.PipProgress(2)
    seen = [meter.feed(line) for line in [
        "Collecting affine==2.4.0", "  Downloading affine-2.4.0-py3-none-any.whl (15 kB)",
        "Collecting cligj==0.7.2", "  Using cached cligj-0.7.2-py3-none-any.whl (7.1 kB)",
        "Installing collected packages: cligj, affine", "Successfully installed affine-2.4.0 cligj-0.7.2"]]
    assert seen == [0.0, 35.0, 35.0, 70.0, 80.0, 90.0]


def test_run_pip_cancel_stops_the_process_quickly_and_leaves_no_temporary_files():
    lines = []
    t0 = time.monotonic()
    # like pip: its downloads and unpacked wheels go to the temporary directory, removed only if it ends normally
    script = ("import tempfile, time; d = tempfile.mkdtemp(prefix='pip-unpack-'); "
              "open(d + '/rasterio.whl.part', 'wb').write(b'x' * 4096); print(d, flush=True); time.sleep(60)")
    with pytest.raises(Cancelled):
        pi.run_pip([sys.executable, "-c", script], lines.append, lambda: bool(lines))
    assert time.monotonic() - t0 < 10 and len(lines) == 1
    assert Path(lines[0]).name.startswith("pip-unpack-")
    assert not Path(lines[0]).exists(), "pip's temporary files must go when it is stopped"
    assert not Path(lines[0]).parent.exists(), "and the run's temporary folder with them"


def _temporary_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(("pip-", "floodmapper-pip-"))}


class Recorder(NullProgress):
    def __init__(self, cancel_at: float | None = None) -> None:
        self.percents: list[float] = []
        self.cancel_at = cancel_at

    def set_progress(self, percent: float) -> None:
        self.percents.append(percent)

    def is_canceled(self) -> bool:
        return self.cancel_at is not None and bool(self.percents) and self.percents[-1] >= self.cancel_at


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_install_for_real_then_replace_then_fail_then_cancel(tmp_path):
    temporary_before = _temporary_folders()
    folder = tmp_path / "profile" / "floodmapper" / "python-x"
    progress = Recorder()
    out = pi.install([Pin("affine", "2.3.1"), Pin("cligj", "0.7.2")], folder, ["affine", "cligj"],
                     python=sys.executable, progress=progress)
    assert {"affine", "cligj", "affine-2.3.1.dist-info", "cligj-0.7.2.dist-info"} <= set(_listing(folder))
    assert Path(out.modules["affine"]).is_relative_to(folder)
    assert progress.percents[-1] == 100 and progress.percents == sorted(progress.percents)
    check = subprocess.run([sys.executable, "-c", "import sys, affine; sys.stdout.write(affine.__version__ + ' '"
                            " + affine.__file__)"], env=dict(os.environ, PYTHONPATH=str(folder)),
                           capture_output=True, text=True)
    assert check.stdout.startswith("2.3.1 " + str(folder)), check.stdout + check.stderr

    pi.install([Pin("affine", "2.4.0")], folder, ["affine"], python=sys.executable)
    assert [n for n in _listing(folder) if n.startswith("affine-")] == ["affine-2.4.0.dist-info"]
    before = _listing(folder)

    with pytest.raises(DependencyError, match=r"pip could not install affine==0\.0\.0"):
        pi.install([Pin("affine", "0.0.0")], folder, ["affine"], python=sys.executable)
    assert _listing(folder) == before

    with pytest.raises(DependencyError, match="do not import in QGIS's Python: fm_not_a_module"):
        pi.install([Pin("affine", "2.3.1")], folder, ["fm_not_a_module"], python=sys.executable)
    assert _listing(folder) == before

    with pytest.raises(Cancelled):
        pi.install([Pin("affine", "2.3.1")], folder, ["affine"], python=sys.executable,
                   progress=Recorder(cancel_at=0.0))
    assert _listing(folder) == before
    assert _listing(folder.parent) == [folder.name], "no staging folder left behind"
    assert _temporary_folders() - temporary_before == set(), "no temporary folder of pip's left behind"
