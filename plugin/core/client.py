"""HTTP client for a vLLM server that serves a TerraTorch segmentation model.

One pooled `requests.Session` per server: QGIS users run many jobs against one server, and reusing the
connection saves the TCP/TLS set-up every time. urllib3's `Retry` retries only what is safe and useful to
retry: a connection that could not be made, and 502/503/504 (a proxy or a server that is starting). A 400 or
404 will not change on a second try, and a read timeout means the server is busy with our request, so neither
is retried.

Every failure becomes a FloodMapperError subclass whose message says what happened and whose hint says what
to change. Tokens and the Authorization header are redacted from every message and log line: error texts end
up in QGIS's message log, in bug reports and in screenshots.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Union
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    IncompleteRead,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry
from urllib3.util.util import reraise

from .errors import (
    Cancelled,
    ConnectionFailed,
    EngineDied,
    FloodMapperError,
    InputError,
    ServerError,
    TransportUnsupported,
)

log = logging.getLogger("floodmapper.client")

KIND_IMAGE = "image"
KIND_TENSOR = "tensor"

USER_AGENT = "floodmapper-qgis/0.1"
RETRY_STATUSES = (502, 503, 504)
MAX_RETRY_AFTER = 30.0  # seconds; a proxy asking for longer must not freeze a job without cancel
POLL_INTERVAL = 0.1  # seconds between cancel checks while a request runs

# What vLLM 0.32 says to an IOProcessor-shaped request when it runs without the plugin (older versions say
# the second), and what a pydantic validation error of the TerraTorch plugin's RequestData looks like.
_NO_PLUGIN_MARKERS = ("invalid plugin request type", "no ioprocessor plugin")
_PLUGIN_VALIDATION_MARKERS = ("data_format", "input should be", "validation error")
# What vLLM answers to the request its engine died on (v1 engine: EngineDeadError; the older engine's
# AsyncEngineDeadError says the background loop has errored).
_ENGINE_DEAD_MARKERS = ("enginecore encountered", "enginedeaderror", "engine loop is not running",
                        "background loop has errored", "engine core is dead")

_SENSITIVE_QUERY = re.compile(r"(?i)([?&](?:[a-z_-]*(?:token|key|secret|password|sig|auth)[a-z_-]*)=)[^&#\s]+")
_BEARER = re.compile(r"(?i)(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{4,}")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


# --------------------------------------------------------------------------------------------- redaction
class Redactor:
    """Removes secrets from text: configured header values, bearer tokens, URL user-info, key=... queries."""

    def __init__(self, secrets: Optional[list[str]] = None) -> None:
        self.secrets = sorted({s for s in (secrets or []) if s and len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: object) -> str:
        out = str(text)
        for secret in self.secrets:
            out = out.replace(secret, "***")
        out = _BEARER.sub(lambda m: m.group(1) + " ***", out)
        out = _URL_USERINFO.sub(lambda m: m.group(1) + "***@", out)
        return _SENSITIVE_QUERY.sub(lambda m: m.group(1) + "***", out)


def _secrets_of(headers: dict[str, str], proxies: Optional[dict[str, str]]) -> list[str]:
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


# -------------------------------------------------------------------------- cancellable connection tracking
class RawReply(NamedTuple):
    """A 200 answer's body, read whole, and its headers (case-insensitive)."""

    content: bytes
    headers: Any


class _Aborted(Exception):
    """Raised inside a worker thread whose request was cancelled, so urllib3 makes no further attempt."""


_ACTIVE_LOCK = threading.Lock()
_ACTIVE_CONNS: dict[int, Any] = {}  # worker thread id -> the urllib3 connection it is using
_ABORTED_THREADS: set[int] = set()


class _TrackedPoolMixin:
    """Records which connection each thread is using, so a cancel can shut that socket down.

    Closing a `requests.Session` only closes idle pooled connections; the one a blocked `recv` is waiting on
    is checked out of the pool. `shutdown()` on its socket wakes the `recv` at once and makes the server see
    the client go away, which is what makes vLLM abort the request.
    """

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        ident = threading.get_ident()
        with _ACTIVE_LOCK:
            if ident in _ABORTED_THREADS:
                raise _Aborted("request cancelled")
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        with _ACTIVE_LOCK:
            _ACTIVE_CONNS[ident] = conn
        return conn


class _TrackedHTTPPool(_TrackedPoolMixin, HTTPConnectionPool):
    pass


