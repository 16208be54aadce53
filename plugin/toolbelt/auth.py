"""HTTP headers from a QGIS authentication configuration: the secret lives only in QGIS's auth database.

Supported methods (QGIS 3.22 … 4.x):
- "APIHeader" (QGIS >= 3.26): every key/value of the config is sent as a header (API key, custom headers);
  a key "token" or "bearer" is sent as `Authorization: Bearer …`.
- "EsriToken": its token is sent as `Authorization: Bearer …` (the 3.22-compatible way to store a token).
- "Basic": username + password as HTTP Basic; with an empty username the password is a Bearer token.
"""

from __future__ import annotations

import base64

from qgis.core import QgsApplication, QgsAuthMethodConfig

from ..core.errors import InputError


def headers_for(authcfg: str) -> dict[str, str]:
    if not authcfg:
        return {}
    manager = QgsApplication.authManager()
    config = QgsAuthMethodConfig()
    if not manager.loadAuthenticationConfig(authcfg, config, True) or not config.isValid(True):
        raise InputError(
            f"The authentication configuration '{authcfg}' could not be loaded.",
            "Check it in Settings ▸ Options ▸ Authentication (is the master password set?), "
            "or clear it in Flood Mapper's options.",
        )
    method = config.method()
    values = {k: v for k, v in config.configMap().items() if v}
    if method == "APIHeader":
        headers: dict[str, str] = {}
        for key, value in values.items():
            if key.lower() in ("token", "bearer"):
                headers["Authorization"] = f"Bearer {value}"
            else:
                headers[key] = value
        return headers
    if method == "EsriToken" and values.get("token"):
        return {"Authorization": f"Bearer {values['token']}"}
    if method == "Basic":
        user, password = values.get("username", ""), values.get("password", "")
        if not user:
            return {"Authorization": f"Bearer {password}"}
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}
    raise InputError(
        f"The authentication method '{method}' of configuration '{authcfg}' cannot be used for a vLLM server.",
        "Use an 'API Header' configuration (QGIS 3.26+), an 'Esri Token' or a 'Basic' one with the token as the "
        "password and no username.",
    )
