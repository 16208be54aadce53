"""Where an image-to-image server reads the raster: a path it sees (its own disk, or a mapped folder) or a URL.

TerraTorch 1.2.4+ takes no inline upload, so this is the only way a raster reaches the IOProcessor; a raster
the server cannot reach goes through the tensor transport instead.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass

from .errors import TransportUnsupported
from .raster import RasterInfo

VSICURL = "/vsicurl/"


@dataclass(frozen=True)
class ServerReach:
    """What the server can read: local files (it runs here), a mapped folder, and always http(s) URLs."""

    server_url: str
    reads_local_files: bool = False
    path_map_local: str = ""  # a local folder prefix ...
    path_map_server: str = ""  # ... that the server sees under this prefix


def copy_folder(reach: ServerReach, why: str) -> str:
    """A local folder the server reads too, for a temporary copy of the input (`why` it needs one): the mapped
    folder, else this computer's temporary folder for a server that runs here."""
    if reach.path_map_local and reach.path_map_server:
        return os.path.abspath(reach.path_map_local)
    if reach.reads_local_files:
        return tempfile.gettempdir()
    raise TransportUnsupported(
        f"Image-to-image cannot send this job to the server at {reach.server_url}: {why}, so it would send a "
        "GeoTIFF written on this computer, and the server runs on another machine with no folder mapped to it.",
        "Use the tensor transport (a server started without the IOProcessor plugin): it reads the raster here "
        "and sends tiles. Or set a path mapping to a folder the server sees.",
    )


def check_reach(info: RasterInfo, reach: ServerReach, copy_why: str = "") -> None:
    """TransportUnsupported when the server cannot read the raster, or (`copy_why`) a copy of it made here."""
    if copy_why:
        copy_folder(reach, copy_why)
    else:
        server_source(info, reach)


def server_path(local: str, reach: ServerReach) -> str:
    """The path under which the server reads the local file `local`: mapped, or as it is ("" when neither)."""
    local = os.path.abspath(local)
    if reach.path_map_local and reach.path_map_server:
        prefix = os.path.abspath(reach.path_map_local)
        if local == prefix or local.startswith(prefix.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(local, prefix).replace(os.sep, "/")
            server_prefix = reach.path_map_server.rstrip("/")
            return server_prefix if rel == "." else f"{server_prefix}/{rel}"
    return local if reach.reads_local_files else ""


def url_of(source: str) -> str:
    """The http(s) URL a source is read from (`/vsicurl/` dropped), or "" for anything else."""
    if source.startswith(VSICURL):
        source = source[len(VSICURL):]
    return source if re.match(r"(?i)https?://", source) else ""


def server_source(info: RasterInfo, reach: ServerReach) -> tuple[str, str]:
    """(data, data_format) through which the server can read the input, or TransportUnsupported."""
    source = info.path
    url = url_of(source)
    if url:
        return url, "url"
    way_out = (
        "Use the tensor transport (a server started without the IOProcessor plugin), set a path mapping "
        "(a local folder the server sees under another path), or export the layer to a GeoTIFF in a folder "
        "the server can read or at an http(s) URL."
    )
    if source.startswith("/vsi"):
        raise TransportUnsupported(
            f"The image transport cannot send '{info.path}': the server reads rasters only by file "
            "path or http(s) URL.",
            way_out,
        )
    if not os.path.isfile(source):
        raise TransportUnsupported(
            f"The layer '{info.path}' is not a file (a database, web service or in-memory layer), "
            "so the server cannot read it.",
            way_out,
        )
    if info.driver == "VRT" or source.lower().endswith(".vrt"):
        raise TransportUnsupported(
            f"'{info.path}' is a virtual raster (VRT); the server reads the file's bytes and cannot "
            "follow the files a VRT refers to.",
            "Export it to a GeoTIFF first (Raster > Conversion > Translate), or use the tensor transport.",
        )
    path = server_path(source, reach)
    if path:
        return path, "path"
    raise TransportUnsupported(
        f"The server at {reach.server_url} cannot read the local file '{info.path}' "
        "(it runs on another machine and the file is not under a mapped folder).",
        way_out,
    )