class _TrackedHTTPSPool(_TrackedPoolMixin, HTTPSConnectionPool):
    pass


def _abort_thread_connection(ident: int) -> bool:
    """Shut down the socket a worker thread is blocked on. True if there was one."""
    with _ACTIVE_LOCK:
        _ABORTED_THREADS.add(ident)
        conn = _ACTIVE_CONNS.get(ident)
    sock = getattr(conn, "sock", None) if conn is not None else None
    if sock is None:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side: nothing left to abort
    return True


def _forget_thread(ident: int) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE_CONNS.pop(ident, None)
        _ABORTED_THREADS.discard(ident)


class _TrackingAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _tracked_socks_pools()
        else:
            manager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
        return manager


def _tracked_socks_pools() -> dict[str, type]:
    """SOCKS pools that record their connections too (PySocks is imported only for a SOCKS proxy)."""
    from urllib3.contrib.socks import SOCKSHTTPConnectionPool, SOCKSHTTPSConnectionPool

    class TrackedSocksHTTP(_TrackedPoolMixin, SOCKSHTTPConnectionPool):
        pass

    class TrackedSocksHTTPS(_TrackedPoolMixin, SOCKSHTTPSConnectionPool):
        pass

    return {"http": TrackedSocksHTTP, "https": TrackedSocksHTTPS}


class _Session(requests.Session):
    """A Session whose own proxies (QGIS's proxy settings) win over the HTTP(S)_PROXY environment variables.

    requests lets the environment override `Session.proxies` (psf/requests#2018); QGIS's settings, and a
    "no proxy" ("" = direct) decision made from them, must not be overridden that way.
    """

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        merged = dict(self.proxies)
        merged.update(proxies or {})
        return super().merge_environment_settings(url, merged, stream, verify, cert)


class _Retry(Retry):
    """urllib3's Retry, but a read timeout is never retried and Retry-After is capped.

    A read timeout means the server is working on our request: asking again doubles the wait. A connection
    dropped before any answer *is* retried once (read=1): uvicorn closes the connection after an unhandled
    exception (vLLM's empty 500s), and the next request on that pooled keep-alive connection fails at once
    with "Remote end closed connection" although the server is fine.
    """

    def increment(self, method: Optional[str] = None, url: Optional[str] = None, response: Any = None,
                  error: Optional[Exception] = None, _pool: Any = None, _stacktrace: Any = None) -> Retry:
        if isinstance(error, ReadTimeoutError):
            raise reraise(type(error), error, _stacktrace)
        return super().increment(method, url, response=response, error=error, _pool=_pool,
                                 _stacktrace=_stacktrace)

    def get_retry_after(self, response: Any) -> Optional[float]:
        value = super().get_retry_after(response)
        return None if value is None else min(value, MAX_RETRY_AFTER)


