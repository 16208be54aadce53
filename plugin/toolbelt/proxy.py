"""QGIS's proxy settings (Settings ▸ Options ▸ Network) as a `requests` proxies mapping for the vLLM client.

QGIS 3.22 applies its proxy in `QgsNetworkAccessManager::setupDefaultProxyAndCache` (what it reads) and in
its private `QgsNetworkProxyFactory::queryProxy` (what a URL gets). This module reads the same `proxy/*`
QgsSettings keys and applies the same rules, in the same order:

1. proxy disabled (`proxy/proxyEnabled`)                → None: requests' own behaviour (environment variables)
2. URL starts with a `proxy/noProxyUrls` entry          → DIRECT: no proxy at all
3. URL starts with a `proxy/proxyExcludedUrls` entry    → None (QGIS returns the system proxy for these)
4. `proxy/proxyType` DefaultProxy ("system proxy")      → None: on Linux the system proxy *is* http(s)_proxy
5. HttpProxy / HttpCachingProxy                         → {"http": "http://[user:pass@]host:port", "https": same}
   Socks5Proxy                                          → "socks5h://…" if PySocks is installed, else None + warning

Entries are plain URL prefixes compared with the URL as QUrl prints it (lower-case host), as QGIS does.
Credentials come from `proxy/proxyUser` / `proxy/proxyPassword`, or from the auth configuration in
`proxy/authcfg` through the public `QgsAuthManager.updateNetworkProxy`, as QGIS does; they are URL-quoted.

One rule QGIS does not have: a loopback server (localhost, 127.0.0.0/8, ::1) is always reached DIRECT. The
plugin's own engine and SSH tunnels live there, and a proxy on another machine cannot reach this machine's
loopback (Qt applies the same rule to application-wide proxies).

Why the settings and not `QgsNetworkAccessManager.instance().fallbackProxy()`: the manager is per thread, set
up once when a thread first asks for it, and Options ▸ Network refreshes only the main thread's one
(`QgisApp::namUpdate`). Processing runs algorithms on pool threads, whose manager would keep the proxy of
the first run; the settings are what every manager is built from, read fresh in every thread and in
qgis_process. Proxy factories other plugins insert into the manager are not consulted.

DIRECT is `{"http": "", "https": ""}`: requests treats an empty proxy as "none" (`select_proxy` returns "",
the adapter connects to the server itself), and because the keys are present, `setdefault` in
`Session.merge_environment_settings` does not fill them from http_proxy/https_proxy either. That last part
holds only for proxies passed *per request*: for `Session.proxies`, requests lets the environment win
(psf/requests#2018), so the client must merge them per request for DIRECT (and a QGIS proxy) to beat
http_proxy set in QGIS's environment. None would not do: `merge_setting` drops None values, and the
environment's proxy fills the gap.

The password is never logged: only host:port. requests sends proxy credentials as HTTP Basic in Latin-1
(Qt does too, unless the proxy asks for UTF-8); credentials outside Latin-1 raise an InputError saying so.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from typing import Optional
from urllib.parse import quote, urlsplit

from qgis.core import Qgis, QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtNetwork import QNetworkProxy

from ..core.errors import InputError
from . import log as qlog

DIRECT: dict[str, str] = {"http": "", "https": ""}

SOCKS_TYPE = "Socks5Proxy"
SYSTEM_TYPE = "DefaultProxy"

_QT_TYPES = {
    "HttpProxy": QNetworkProxy.ProxyType.HttpProxy,
    "HttpCachingProxy": QNetworkProxy.ProxyType.HttpCachingProxy,
    "Socks5Proxy": QNetworkProxy.ProxyType.Socks5Proxy,
}


def proxies_for(url: str) -> Optional[dict[str, str]]:
    """The `proxies` for a VllmClient talking to `url`, from QGIS's proxy settings (see the module doc).

    None leaves requests to its defaults (environment variables); DIRECT means no proxy whatever the
    environment says. Logs which proxy is used (host:port), once per call: call it once per run.
    """
    settings = QgsSettings()
    if not _as_bool(settings.value("proxy/proxyEnabled", False)):
        return None
    target = QUrl(url).toString()
    for entry in _as_list(settings.value("proxy/noProxyUrls", [])):
        if entry.strip() and target.startswith(entry):
            qlog.log(f"Not using QGIS's proxy for the vLLM server: its URL starts with the no-proxy entry "
                     f"'{entry}'.")
            return dict(DIRECT)
    if _is_loopback(url):
        return dict(DIRECT)  # no message: this is every run with the local engine
    for entry in _as_list(settings.value("proxy/proxyExcludedUrls", [])):
        if entry.strip() and target.startswith(entry):
            return None  # QGIS gives these URLs the system proxy: for requests, the environment's

    kind = str(settings.value("proxy/proxyType", "") or "")
    if kind == SYSTEM_TYPE or kind not in _QT_TYPES:
        return None  # QGIS: the system proxy (Linux: http_proxy/https_proxy); FtpCachingProxy does no HTTP
    host = str(settings.value("proxy/proxyHost", "") or "").strip()
    port = _as_int(settings.value("proxy/proxyPort", ""))
    if not host:
        qlog.log("QGIS's proxy is enabled but has no host (Settings ▸ Options ▸ Network): not using it.",
                 Qgis.MessageLevel.Warning)
        return None
    user, password = _credentials(settings, kind, host, port)
    where = _host_port(host, port)
    if kind == SOCKS_TYPE:
        if not _pysocks_available():
            qlog.log(f"QGIS's proxy is a SOCKS5 proxy ({where}), and talking to a vLLM server through SOCKS needs "
                     "the PySocks package in QGIS's Python (pip install PySocks, or Debian/Ubuntu: apt install "
                     "python3-socks). Connecting without QGIS's proxy.", Qgis.MessageLevel.Warning)
            return None
        scheme = "socks5h"  # the proxy resolves the server's name, as QGIS's SOCKS5 proxy does
    else:
        scheme = "http"
        _check_latin1(user, password, where)
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user or password else ""
    proxy_url = f"{scheme}://{auth}{where}"
    qlog.log(f"Connecting to the vLLM server through QGIS's proxy {where} ({kind}"
             + (", with credentials" if auth else "") + ").")
    return {"http": proxy_url, "https": proxy_url}


# ------------------------------------------------------------------------------------------------ helpers
def _credentials(settings: QgsSettings, kind: str, host: str, port: int) -> tuple[str, str]:
    user = str(settings.value("proxy/proxyUser", "") or "")
    password = str(settings.value("proxy/proxyPassword", "") or "")
    authcfg = str(settings.value("proxy/authcfg", "") or "")
    manager = QgsApplication.authManager()
    if not authcfg or manager is None or manager.isDisabled():
        return user, password
    proxy = QNetworkProxy(_QT_TYPES[kind], host, port, user, password)
    ok, proxy = manager.updateNetworkProxy(proxy, authcfg)
    if not ok:
        qlog.log(f"The authentication configuration '{authcfg}' of QGIS's proxy could not be applied; "
                 "trying the proxy with the user name and password of Options ▸ Network.",
                 Qgis.MessageLevel.Warning)
        return user, password
    return proxy.user(), proxy.password()


def _check_latin1(user: str, password: str, where: str) -> None:
    """requests sends Basic proxy credentials in Latin-1 (as Qt does) and raises UnicodeEncodeError otherwise."""
    try:
        f"{user}:{password}".encode("latin-1")
    except UnicodeEncodeError:
        raise InputError(
            f"The user name or password of QGIS's proxy {where} has characters that cannot be sent to the proxy "
            "(HTTP Basic authentication here takes Latin-1 characters only).",
            "Use a proxy account whose user name and password are plain Latin-1 text, or add the vLLM server "
            "to the 'No proxy for' list in Settings ▸ Options ▸ Network.",
        ) from None


def _pysocks_available() -> bool:
    """requests speaks SOCKS through urllib3.contrib.socks, which needs PySocks (module `socks`)."""
    return importlib.util.find_spec("socks") is not None


def _host_port(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6 literal
    return f"{shown}:{port}" if port > 0 else shown


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _as_bool(value: object) -> bool:
    """QVariant::toBool: a string is true unless empty, "0" or "false"."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false")
    return bool(value)


def _as_int(value: object) -> int:
    """QString::toInt: 0 when it is not a number."""
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


def _as_list(value: object) -> list[str]:
    """QVariant::toStringList: a single string is a one-entry list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]
