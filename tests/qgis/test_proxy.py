"""QGIS's proxy settings (Options ▸ Network) reach the vLLM client: plugin/toolbelt/proxy.py.

End to end through a recording forward proxy on 127.0.0.1. The vLLM peer is addressed as `vllm-peer.test`, a
name only the proxy resolves (.test never resolves, RFC 2606): a request that reaches the peer went through
the proxy. Loopback URLs are never proxied (see the module doc), which is why the peer is not addressed as
127.0.0.1 here.
"""

from __future__ import annotations

import base64
import http.client
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import urlsplit

import pytest
from requests.utils import get_auth_from_url

from scripts.scenes import generate_scene
from tests.fixtures.fake_http import FakeHttpServer, Reply, closed_port, models_body, vllm_error

# QGIS-facing: also run on QGIS 3.40 and the newest QGIS (scripts/test-qgis-versions)
pytestmark = pytest.mark.qgis_versions

PEER_HOST = "vllm-peer.test"
PROXY_USER = "flood user@corp"
PROXY_PASSWORD = "pr0xy-P@ss:w/rd%+é"  # noqa: S105 (a test secret with every character that needs quoting)
PROXY_ENV = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
             "NO_PROXY", "no_proxy")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection", "te",
              "trailer", "transfer-encoding", "upgrade"}


def basic(user: str, password: str) -> str:
    """Proxy-Authorization as requests (and Qt) sends it: HTTP Basic over Latin-1."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("latin-1")).decode()


# ---------------------------------------------------------------------------------------- recording proxy
@dataclass
class Seen:
    method: str
    url: str  # the absolute URI of the request line, as a forward proxy receives it
    proxy_authorization: Optional[str]


class RecordingProxy:
    """A forward HTTP proxy: records each request, checks Proxy-Authorization, forwards with http.client.

    `resolve` maps host names to addresses, as the proxy's own DNS would (the client cannot resolve them).
    """

    def __init__(self, expected_auth: Optional[str] = None, resolve: Optional[dict[str, str]] = None) -> None:
        self.expected_auth = expected_auth
        self.resolve = dict(resolve or {})
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Proxy-Authorization")
                with owner.lock:
                    owner.seen.append(Seen(self.command, self.path, auth))
                if owner.expected_auth is not None and auth != owner.expected_auth:
                    self._answer(407, [("Proxy-Authenticate", 'Basic realm="test proxy"')], b"proxy auth required")
                    return
                target = urlsplit(self.path)
                if target.scheme != "http" or not target.hostname:
                    self._answer(400, [], b"a forward proxy expects an absolute http:// URI")
                    return
                address = owner.resolve.get(target.hostname, target.hostname)
                path = (target.path or "/") + (f"?{target.query}" if target.query else "")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn = http.client.HTTPConnection(address, target.port or 80, timeout=30)
                try:
                    conn.request(self.command, path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    out = [(k, v) for k, v in response.getheaders()
                           if k.lower() not in HOP_BY_HOP | {"content-length"}]
                    self._answer(response.status, out, data)
                except OSError as exc:
                    self._answer(502, [], f"proxy could not reach {target.hostname}: {exc}".encode())
                finally:
                    conn.close()

            do_GET = _relay  # noqa: N815
            do_POST = _relay  # noqa: N815
            do_HEAD = _relay  # noqa: N815

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client hanging up on a keep-alive connection is not a test failure

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def no_env_proxy(monkeypatch):
    """The machine's own proxy variables must neither help nor hinder: only QGIS's settings count here."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def qgis_proxy(qgis_app):
    """Sets QGIS's proxy settings (the keys Options ▸ Network writes); restores them afterwards."""
    from qgis.core import QgsSettings

    settings = QgsSettings()
    saved = {key: settings.value(key) for key in settings.allKeys() if key.startswith("proxy/")}

    def configure(**values: Any) -> None:
        s = QgsSettings()
        s.remove("proxy")
        for key, value in values.items():
            s.setValue(f"proxy/{key}", value)

    yield configure
    settings.remove("proxy")
    for key, value in saved.items():
        settings.setValue(key, value)