# ------------------------------------------------------------------------------------------------ client
class VllmClient:
    """A vLLM server: health, version, models, /pooling, and which transport it can do."""

    def __init__(
        self,
        base_url: str,
        headers: Optional[dict[str, str]] = None,
        connect_timeout: float = 10,
        read_timeout: float = 600,
        verify: Union[bool, str] = True,
        retries: int = 3,
        backoff: float = 0.5,
        proxies: Optional[dict[str, str]] = None,
        pool_size: int = 8,
    ) -> None:
        self.base_url = _normalise_base_url(base_url)
        self.headers = dict(headers or {})
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.redact = Redactor(_secrets_of(self.headers, proxies))
        if isinstance(verify, str) and verify and not os.path.isfile(verify):
            raise InputError(
                f"The CA bundle '{verify}' does not exist.",
                "Fix the 'CA bundle' setting of the Flood Mapper options (a PEM file of the CA that signed "
                "the server's certificate), or clear it to use the system's CAs.",
            )
        self.verify = verify
        self._version: Optional[str] = None
        self._kinds: dict[str, str] = {}
        self._model_roots: dict[str, str] = {}
        self._lock = threading.Lock()

        retry = _Retry(
            total=None,  # each kind of failure has its own budget below
            connect=self.retries,
            read=1,  # one re-send after a dropped keep-alive connection; never after a read timeout
            status=self.retries,
            other=0,  # TLS failures and the like are configuration problems
            redirect=0,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "POST", "HEAD"}),  # /pooling is idempotent
            backoff_factor=self.backoff,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = _TrackingAdapter(max_retries=retry, pool_connections=2, pool_maxsize=max(1, pool_size))
        session = _Session()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        session.headers.update(self.headers)
        session.verify = verify
        if proxies:
            session.proxies.update(proxies)
        self.session = session

    # ---------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> VllmClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VllmClient({self.redact(self.base_url)!r})"

    # ------------------------------------------------------------------------------------- small GETs
    @property
    def _meta_timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, min(self.read_timeout, 60.0))

    def health(self) -> bool:
        """True when /health answers 200. Never raises: it answers "can I use the server now?"."""
        try:
            response = self.session.get(self._url("/health"), timeout=(self.connect_timeout, 10.0),
                                        verify=self.verify)
        except requests.RequestException as exc:
            log.debug("health check of %s failed: %s", self.redact(self.base_url), self.redact(exc))
            return False
        return response.status_code == 200

    def version(self) -> str:
        """The server's vLLM version ("" if it does not say); asked once per client."""
        with self._lock:
            if self._version is not None:
                return self._version
        response = self._request("GET", "/version", timeout=self._meta_timeout)
        if response.status_code == 404:
            version = ""
        else:
            self._raise_for_status(response, "/version")
            body = self._json(response, "/version")
            version = str(body.get("version", "")) if isinstance(body, dict) else ""
        with self._lock:
            self._version = version
        return version

    def models(self) -> list[str]:
        """The model names the server serves (the ids of GET /v1/models)."""
        response = self._request("GET", "/v1/models", timeout=self._meta_timeout)
        self._raise_for_status(response, "/v1/models")
        body = self._json(response, "/v1/models")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
            raise ServerError(
                f"{self._where()} answered /v1/models with something that is not a model list.",
                "Check that the server URL points at a vLLM server (not at a web page or another API).",
                status=response.status_code,
            )
        self._model_roots = {str(m["id"]): str(m.get("root") or "") for m in data}
        return [str(m["id"]) for m in data]

    def model_root(self, name: str) -> str:
        """The `root` /v1/models gives for a served model (the folder or hub id vLLM loaded), "" if unknown."""
        if name not in self._model_roots:
            self.models()
        return self._model_roots.get(name, "")

    def resolve_model(self, name: str = "") -> str:
        """The served model name to put in requests: `name` checked against the server, or its only model."""
        models = self.models()
        if not models:
            raise ServerError(f"{self._where()} serves no model.", "Start vLLM with a model (vllm serve MODEL).")
        name = (name or "").strip()
        if not name:
            if len(models) == 1:
                return models[0]
            raise InputError(
                f"{self._where()} serves several models: {', '.join(models)}.",
                "Choose one of them in the 'Model' parameter.",
            )
        if name in models:
            return name
        wanted = os.path.normpath(name)
        by_root = [m for m, root in self._model_roots.items() if root and os.path.normpath(root) == wanted]
        if len(by_root) == 1:
            return by_root[0]
        raise InputError(
            f"{self._where()} does not serve the model '{name}'; it serves: {', '.join(models)}.",
            "Use one of those names in the 'Model' parameter (or leave it empty when there is only one).",
        )

    # ------------------------------------------------------------------------------------------ /pooling
    def pooling(
        self,
        payload: dict,
        cancel: Optional[Callable[[], bool]] = None,
        on_wait: Optional[Callable[[float], None]] = None,
    ) -> dict:
        """POST /pooling and return the JSON answer; cancellable within ~POLL_INTERVAL.

        The request runs in a worker thread while this thread polls `cancel`: a vLLM request can run for
        minutes, and a QGIS task must stop within a second when the user presses Cancel. On cancel the
        socket is shut down, so vLLM sees the disconnect and drops the request instead of finishing it.
        `on_wait(elapsed_seconds)` is called at every poll, for progress reporting.
        """
        body = json.dumps(payload).encode()
        tensor_request = "messages" in payload and "data" not in payload
        result: dict[str, Any] = {}
        started = threading.Event()

        def work() -> None:
            result["ident"] = threading.get_ident()
            started.set()
            try:
                result["response"] = self.session.post(
                    self._url("/pooling"),
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=(self.connect_timeout, self.read_timeout),
                    verify=self.verify,
                )
            except BaseException as exc:  # handed over to the calling thread, which maps or re-raises it
                result["error"] = exc
            finally:
                _forget_thread(threading.get_ident())

        worker = threading.Thread(target=work, name="floodmapper-pooling", daemon=True)
        log.debug("POST %s/pooling (%d bytes)", self.redact(self.base_url), len(body))
        t0 = time.monotonic()
        worker.start()
        started.wait()
        deadline = t0 + self._total_budget()
        while worker.is_alive():
            worker.join(POLL_INTERVAL)
            if not worker.is_alive():
                break
            if cancel is not None and cancel():
                self._abort(worker, result["ident"])
                raise Cancelled()
            if time.monotonic() > deadline:
                self._abort(worker, result["ident"])
                raise ConnectionFailed(
                    f"{self._where()} gave no complete answer in {self._total_budget():.0f} s.",
                    "The server may be overloaded or the network stalled; raise the read timeout in the "
                    "Flood Mapper options, or try a smaller raster.",
                )
            if on_wait is not None:
                on_wait(time.monotonic() - t0)
        if "error" in result:
            exc = result["error"]
            if isinstance(exc, _Aborted):
                raise Cancelled()
            if isinstance(exc, requests.RequestException):
                raise self._map_exception(exc, "/pooling") from None
            raise exc
        response = result["response"]
        log.debug("/pooling answered %s in %.2f s", response.status_code, time.monotonic() - t0)
        if response.status_code != 200:
            self._raise_for_status(response, "/pooling", tensor_request=tensor_request,
                                   model=str(payload.get("model", "")))
        answer = self._json(response, "/pooling")
        if not isinstance(answer, dict):
            raise ServerError(
                f"{self._where()} answered /pooling with JSON that is not an object.",
                "Check that the URL points at a vLLM server and not at another service.",
                status=response.status_code,
            )
        return answer

    def post_bytes(self, path: str, body: bytes, model: str = "", tensor_request: bool = True) -> bytes:
        """POST a pre-encoded JSON body in the calling thread and return the raw answer body."""
        return self.post_raw(path, body, model=model, tensor_request=tensor_request).content

    def post_raw(self, path: str, body: bytes, model: str = "", tensor_request: bool = True) -> RawReply:
        """POST a pre-encoded JSON body in the calling thread; the 200 answer's body and headers.

        For transports that run many requests from their own worker threads (tensor tiles): the session,
        retries, TLS and error mapping are the same as pooling()'s, and a cancel from another thread works
        through `_abort_thread_connection(thread id)`; the caller calls `_forget_thread(thread id)` after
        each request so that a pooled thread can be reused. The headers matter for vLLM's binary answers
        (`encoding_format: "bytes"`), whose shape and dtype come in a `metadata` header. The body is read in
        one call rather than in requests' 10 kB chunks (~100 Python-level reads per megabyte otherwise).
        """
        # The read timeout bounds each wait for bytes, not the whole answer: a server (or proxy) trickling a
        # byte now and then would hold the job forever. Past the same wall-clock budget as pooling()'s, a
        # timer shuts this thread's socket down.
        budget = self._total_budget()
        ident = threading.get_ident()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _abort_thread_connection(ident)

        timer = threading.Timer(budget, expire)
        timer.daemon = True
        timer.start()
        try:
            response = self.session.post(
                self._url(path), data=body, headers={"Content-Type": "application/json"},
                timeout=(self.connect_timeout, self.read_timeout), verify=self.verify, stream=True,
            )
            if response.status_code != 200:
                with response:
                    _ = response.content  # the (small) error body, read here where errors are mapped
                self._raise_for_status(response, path, tensor_request=tensor_request, model=model)
            # fully read -> urllib3 puts the connection back into the pool
            content = response.raw.read(decode_content=True)
        except (_Aborted, requests.RequestException, HTTPError, OSError) as exc:
            timer.cancel()
            if expired.is_set():
                _forget_thread(ident)
                raise ConnectionFailed(
                    f"{self._where()} gave no complete answer in {budget:.0f} s.",
                    "The server may be overloaded or the network stalled; raise the read timeout in the "
                    "Flood Mapper options, or try a smaller raster.",
                ) from None
            with _ACTIVE_LOCK:
                aborted = threading.get_ident() in _ABORTED_THREADS
            if aborted or isinstance(exc, _Aborted):  # our own shutdown() made the socket fail
                raise Cancelled() from None
            raise self._map_exception(exc, path) from None
        finally:
            timer.cancel()
        return RawReply(content, response.headers)

    def _total_budget(self) -> float:
        """A wall-clock cap on one /pooling call, so that nothing ever waits forever (e.g. a trickling body)."""
        attempts = self.retries + 1
        return attempts * (self.connect_timeout + self.read_timeout) + attempts * MAX_RETRY_AFTER

    def _abort(self, worker: threading.Thread, ident: int) -> None:
        """Shut the worker's socket down (repeatedly for ~1 s: it may be between connect and send)."""
        until = time.monotonic() + 1.0
        while worker.is_alive() and time.monotonic() < until:
            _abort_thread_connection(ident)
            worker.join(0.05)
        if not worker.is_alive():
            # the last mark may have landed after the worker forgot itself: clear it, or a later thread that
            # reuses this ident would find its request "cancelled"
            _forget_thread(ident)

    # ---------------------------------------------------------------------------------------- server kind
    def server_kind(self, model: str) -> str:
        """KIND_IMAGE if the server runs the IOProcessor plugin (image-to-image), else KIND_TENSOR.

        One server does one transport (CONTRACT.md): with the plugin a tensor request fails with an empty
        500, without it an image request cannot work. The probe is an image request with an invalid
        `data_format`: the plugin rejects it in validation (400 naming data_format) before touching any
        file or the engine, and a server without the plugin rejects the IOProcessor-shaped request itself
        (400 "Invalid plugin request type", or "No IOProcessor plugin installed" in older vLLM). So the probe
        costs one cheap round trip and never loads the model. Cached per server and model.
        """
        with self._lock:
            if model in self._kinds:
                return self._kinds[model]
        probe = {
            "model": model,
            "data": {"data": "", "data_format": "floodmapper-probe", "out_data_format": "b64_json"},
        }
        response = self._request("POST", "/pooling", timeout=self._meta_timeout, json=probe)
        message = _error_message(response)
        low = message.lower()
        if response.status_code == 400 and any(m in low for m in _NO_PLUGIN_MARKERS):
            kind = KIND_TENSOR
        elif response.status_code == 400 and any(m in low for m in _PLUGIN_VALIDATION_MARKERS):
            kind = KIND_IMAGE
        elif response.status_code in (400, 422, 500):
            raise ServerError(
                f"Could not tell whether {self._server()} runs the TerraTorch IOProcessor plugin: "
                f"it answered the probe with HTTP {response.status_code}: {self.redact(message) or '(empty)'}.",
                "Start the server with '--io-processor-plugin terratorch_segmentation' for image-to-image, "
                "or without it (and with --enable-mm-embeds) for tensor-to-tensor.",
                status=response.status_code,
            )
        else:
            self._raise_for_status(response, "/pooling", model=model)
            raise ServerError(
                f"{self._where()} accepted an invalid probe request (HTTP {response.status_code}); "
                "it does not behave like vLLM with a TerraTorch model.",
                "Check that the server URL points at vLLM serving a TerraTorch segmentation model.",
                status=response.status_code,
            )
        with self._lock:
            self._kinds[model] = kind
        log.debug("%s serves %s as a %s server", self.redact(self.base_url), model, kind)
        return kind

    # ------------------------------------------------------------------------------------------ plumbing
    def _url(self, path: str) -> str:
        return self.base_url + path

    def _where(self) -> str:
        return f"The vLLM server at {self.redact(self.base_url)}"

    def _server(self) -> str:
        return f"the vLLM server at {self.redact(self.base_url)}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        # Per request: a session-level `verify` loses against REQUESTS_CA_BUNDLE in requests' merge.
        kwargs.setdefault("verify", self.verify)
        try:
            return self.session.request(method, self._url(path), **kwargs)
        except requests.RequestException as exc:
            raise self._map_exception(exc, path) from None

    def _json(self, response: requests.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            snippet = self.redact(response.text[:200]).strip().replace("\n", " ")
            ctype = response.headers.get("Content-Type", "?")
            raise ServerError(
                f"{self._where()} answered {path} with something that is not JSON ({ctype}): {snippet!r}.",
                "Check that the server URL points at vLLM itself; a login page or proxy error page means "
                "a proxy in front of it needs configuring.",
                status=response.status_code,
            ) from None

    def _map_exception(self, exc: BaseException, path: str) -> FloodMapperError:
        """Turn a requests/urllib3 exception into a FloodMapperError with a fix."""
        where = self._where()
        causes = list(_causes(exc))
        detail = self.redact(_innermost(causes))
        if isinstance(exc, requests.exceptions.SSLError) or any(
            isinstance(c, (ssl.SSLError, ssl.CertificateError)) for c in causes
        ):
            return ConnectionFailed(
                f"TLS failed with {self._server()}: {detail}.",
                "If the server uses a private CA or a self-signed certificate, set the 'CA bundle' setting "
                "of the Flood Mapper options to its CA certificate (PEM); check that the URL's scheme "
                "(http/https) matches the server.",
            )
        if isinstance(exc, requests.exceptions.ProxyError):
            return ConnectionFailed(
                f"The proxy in front of {self._server()} failed: {detail}.",
                "Check the proxy settings of QGIS (Settings > Options > Network) or the "
                "HTTP(S)_PROXY/NO_PROXY environment variables.",
            )
        if any(isinstance(c, (NameResolutionError, socket.gaierror)) for c in causes):
            host = urlsplit(self.base_url).hostname
            return ConnectionFailed(
                f"The host name '{host}' of the server URL could not be resolved (DNS).",
                "Check the server URL for typos, and your network/VPN connection.",
            )
        if isinstance(exc, requests.exceptions.ConnectTimeout) or any(
            isinstance(c, ConnectTimeoutError) and not isinstance(c, NewConnectionError) for c in causes
        ):
            return ConnectionFailed(
                f"Connecting to {self._server()} timed out after {self.connect_timeout:g} s.",
                "Check that the server is running and reachable (firewall, VPN), or raise the connect "
                "timeout in the Flood Mapper options.",
            )
        if isinstance(exc, requests.exceptions.ReadTimeout) or any(
            isinstance(c, (ReadTimeoutError, socket.timeout, TimeoutError)) for c in causes
        ):
            return ConnectionFailed(
                f"{where} did not answer {path} within the read timeout of {self.read_timeout:g} s.",
                "The server is busy or the raster is large: raise the read timeout in the Flood Mapper "
                "options, use a smaller raster, or check the server's log.",
            )
        if any(_is_refused(c) for c in causes):
            return ConnectionFailed(
                f"Connection refused by {self.redact(self.base_url)}: nothing is listening there.",
                "Start the vLLM server (or the local engine) or fix the server URL and port.",
            )
        if isinstance(exc, requests.exceptions.ChunkedEncodingError) or any(
            isinstance(c, IncompleteRead) or isinstance(c, http.client.IncompleteRead) for c in causes
        ):
            return ServerError(
                f"{where} sent a truncated answer to {path} (the connection closed mid-body).",
                "The server or a proxy in front of it dropped the connection; check the server's log and "
                "retry.",
            )
        if any(isinstance(c, (http.client.RemoteDisconnected, ConnectionResetError, ProtocolError,
                              BrokenPipeError)) for c in causes):
            return ConnectionFailed(
                f"{where} closed the connection without answering {path}.",
                "The server may have crashed or restarted (check its /health and its log), or a proxy "
                "cut the connection.",
            )
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                            requests.exceptions.InvalidSchema)):
            return InputError(
                f"The server URL {self.redact(self.base_url)} is not valid: {detail}.",
                "Use a URL like http://127.0.0.1:8000.",
            )
        if isinstance(exc, requests.exceptions.RetryError):
            return ServerError(
                f"{where} kept answering {path} with an error after {self.retries} retries: {detail}.",
                "The server (or a proxy in front of it) is overloaded or starting; wait and retry.",
            )
        return ConnectionFailed(
            f"The request to {self._server()} ({path}) failed: {detail}.",
            "Check the server URL and that the server is running.",
        )

    def _raise_for_status(self, response: requests.Response, path: str, tensor_request: bool = False,
                          model: str = "") -> None:
        """Raise the mapped error for a non-2xx answer; return for 2xx."""
        status = response.status_code
        if 200 <= status < 300:
            return
        message = self.redact(_error_message(response))
        where = self._where()
        if status in (401, 403, 407):
            raise ServerError(
                f"{where} refused the request to {path} (HTTP {status}: {message or 'not authorised'}).",
                "Check the authentication configuration in the Flood Mapper options (the token or "
                "header the server or the proxy in front of vLLM expects); vLLM's --api-key protects only "
                "/v1 paths, so a refusal on /pooling comes from a proxy.",
                status=status,
            )
        if status == 404:
            if _is_route_not_found(response):
                raise ServerError(
                    f"{where} has no {path} endpoint (HTTP 404).",
                    "The URL must be the server root (e.g. http://host:8000, without /v1), and the server "
                    "must be vLLM serving a pooling model (vLLM >= 0.10.2).",
                    status=status,
                )
            listing = self._models_listing()
            raise ServerError(
                f"{where} does not know the model '{model}' (HTTP 404: {message}).{listing}",
                "Use the name /v1/models lists (leave the model empty when there is only one).",
                status=status,
            )
        if status == 400:
            raise ServerError(
                f"{where} rejected the request: {message or '(no message)'}.",
                "This is usually a parameter the server cannot use (bands, paths, model); the message "
                "above is the server's own.",
                status=status,
            )
        if status in (500, 503) and any(m in message.lower() for m in _ENGINE_DEAD_MARKERS):
            raise EngineDied(
                f"The engine of {self._server()} stopped while it processed {path} and must be restarted "
                f"(HTTP {status}: {message}).",
                "Until it is restarted every request fails, for everyone using it. The usual cause is a request "
                "the model cannot take: tensors in another dtype than the server's --dtype, or tiles of another "
                "shape than the model's input. The server's log has the traceback.",
                status=status,
            )
        if status == 500 and tensor_request and message.strip() in ("", "Internal Server Error"):
            raise TransportUnsupported(
                f"{where} runs the TerraTorch IOProcessor plugin, so it cannot answer tensor-to-tensor "
                "requests (HTTP 500 with an empty message).",
                "Use the image transport with this server, or start a second server without "
                "'--io-processor-plugin' for the tensor transport.",
            )
        if status == 500:
            raise ServerError(
                f"{where} failed while processing {path} (HTTP 500): {message or '(no message)'}.",
                "See the server's log for the traceback; a missing input file, an unreadable raster or a "
                "model that needs location (a CRS) are common causes.",
                status=status,
            )
        if status in RETRY_STATUSES:
            raise ServerError(
                f"{where} is unavailable (HTTP {status}{': ' + message if message else ''}), "
                f"still after {self.retries} {'retry' if self.retries == 1 else 'retries'}.",
                "The server is starting, overloaded, or its engine died (check /health and the log); "
                "a 502/504 comes from a proxy in front of it.",
                status=status,
            )
        if status == 413:
            raise ServerError(
                f"A proxy in front of {self._server()} refused the request as too large (HTTP 413).",
                "Raise the proxy's body size limit (vLLM itself has none).",
                status=status,
            )
        raise ServerError(
            f"{where} answered {path} with HTTP {status}: {message or '(no message)'}.",
            "Check the server URL and the server's log.",
            status=status,
        )

    def _models_listing(self) -> str:
        try:
            return f" It serves: {', '.join(self.models())}."
        except FloodMapperError as exc:  # the listing is a courtesy; the 404 itself is the error to report
            log.debug("could not list models: %s", exc)
            return ""


