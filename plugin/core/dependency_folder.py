"""The plugin's own folder of Python packages in the QGIS profile, and putting it on sys.path (QGIS-free).

The folder is per Python version and platform (`<profile>/floodmapper/python3.12-win-amd64`): a QGIS upgrade
to another Python, or a profile roaming between machines, never loads wheels built for another interpreter.
It holds only what QGIS's Python lacked (see dependencies.py), so putting it first on sys.path shadows
nothing QGIS relies on, except packages too old for the plugin that were replaced on purpose (urllib3 1.x).
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from pathlib import Path
from typing import Optional


def folder_name(version: tuple[int, ...] = tuple(sys.version_info[:2]), platform: Optional[str] = None) -> str:
    return f"python{version[0]}.{version[1]}-{platform or sysconfig.get_platform()}"


def folder_for(profile_dir: str | Path, version: tuple[int, ...] = tuple(sys.version_info[:2]),
               platform: Optional[str] = None) -> Path:
    """Where the Install button puts packages: inside the QGIS profile, beside nothing of QGIS's own."""
    return Path(profile_dir) / "floodmapper" / folder_name(version, platform)


def activate(folder: str | Path, path: Optional[list[str]] = None) -> bool:
    """Put an existing folder first on sys.path (once); True when this call added it."""
    path = sys.path if path is None else path
    folder = os.path.abspath(str(folder))
    if not os.path.isdir(folder) or folder in path:
        return False
    path.insert(0, folder)
    importlib.invalidate_caches()  # finders cached "not found" for the modules that now exist there
    return True


def imported_elsewhere(modules: list[str], folder: str | Path, loaded: Optional[dict] = None) -> list[str]:
    """Modules this process already imported from somewhere else than `folder`.

    Python keeps an imported module for the life of the process: for these the new copy in `folder` is used
    only after QGIS restarts.
    """
    loaded = sys.modules if loaded is None else loaded
    root = os.path.abspath(str(folder)) + os.sep
    stale = []
    for name in modules:
        module = loaded.get(name)
        if module is None:
            continue
        where = getattr(module, "__file__", None) or ""
        if not os.path.abspath(where).startswith(root):
            stale.append(name)
    return stale
