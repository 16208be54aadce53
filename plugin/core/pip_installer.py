"""Install pinned packages into the plugin's folder with QGIS's own Python and pip (QGIS-free).

QGIS's `sys.executable` is often QGIS itself (qgis-bin.exe on Windows, QGIS.app/Contents/MacOS/QGIS on macOS,
/usr/bin/qgis on some Linux builds), so the interpreter is looked for beside the running Python's prefix and
accepted only if it reports the same major.minor version: pip must pick wheels for the Python that imports
them. pip runs as a child process (`--no-deps --only-binary=:all: --target`), into a private staging folder
that is merged into the plugin's folder only after pip succeeded and the new packages imported in a fresh
interpreter; a failure or a cancel leaves the folder as it was.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Callable, Optional

from .dependencies import DependencyError, Pin, normalize
from .errors import Cancelled
from .progress import NullProgress, Progress

PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)?)?(\.exe)?$", re.IGNORECASE)
NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # Windows: no console window flashes up
VERSION_SCRIPT = "import sys; print('%d.%d' % sys.version_info[:2])"
VERIFY_SCRIPT = """
import importlib, json, sys
sys.path[0:0] = [p for p in sys.argv[1:3] if p]
result = {}
for name in sys.argv[3:]:
    try:
        module = importlib.import_module(name)
        result[name] = {"ok": True, "file": getattr(module, "__file__", "") or ""}
    except Exception as exc:
        result[name] = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
print(json.dumps(result))
"""


def python_candidates(executable: str = sys.executable, exec_prefix: str = sys.exec_prefix,
                      base_exec_prefix: str = getattr(sys, "base_exec_prefix", sys.exec_prefix),
                      platform: str = sys.platform, version: tuple[int, ...] = tuple(sys.version_info[:2])
                      ) -> list[str]:
    """Interpreters that may be QGIS's Python, best first (not yet checked to exist or to match)."""
    windows = platform.startswith("win")
    path = PureWindowsPath if windows else PurePosixPath
    exe = path(executable) if executable else None
    names: list[PurePath] = []
    if exe is not None and PYTHON_NAME.match(exe.name):
        names.append(exe)
    if windows:  # OSGeo4W and the standalone installer: <root>/apps/Python3XX/python.exe is sys.exec_prefix
        for base in (exec_prefix, base_exec_prefix, str(exe.parent) if exe else ""):
            if base:
                names += [path(base) / "python.exe", path(base) / "python3.exe"]
    else:
        versioned = f"python{version[0]}.{version[1]}"
        for base in (exec_prefix, base_exec_prefix):
            names += [path(base) / "bin" / versioned, path(base) / "bin" / "python3"]
        if exe is not None:  # macOS: QGIS.app/Contents/MacOS/QGIS beside QGIS.app/Contents/MacOS/bin/python3
            names += [exe.parent / "bin" / versioned, exe.parent / "bin" / "python3", exe.parent / versioned]
    unique: list[str] = []
    for name in names:
        text = str(name)
        if text not in unique:
            unique.append(text)
    return unique


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          creationflags=NO_WINDOW)


def find_python(candidates: Optional[list[str]] = None, version: tuple[int, ...] = tuple(sys.version_info[:2]),
                timeout: float = 60.0) -> str:
    """The first candidate that runs and is the same Python version as this one."""
    tried = []
    for candidate in python_candidates() if candidates is None else candidates:
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            proc = _run([candidate, "-c", VERSION_SCRIPT], timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{candidate} ({exc})")
            continue
        reported = proc.stdout.strip()
        if proc.returncode == 0 and reported == f"{version[0]}.{version[1]}":
            return candidate
        tried.append(f"{candidate} (Python {reported or 'did not answer'})")
    raise DependencyError(
        f"QGIS's Python interpreter (Python {version[0]}.{version[1]}) was not found"
        + (f"; tried {', '.join(tried)}" if tried else "") + ".",
        "Install the packages with your QGIS's own Python (OSGeo4W Shell on Windows, "
        "QGIS.app/Contents/MacOS/bin/python3 on macOS, python3 on Linux), using the command the error shows.",
    )


def likely_python() -> str:
    """For messages: the best candidate that exists, without running it."""
    for candidate in python_candidates():
        if os.path.isfile(candidate):
            return candidate
    return "python3"


def pip_command(python: str, target: str | Path, pins: list[Pin]) -> list[str]:
    """Exactly these pins, wheels only, no dependency resolution, into `target`."""
    return [python, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-input",
            "--disable-pip-version-check", "--no-warn-script-location", "--progress-bar", "off",
            "--target", str(target), *[pin.spec for pin in pins]]


def command_text(cmd: list[str]) -> str:
    """One line a user can paste into a shell (quotes only where needed)."""
    return " ".join(f'"{part}"' if re.search(r"[\s'\"$&|;<>()]", part) else part for part in cmd)


def pip_environment(scratch: str) -> dict[str, str]:
    """Ours, minus pip settings that would fight --target (user, prefix, a required virtualenv), with `scratch`
    as pip's temporary directory: pip stopped by a cancel cannot clean up its own (downloads, unpacked wheels)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT")}
    env.update(PIP_USER="0", PIP_REQUIRE_VIRTUALENV="0", PIP_NO_INPUT="1", PIP_ROOT_USER_ACTION="ignore",
               PYTHONUNBUFFERED="1", TMPDIR=scratch, TEMP=scratch, TMP=scratch)
    return env


class PipProgress:
    """Percent done from pip's output: collecting (0-70 %), installing (80 %), installed (90 %)."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.collected = 0

    def feed(self, line: str) -> Optional[float]:
        text = line.strip()
        if text.startswith("Collecting "):
            self.collected += 1
            return 70.0 * (self.collected - 1) / self.total
        if text.startswith(("Downloading ", "Using cached ", "File was already downloaded")):
            return 70.0 * self.collected / self.total
        if text.startswith("Installing collected packages"):
            return 80.0
        if text.startswith("Successfully installed"):
            return 90.0
        return None


def run_pip(cmd: list[str], on_line: Callable[[str], None], is_canceled: Callable[[], bool],
            timeout: float = 1800.0) -> tuple[int, str]:
    """Run pip, passing each output line on; cancel ends it within half a second. (exit code, last lines).

    pip's temporary files go to a folder of this run's, removed once pip has ended, however it ended."""
    scratch = tempfile.mkdtemp(prefix="floodmapper-pip-")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=pip_environment(scratch), text=True, encoding="utf-8", errors="replace",
                                creationflags=NO_WINDOW)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DependencyError(f"Cannot run {cmd[0]}: {exc}.") from exc
    lines: queue.Queue = queue.Queue()
    tail: deque[str] = deque(maxlen=30)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True, name="floodmapper-pip-output")
    reader.start()
    deadline = time.monotonic() + timeout
    done = False
    try:
        while not done:
            if is_canceled():
                raise Cancelled("Installation cancelled; the plugin's package folder was left as it was.")
            if time.monotonic() > deadline:
                raise DependencyError(f"pip did not finish within {timeout:.0f} s.", "Check the network and retry.")
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                done = True
                continue
            tail.append(line)
            on_line(line)
        return proc.wait(), "\n".join(tail)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Installed:
    folder: Path
    pins: list[Pin]
    python: str
    modules: dict[str, str]  # module -> the file it was imported from, in a fresh interpreter


