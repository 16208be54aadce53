"""Server URLs: the form requests are built on, and whether a URL is this computer."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

from .errors import InputError
from .redact import Redactor


def normalise_server_url(url: str) -> str:
    """The server root ('http://host:8000'), from a URL that may end in /v1 or /pooling; InputError otherwise."""
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(
            f"The server URL '{Redactor()(url)}' is not an http(s) URL.",
            "Use a URL like http://127.0.0.1:8000 (the server root, without /v1 or /pooling).",
        )
    path = parts.path.rstrip("/")
    for suffix in ("/pooling", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this computer (localhost, 127.0.0.0/8, ::1): such a server reads our files."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