def http_proxy_settings(port: int, **extra: Any) -> dict:
    values = {"proxyEnabled": True, "proxyType": "HttpProxy", "proxyHost": "127.0.0.1", "proxyPort": str(port),
              "proxyUser": PROXY_USER, "proxyPassword": PROXY_PASSWORD}
    values.update(extra)
    return values


@pytest.fixture
def message_log(qgis_app):
    from qgis.core import QgsApplication

    lines: list[str] = []

    def collect(message, tag, level):
        lines.append(f"{tag}: {message}")

    QgsApplication.messageLog().messageReceived.connect(collect)
    yield lines
    QgsApplication.messageLog().messageReceived.disconnect(collect)


@pytest.fixture
def peer():
    """Answers like a vLLM server with the TerraTorch IOProcessor, then refuses the job (401): enough to see
    /v1/models and /pooling go by without a model."""
    server = FakeHttpServer()
    server.on("GET", "/v1/models", Reply(200, models_body("floodmapper-demo")))
    server.on("GET", "/version", Reply(200, {"version": "0.32.0"}))
    server.on("POST", "/pooling", Reply(401, vllm_error("invalid token", 401, "Unauthorized")))
    with server:
        yield server


@pytest.fixture
def path_mapping(tmp_path):
    """A remote server (not on loopback) reads the scene through a mapped folder, so image-to-image runs."""
    from qgis.core import QgsSettings

    from floodmapper.plugin.toolbelt import settings as stored

    saved = {key: stored.get_value(key) for key in ("path_map_local", "path_map_server")}
    stored.set_value("path_map_local", str(tmp_path))
    stored.set_value("path_map_server", "/data")
    yield
    for key, value in saved.items():
        if value is None:
            QgsSettings().remove(stored.PREFIX + key)
        else:
            stored.set_value(key, value)


def run_map_floods(server_url: str, tmp_path):
    """Run the algorithm against `server_url`; returns (exception text, feedback log)."""
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    src = tmp_path / "scene.tif"
    generate_scene(src, seed=77, width=64, height=64)
    feedback = QgsProcessingFeedback()
    with pytest.raises(QgsProcessingException) as err:
        processing.run("floodmapper:map_floods", {
            "INPUT": str(src), "BACKEND": 0, "SERVER_URL": server_url, "TRANSPORT": 1,
            "OUTPUT": str(tmp_path / "flood.tif"),
        }, feedback=feedback)
    return str(err.value), feedback.textLog() + feedback.htmlLog()


# --------------------------------------------------------------------------------- (a) proxies_for rules
def test_http_proxy_with_credentials_quoted(qgis_proxy, message_log):
    from floodmapper.plugin.toolbelt.proxy import proxies_for

    qgis_proxy(**http_proxy_settings(3128, proxyHost="proxy.corp.example"))
    proxies = proxies_for("http://gpu-box:8000")
    expected = "http://flood%20user%40corp:pr0xy-P%40ss%3Aw%2Frd%25%2B%C3%A9@proxy.corp.example:3128"
    assert proxies == {"http": expected, "https": expected}
    assert get_auth_from_url(proxies["http"]) == (PROXY_USER, PROXY_PASSWORD)  # what requests sends
    # HttpCachingProxy is an HTTP proxy too
    qgis_proxy(**http_proxy_settings(3128, proxyHost="proxy.corp.example", proxyType="HttpCachingProxy"))
    assert proxies_for("https://gpu-box:8443") == {"http": expected, "https": expected}
    # no credentials: no user-info at all
    qgis_proxy(**http_proxy_settings(3128, proxyHost="proxy.corp.example", proxyUser="", proxyPassword=""))
    assert proxies_for("http://gpu-box:8000") == {"http": "http://proxy.corp.example:3128",
                                                  "https": "http://proxy.corp.example:3128"}
    # the log names host:port, never the password (nor its quoted form)
    assert any("proxy.corp.example:3128" in line for line in message_log)
    assert not [line for line in message_log if "pr0xy" in line]


