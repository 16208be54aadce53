"""A client for a remote vLLM server, set up from the plugin's settings and QGIS's own: the authentication
configuration's headers, QGIS's proxy, the TLS choice and the timeouts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.settings import Settings
from .auth import headers_for
from .proxy import proxies_for

if TYPE_CHECKING:
    from ..core.vllm_api import VllmClient


def remote_client(settings: Settings, url: str, read_timeout: float | None = None) -> VllmClient:
    from ..core.vllm_api import VllmClient  # requests: imported when a job runs, not when the plugin loads

    return VllmClient(
        url, headers=headers_for(settings.authcfg), connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout if read_timeout is None else read_timeout,
        verify=settings.ca_bundle or settings.verify_tls, proxies=proxies_for(url),
    )
