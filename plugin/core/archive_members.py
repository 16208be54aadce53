"""Files inside a downloaded archive, named as GDAL and QGIS name them: `/vsitar//data/scene.tar/B5.TIF`,
`/vsizip//data/scene.zip/folder/B5.TIF` (or `/vsizip/{/data/scene.zip}/…`).

A raster layer added from a .tar or .zip (QGIS's Browser opens them) has such a path, and the files that come
with it (a Landsat MTL file) are members of the same archive, which the operating system cannot open. Python's
tarfile and zipfile read them. Only archives on this computer are read; a path with no archive is an ordinary
file.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
import zipfile
from typing import Optional

_VSI = re.compile(r"^/vsi(?P<kind>tar|zip)/(?P<rest>.+)$", re.IGNORECASE)
_ARCHIVE_END = re.compile(r"\.(tar|tar\.gz|tgz|zip)$", re.IGNORECASE)


def split_member(path: str) -> Optional[tuple[str, str, str]]:
    """(kind, archive, member) of `/vsitar/` or `/vsizip/` paths to a local archive; None for anything else."""
    match = _VSI.match(path.replace("\\", "/"))
    if match is None:
        return None
    kind, rest = match.group("kind").lower(), match.group("rest")
    if rest.startswith("{") and "}" in rest:
        archive, _, member = rest[1:].partition("}")
        return (kind, archive, member.lstrip("/")) if os.path.isfile(archive) else None
    parts = rest.split("/")
    for end in range(1, len(parts) + 1):
        archive = "/".join(parts[:end])
        if _ARCHIVE_END.search(archive) and os.path.isfile(archive):
            return kind, archive, "/".join(parts[end:])
    return None


def folder_of(path: str) -> str:
    """The folder `path` lies in: inside its archive for a member (`/vsitar//data/scene.tar`), else the file
    system's folder, made absolute."""
    if split_member(path) is not None:
        return posixpath.dirname(path.replace("\\", "/"))
    return os.path.dirname(os.path.abspath(path))


def join(folder: str, name: str) -> str:
    """`name` in `folder`, a folder of the file system or inside an archive (GDAL's paths use "/")."""
    return f"{folder}/{name}" if _VSI.match(folder) else os.path.join(folder, name)


def is_file(path: str) -> bool:
    """Whether `path` is a file: a member of a local archive, or a file of the file system."""
    found = split_member(path)
    if found is None:
        return os.path.isfile(path)
    kind, archive, member = found
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                return member in z.namelist()
        with tarfile.open(archive) as t:
            return _tar_member(t, member) is not None
    except (OSError, tarfile.TarError, zipfile.BadZipFile):
        return False


def files_in(folder: str) -> list[str]:
    """The names of the files directly in `folder`, of the file system or inside a local archive; [] when it
    cannot be read."""
    found = split_member(folder.rstrip("/") + "/")
    if found is None:
        try:
            return sorted(e.name for e in os.scandir(folder) if e.is_file())
        except OSError:
            return []
    kind, archive, member = found
    prefix = member.strip("/") + "/" if member.strip("/") else ""
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                names = [i.filename for i in z.infolist() if not i.is_dir()]
        else:
            with tarfile.open(archive) as t:
                names = [i.name[2:] if i.name.startswith("./") else i.name for i in t.getmembers() if i.isfile()]
    except (OSError, tarfile.TarError, zipfile.BadZipFile):
        return []
    return sorted(n[len(prefix):] for n in names if n.startswith(prefix) and "/" not in n[len(prefix):])


def read_text(path: str, encoding: str = "utf-8") -> str:
    """The text of a file of the file system or of an archive member. OSError (or UnicodeDecodeError) when it
    cannot be read."""
    found = split_member(path)
    if found is None:
        with open(path, encoding=encoding) as f:
            return f.read()
    kind, archive, member = found
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                return z.read(member).decode(encoding)
        with tarfile.open(archive) as t:
            info = _tar_member(t, member)
            handle = t.extractfile(info) if info is not None else None
            if handle is None:
                raise OSError(f"no file {member} in {archive}")
            return handle.read().decode(encoding)
    except KeyError:
        raise OSError(f"no file {member} in {archive}") from None
    except (tarfile.TarError, zipfile.BadZipFile) as exc:
        raise OSError(f"{archive}: {exc}") from None


def _tar_member(archive: tarfile.TarFile, member: str) -> Optional[tarfile.TarInfo]:
    for name in (member, "./" + member):
        try:
            info = archive.getmember(name)
        except KeyError:
            continue
        return info if info.isfile() else None
    return None