def test_disabled_proxy_and_system_proxy_leave_requests_alone(qgis_proxy):
    from floodmapper.plugin.toolbelt.proxy import proxies_for

    qgis_proxy(**http_proxy_settings(3128, proxyEnabled=False))
    assert proxies_for("http://gpu-box:8000") is None
    qgis_proxy(proxyEnabled="false", proxyType="HttpProxy", proxyHost="proxy.corp.example", proxyPort="3128")
    assert proxies_for("http://gpu-box:8000") is None
    qgis_proxy()  # never configured
    assert proxies_for("http://gpu-box:8000") is None
    # "Default proxy" = the system's: requests takes http_proxy/https_proxy from the environment itself
    qgis_proxy(**http_proxy_settings(3128, proxyType="DefaultProxy"))
    assert proxies_for("http://gpu-box:8000") is None
    # an FTP proxy carries no HTTP
    qgis_proxy(**http_proxy_settings(3128, proxyType="FtpCachingProxy"))
    assert proxies_for("http://gpu-box:8000") is None


def test_no_proxy_urls_are_prefixes_and_go_direct(qgis_proxy):
    from floodmapper.plugin.toolbelt.proxy import DIRECT, proxies_for

    qgis_proxy(**http_proxy_settings(3128, noProxyUrls=["http://gpu-box", "https://secure.example:8443/v"]))
    assert proxies_for("http://gpu-box:8000") == DIRECT
    assert proxies_for("http://GPU-Box:8000") == DIRECT  # compared as QUrl prints it: host in lower case
    assert proxies_for("http://gpu-box.corp.example:8000") == DIRECT  # a prefix, as in QGIS
    assert proxies_for("https://gpu-box:8000") != DIRECT  # other scheme, other prefix
    assert proxies_for("https://secure.example:8443/vllm") == DIRECT
    assert proxies_for("https://secure.example:8443") != DIRECT  # shorter than the entry
    # one entry stored as a plain string (QVariant::toStringList), and blank entries match nothing
    qgis_proxy(**http_proxy_settings(3128, noProxyUrls="http://gpu-box"))
    assert proxies_for("http://gpu-box:8000") == DIRECT
    qgis_proxy(**http_proxy_settings(3128, noProxyUrls=["", "  "]))
    assert proxies_for("http://gpu-box:8000") != DIRECT
    # the legacy exclude list gets QGIS's "default" (system) proxy: the environment's, for requests
    qgis_proxy(**http_proxy_settings(3128, proxyExcludedUrls=["http://gpu-box"]))
    assert proxies_for("http://gpu-box:8000") is None
    assert proxies_for("http://other:8000")["http"].endswith("@127.0.0.1:3128")


def test_loopback_is_never_proxied(qgis_proxy):
    from floodmapper.plugin.toolbelt.proxy import DIRECT, proxies_for

    qgis_proxy(**http_proxy_settings(3128))
    for url in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "http://127.0.1.1:1"):
        assert proxies_for(url) == DIRECT, url


def test_empty_values_bypass_environment_proxies_per_request(monkeypatch):
    """Documents what DIRECT relies on in requests: "" = no proxy, and the key blocks the environment's."""
    import requests

    with FakeHttpServer() as server:
        server.on("GET", "/v1/models", Reply(200, models_body("m")))
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
        url = "http://gpu-box.invalid/"  # requests consults no_proxy (unset here) only: the dead proxy applies
        session = requests.Session()
        assert session.merge_environment_settings(url, {"http": "", "https": ""}, None, None, None)[
            "proxies"]["http"] == ""
        assert requests.get(server.url + "/v1/models", proxies={"http": "", "https": ""}, timeout=5).ok
        # ...but on Session.proxies the environment wins (psf/requests#2018): the client must merge per request
        session.proxies.update({"http": "", "https": ""})
        merged = session.merge_environment_settings(url, {}, None, None, None)["proxies"]
        assert merged["http"].startswith("http://127.0.0.1:")


