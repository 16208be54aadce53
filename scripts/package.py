"""Build the installable plugin zip: dist/floodmapper-VERSION.zip with only runtime files.

Only files git tracks are packed (so no venvs, caches or build output), minus development material
(tests, benchmarks, CI, lint config). The vLLM environment's set-up script and requirements travel with it,
so a user can build the local engine's environment from an installed plugin. The version comes from
metadata.txt plus `git describe` when the commit is not the release tag; the changelog from CHANGELOG.md.
"""

from __future__ import annotations

import configparser
import io
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "floodmapper"
INCLUDE_TOP = {"__init__.py", "metadata.txt", "README.md", "CHANGELOG.md", "LICENSE"}
INCLUDE_DIRS = ("plugin/", "ui/", "resources/", "requirements/")
INCLUDE_SCRIPTS = {"scripts/setup-vllm-env", "scripts/make-torchvision-cpu-shim"}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


def wanted(path: str) -> bool:
    if "__pycache__" in path or path.endswith((".pyc", ".aux.xml")):
        return False
    return path in INCLUDE_TOP or path in INCLUDE_SCRIPTS or path.startswith(INCLUDE_DIRS)


def version(meta_version: str) -> str:
    try:
        described = subprocess.run(["git", "describe", "--tags", "--always", "--dirty"], cwd=ROOT,
                                   capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return meta_version
    if described in (meta_version, f"v{meta_version}"):
        return meta_version
    return f"{meta_version}+{described.replace('-', '.')}"


def changelog() -> str:
    path = ROOT / "CHANGELOG.md"
    if not path.exists():
        return ""
    lines = [line.rstrip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("# ")]
    return "\n".join(lines[:40])


def metadata_text(ver: str) -> str:
    meta = configparser.ConfigParser(interpolation=None)
    meta.optionxform = str  # keep QGIS's camelCase keys
    meta.read(ROOT / "metadata.txt")
    meta["general"]["version"] = ver
    log = changelog()
    if log:
        meta["general"]["changelog"] = "\n" + log.replace("%", "%%")
    buf = io.StringIO()
    meta.write(buf, space_around_delimiters=False)
    return buf.getvalue()


def build(dist: Path) -> Path:
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(ROOT / "metadata.txt")
    ver = version(meta["general"]["version"])
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"{NAME}-{ver}.zip"
    tmp = target.with_name(f".{target.name}.tmp")
    files = sorted(f for f in tracked_files() if wanted(f))
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            arc = f"{NAME}/{rel}"
            if rel == "metadata.txt":
                zf.writestr(arc, metadata_text(ver))
            else:
                zf.write(ROOT / rel, arc)
    tmp.replace(target)
    print(f"{target} ({len(files)} files, {target.stat().st_size / 1e6:.1f} MB, version {ver})")
    return target


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist")