# ----------------------------------------------------------------------------------------------- helpers
def _normalise_base_url(url: str) -> str:
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


def _causes(exc: BaseException):
    """Every exception in the chain: args, reason, __cause__, __context__ (urllib3 nests them deeply)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (getattr(current, "reason", None), current.__cause__, current.__context__,
                    getattr(current, "original_error", None), *getattr(current, "args", ())):
            if isinstance(nxt, BaseException):
                stack.append(nxt)


def _innermost(causes: list[BaseException]) -> str:
    for cause in reversed(causes):
        text = str(cause).strip()
        if text:
            return text
    return type(causes[0]).__name__ if causes else "unknown error"


def _is_refused(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError):
        return True
    return isinstance(exc, OSError) and getattr(exc, "errno", None) == errno.ECONNREFUSED


def _error_message(response: requests.Response) -> str:
    """vLLM's error.message (or older/FastAPI shapes); the raw text if the body is not JSON."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or "")
        if isinstance(err, str):
            return err
        if "message" in body:
            return str(body.get("message") or "")
        if "detail" in body:
            return str(body["detail"])
    return ""


def _is_route_not_found(response: requests.Response) -> bool:
    """A 404 from the web framework (no such path) rather than vLLM's 'model does not exist'."""
    try:
        body = response.json()
    except ValueError:
        return True
    return isinstance(body, dict) and body.get("detail") == "Not Found"