def test_socks5_needs_pysocks(qgis_proxy, message_log, monkeypatch):
    from floodmapper.plugin.toolbelt import proxy

    qgis_proxy(**http_proxy_settings(1080, proxyType="Socks5Proxy", proxyHost="socks.corp.example"))
    monkeypatch.setattr(proxy, "_pysocks_available", lambda: False)
    assert proxy.proxies_for("http://gpu-box:8000") is None
    assert any("PySocks" in line and "socks.corp.example:1080" in line for line in message_log)
    monkeypatch.setattr(proxy, "_pysocks_available", lambda: True)
    url = proxy.proxies_for("http://gpu-box:8000")["https"]
    assert url.startswith("socks5h://flood%20user%40corp:") and url.endswith("@socks.corp.example:1080")
    assert not [line for line in message_log if "pr0xy" in line]


def test_credentials_outside_latin1_are_refused_clearly(qgis_proxy):
    from floodmapper.plugin.core.errors import InputError
    from floodmapper.plugin.toolbelt.proxy import proxies_for

    qgis_proxy(**http_proxy_settings(3128, proxyPassword="pr0xy-€uro"))
    with pytest.raises(InputError) as err:
        proxies_for("http://gpu-box:8000")
    assert "Latin-1" in str(err.value) and "127.0.0.1:3128" in str(err.value)
    assert "pr0xy" not in str(err.value) and "pr0xy" not in err.value.hint


def test_proxy_without_host_is_not_used(qgis_proxy, message_log):
    from floodmapper.plugin.toolbelt.proxy import proxies_for

    qgis_proxy(**http_proxy_settings(3128, proxyHost=""))
    assert proxies_for("http://gpu-box:8000") is None
    assert any("no host" in line for line in message_log)


def test_credentials_from_proxy_auth_config(qgis_proxy):
    """Options ▸ Network can keep the proxy's credentials in an auth configuration (proxy/authcfg)."""
    from qgis.core import QgsApplication, QgsAuthMethodConfig

    from floodmapper.plugin.toolbelt.proxy import proxies_for

    manager = QgsApplication.authManager()
    if not manager.masterPasswordIsSet():
        assert manager.setMasterPassword("floodmapper-test-master", True)
    config = QgsAuthMethodConfig("Basic")
    config.setName("floodmapper test proxy")
    config.setConfig("username", "cfg-user")
    config.setConfig("password", "cfg P@ss")
    ok, config = manager.storeAuthenticationConfig(config)
    assert ok
    try:
        qgis_proxy(**http_proxy_settings(3128, proxyUser="", proxyPassword="", authcfg=config.id()))
        assert proxies_for("http://gpu-box:8000")["http"] == "http://cfg-user:cfg%20P%40ss@127.0.0.1:3128"
    finally:
        manager.removeAuthenticationConfig(config.id())


# ------------------------------------------------------------------------------------ (b), (c) end to end
def test_algorithm_goes_through_qgis_proxy(provider_loaded, qgis_proxy, peer, path_mapping, message_log,
                                           tmp_path):
    server_url = f"http://{PEER_HOST}:{peer.port}"
    with RecordingProxy(basic(PROXY_USER, PROXY_PASSWORD), resolve={PEER_HOST: "127.0.0.1"}) as proxy:
        qgis_proxy(**http_proxy_settings(proxy.port))
        error, feedback_log = run_map_floods(server_url, tmp_path)

    seen = {(s.method, s.url) for s in proxy.seen}
    assert ("GET", f"{server_url}/v1/models") in seen
    assert ("POST", f"{server_url}/pooling") in seen
    assert all(s.proxy_authorization == basic(PROXY_USER, PROXY_PASSWORD) for s in proxy.seen)
    # they reached the peer through the proxy (nothing else can resolve vllm-peer.test), without proxy headers
    assert peer.calls("GET", "/v1/models") and peer.calls("POST", "/pooling")
    assert not [r for r in peer.requests if "Proxy-Authorization" in r.headers]
    assert "401" in error or "auth" in error.lower()  # the peer's answer came back through the proxy
    # named in the QGIS log as host:port, once; the password nowhere
    used = [line for line in message_log if f"127.0.0.1:{proxy.port}" in line]
    assert len(used) == 1, message_log
    for text in [error, feedback_log, *message_log]:
        assert PROXY_PASSWORD not in text
        assert "pr0xy" not in text  # nor a quoted or partial form