def _dist_info_owner(entry: str) -> str:
    """'charset_normalizer-3.5.3.dist-info' -> 'charset-normalizer'; '' for anything else."""
    if entry.endswith((".dist-info", ".egg-info")):
        return normalize(entry.split("-", 1)[0])
    return ""


def merge(staging: Path, folder: Path) -> None:
    """Move pip's output into the folder, replacing older copies (packages, their dist-info, scripts)."""
    folder.mkdir(parents=True, exist_ok=True)
    incoming = {_dist_info_owner(e.name) for e in staging.iterdir()} - {""}
    for old in list(folder.iterdir()):
        if _dist_info_owner(old.name) in incoming:  # an older version's metadata would shadow the new one's
            shutil.rmtree(old, ignore_errors=True)
    for entry in staging.iterdir():
        dest = folder / entry.name
        if entry.is_dir() and entry.name in ("bin", "Scripts") and dest.is_dir():
            for script in entry.iterdir():
                os.replace(script, dest / script.name)
            continue
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(entry, dest)


def verify(python: str, staging: Path, folder: Path, modules: list[str], timeout: float = 300.0) -> dict[str, str]:
    """Import the modules in a fresh interpreter with the new packages first on its path."""
    try:
        proc = _run([python, "-c", VERIFY_SCRIPT, str(staging), str(folder), *modules], timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DependencyError(f"The installed packages could not be checked: {exc}.") from exc
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DependencyError("The installed packages could not be checked: " + (proc.stderr or proc.stdout)[-800:]
                              ) from None
    broken = {name: r["error"] for name, r in result.items() if not r.get("ok")}
    if broken:
        raise DependencyError(
            "The packages were downloaded but do not import in QGIS's Python: "
            + "; ".join(f"{name}: {why}" for name, why in broken.items()) + ".",
            "Nothing was changed in the plugin's package folder. Report this with the message above.",
        )
    return {name: r["file"] for name, r in result.items()}


def install(pins: list[Pin], folder: str | Path, modules: list[str], python: Optional[str] = None,
            progress: Optional[Progress] = None, on_line: Optional[Callable[[str], None]] = None) -> Installed:
    """pip-install exactly `pins` into `folder`; the folder changes only once they import in a fresh interpreter."""
    progress = progress or NullProgress()
    folder = Path(folder)
    python = python or find_python()
    check = _run([python, "-m", "pip", "--version"], 120)
    if check.returncode != 0:
        raise DependencyError(
            f"QGIS's Python ({python}) has no pip: {(check.stderr or check.stdout).strip()[-300:]}",
            "Install pip for it (Debian/Ubuntu: sudo apt install python3-pip), then click Install again.",
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=str(folder.parent)))
    meter = PipProgress(len(pins))
    sink = on_line or (lambda line: None)

    def feed(line: str) -> None:
        sink(line)
        percent = meter.feed(line)
        if percent is not None:
            progress.set_progress(percent)

    try:
        progress.info(f"Installing {', '.join(p.spec for p in pins)} into {folder}")
        code, tail = run_pip(pip_command(python, staging, pins), feed, progress.is_canceled)
        if code != 0:
            raise DependencyError(
                f"pip could not install {', '.join(p.spec for p in pins)} (exit code {code}):\n{tail}",
                "Check the network connection (and the proxy pip uses: pip.conf or HTTPS_PROXY); nothing was "
                "changed in the plugin's package folder.",
            )
        progress.set_progress(92)
        progress.info("Checking that the new packages import…")
        files = verify(python, staging, folder, modules)
        if progress.is_canceled():
            raise Cancelled("Installation cancelled; the plugin's package folder was left as it was.")
        merge(staging, folder)
        progress.set_progress(100)
        moved = {name: f.replace(str(staging), str(folder)) for name, f in files.items()}
        return Installed(folder, pins, python, moved)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
