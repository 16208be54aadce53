"""Secrets out of text: error messages and log lines end up in QGIS's log, bug reports and screenshots.

Configured header values (a bearer token and the token alone), proxy credentials, bearer/basic tokens in any
text, user-info in URLs and key=... query parameters are replaced by ***.
"""

from __future__ import annotations

import re
from typing import Optional
from urllib.parse import unquote, urlsplit

_SENSITIVE_QUERY = re.compile(r"(?i)([?&](?:[a-z_-]*(?:token|key|secret|password|sig|auth)[a-z_-]*)=)[^&#\s]+")
_BEARER = re.compile(r"(?i)(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{4,}")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


class Redactor:
    """Removes secrets from text: the given ones, plus bearer tokens, URL user-info and key=... queries."""

    def __init__(self, secrets: Optional[list[str]] = None) -> None:
        self.secrets = sorted({s for s in (secrets or []) if s and len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: object) -> str:
        out = str(text)
        for secret in self.secrets:
            out = out.replace(secret, "***")
        out = _BEARER.sub(lambda m: m.group(1) + " ***", out)
        out = _URL_USERINFO.sub(lambda m: m.group(1) + "***@", out)
        return _SENSITIVE_QUERY.sub(lambda m: m.group(1) + "***", out)


def secrets_of(headers: dict[str, str], proxies: Optional[dict[str, str]]) -> list[str]:
    """What must never be shown: header values (and a bearer's token alone), proxy user names and passwords."""
    secrets: list[str] = []
    for value in headers.values():
        value = str(value)
        secrets.append(value)
        parts = value.split(None, 1)  # "Bearer abc": the token alone must go too
        if len(parts) == 2:
            secrets.append(parts[1])
    for url in (proxies or {}).values():
        userinfo = urlsplit(url).netloc.rpartition("@")[0]
        if userinfo:
            parts = userinfo.split(":", 1)
            secrets.extend([userinfo, *parts, *(unquote(part) for part in parts)])
    return secrets