def test_no_proxy_url_goes_direct(provider_loaded, qgis_proxy, peer, path_mapping, message_log, tmp_path,
                                  monkeypatch):
    server_url = f"http://{PEER_HOST}:{peer.port}"
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # this test's client may resolve the peer's name itself
        return real_getaddrinfo("127.0.0.1" if host == PEER_HOST else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with RecordingProxy(basic(PROXY_USER, PROXY_PASSWORD), resolve={PEER_HOST: "127.0.0.1"}) as proxy:
        qgis_proxy(**http_proxy_settings(proxy.port, noProxyUrls=[f"http://{PEER_HOST}"]))
        error, _ = run_map_floods(server_url, tmp_path)

    assert proxy.seen == []
    assert peer.calls("GET", "/v1/models") and peer.calls("POST", "/pooling")
    assert "401" in error or "auth" in error.lower()
    assert any("no-proxy entry" in line for line in message_log)


def test_loopback_server_goes_direct(provider_loaded, qgis_proxy, peer, message_log, tmp_path):
    with RecordingProxy(basic(PROXY_USER, PROXY_PASSWORD)) as proxy:
        qgis_proxy(**http_proxy_settings(proxy.port))
        run_map_floods(peer.url, tmp_path)
    assert proxy.seen == []
    assert peer.calls("GET", "/v1/models") and peer.calls("POST", "/pooling")


def test_connection_test_goes_through_qgis_proxy(qgis_app, qgis_proxy, peer):
    """Options ▸ Flood Mapper ▸ Test connection builds its own client: it honours the proxy too."""
    from dataclasses import replace

    from floodmapper.plugin.core.settings import Settings
    from floodmapper.plugin.gui.options import describe_server

    peer.on("POST", "/pooling", Reply(400, vllm_error("1 validation error: data_format: Input should be "
                                                      "'b64_json', 'path' or 'url'")))
    server_url = f"http://{PEER_HOST}:{peer.port}"
    with RecordingProxy(basic(PROXY_USER, PROXY_PASSWORD), resolve={PEER_HOST: "127.0.0.1"}) as proxy:
        qgis_proxy(**http_proxy_settings(proxy.port))
        report = describe_server(replace(Settings(), server_url=server_url))
    assert "floodmapper-demo" in report and "image-to-image" in report
    assert ("GET", f"{server_url}/v1/models") in {(s.method, s.url) for s in proxy.seen}
    assert all(s.proxy_authorization == basic(PROXY_USER, PROXY_PASSWORD) for s in proxy.seen)


# ------------------------------------------------------------- QGIS's proxy against the environment's one
def test_qgis_proxy_beats_environment_proxy(qgis_app, qgis_proxy, peer, monkeypatch):
    from floodmapper.plugin.core.vllm_api import VllmClient
    from floodmapper.plugin.toolbelt.proxy import proxies_for

    server_url = f"http://{PEER_HOST}:{peer.port}"
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")  # a dead proxy
    with RecordingProxy(basic(PROXY_USER, PROXY_PASSWORD), resolve={PEER_HOST: "127.0.0.1"}) as proxy:
        qgis_proxy(**http_proxy_settings(proxy.port))
        with VllmClient(server_url, proxies=proxies_for(server_url), retries=0, connect_timeout=3) as client:
            assert client.models() == ["floodmapper-demo"]


def test_direct_beats_environment_proxy(qgis_app, qgis_proxy, peer, monkeypatch):
    from floodmapper.plugin.core.vllm_api import VllmClient
    from floodmapper.plugin.toolbelt.proxy import proxies_for

    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")  # a dead proxy
    qgis_proxy(**http_proxy_settings(3128))
    with VllmClient(peer.url, proxies=proxies_for(peer.url), retries=0, connect_timeout=3) as client:
        assert client.models() == ["floodmapper-demo"]
