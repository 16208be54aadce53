"""What went wrong with a server, for the user: HTTP statuses and network exceptions as errors with a fix.

Every failure becomes a FloodMapperError subclass whose message says what happened and whose hint says what
to change. Texts pass through the client's Redactor: they end up in QGIS's log and in bug reports.
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
from collections.abc import Iterator
from typing import Callable

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    IncompleteRead,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from .errors import ConnectionFailed, EngineDied, FloodMapperError, InputError, ServerError, TransportUnsupported
from .http import RETRY_STATUSES
from .redact import Redactor

# What vLLM answers to the request its engine died on (v1 engine: EngineDeadError; the older engine's
# AsyncEngineDeadError says the background loop has errored).
ENGINE_DEAD_MARKERS = ("enginecore encountered", "enginedeaderror", "engine loop is not running",
                       "background loop has errored", "engine core is dead")


class ServerErrors:
    """Turns one server's failures into errors that name it (redacted) and say what to do."""

    def __init__(self, base_url: str, redact: Redactor, connect_timeout: float, read_timeout: float,
                 retries: int, list_models: Callable[[], str]) -> None:
        self.base_url = base_url
        self.redact = redact
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.list_models = list_models  # " It serves: a, b." (or "") for a 404 on an unknown model

    @property
    def where(self) -> str:
        return f"The vLLM server at {self.redact(self.base_url)}"

    @property
    def server(self) -> str:
        return f"the vLLM server at {self.redact(self.base_url)}"

    # ------------------------------------------------------------------------------------------ exceptions
    def from_exception(self, exc: BaseException, path: str) -> FloodMapperError:
        """A requests/urllib3 exception as a FloodMapperError with a fix."""
        where = self.where
        causes = list(_causes(exc))
        detail = self.redact(_innermost(causes))
        if isinstance(exc, requests.exceptions.SSLError) or any(
            isinstance(c, (ssl.SSLError, ssl.CertificateError)) for c in causes
        ):
            return ConnectionFailed(
                f"TLS failed with {self.server}: {detail}.",
                "If the server uses a private CA or a self-signed certificate, set the 'CA bundle' setting "
                "of the Flood Mapper options to its CA certificate (PEM); check that the URL's scheme "
                "(http/https) matches the server.",
            )
        if isinstance(exc, requests.exceptions.ProxyError):
            return ConnectionFailed(
                f"The proxy in front of {self.server} failed: {detail}.",
                "Check the proxy settings of QGIS (Settings > Options > Network) or the "
                "HTTP(S)_PROXY/NO_PROXY environment variables.",
            )
        if any(isinstance(c, (NameResolutionError, socket.gaierror)) for c in causes):
            from urllib.parse import urlsplit

            host = urlsplit(self.base_url).hostname
            return ConnectionFailed(
                f"The host name '{host}' of the server URL could not be resolved (DNS).",
                "Check the server URL for typos, and your network/VPN connection.",
            )
        if isinstance(exc, requests.exceptions.ConnectTimeout) or any(
            isinstance(c, ConnectTimeoutError) and not isinstance(c, NewConnectionError) for c in causes
        ):
            return ConnectionFailed(
                f"Connecting to {self.server} timed out after {self.connect_timeout:g} s.",
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
            return transient(ConnectionFailed(
                f"Connection refused by {self.redact(self.base_url)}: nothing is listening there.",
                "Start the vLLM server (or the local engine) or fix the server URL and port.",
            ))
        if isinstance(exc, requests.exceptions.ChunkedEncodingError) or any(
            isinstance(c, (IncompleteRead, http.client.IncompleteRead)) for c in causes
        ):
            return transient(ServerError(
                f"{where} sent a truncated answer to {path} (the connection closed mid-body).",
                "The server or a proxy in front of it dropped the connection; check the server's log and "
                "retry.",
            ))
        if any(isinstance(c, (http.client.RemoteDisconnected, ConnectionResetError, ProtocolError,
                              BrokenPipeError)) for c in causes):
            return transient(ConnectionFailed(
                f"{where} closed the connection without answering {path}.",
                "The server may have crashed or restarted (check its /health and its log), or a proxy "
                "cut the connection.",
            ))
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                            requests.exceptions.InvalidSchema)):
            return InputError(
                f"The server URL {self.redact(self.base_url)} is not valid: {detail}.",
                "Use a URL like http://127.0.0.1:8000.",
            )
        if isinstance(exc, requests.exceptions.RetryError):
            return transient(ServerError(
                f"{where} kept answering {path} with an error after {self.retries} retries: {detail}.",
                "The server (or a proxy in front of it) is overloaded or starting; wait and retry.",
            ))
        return ConnectionFailed(
            f"The request to {self.server} ({path}) failed: {detail}.",
            "Check the server URL and that the server is running.",
        )

    def too_large(self, size: int, limit: int, declared: bool = True) -> ServerError:
        """An answer longer than the request's answer can be: refused before it fills the memory."""
        how = f"announces {size:,} bytes" if declared else f"went on past {limit:,} bytes"
        return ServerError(
            f"The answer of {self.server} to /pooling {how}; this request's answer is at most {limit:,} bytes.",
            "Something other than vLLM may be answering (a proxy, another service): check the server URL "
            "and the server's log.",
        )

    def too_slow(self, budget: float) -> ConnectionFailed:
        """A request that outlived its wall-clock budget (its socket was shut down)."""
        return ConnectionFailed(
            f"{self.where} gave no complete answer in {budget:.0f} s.",
            "The server may be overloaded or the network stalled; raise the read timeout in the "
            "Flood Mapper options, or try a smaller raster.",
        )

    # ------------------------------------------------------------------------------------------- statuses
    def raise_for_status(self, response: requests.Response, path: str, tensor_request: bool = False,
                         model: str = "") -> None:
        """Raise the error for a non-2xx answer; return for 2xx."""
        status = response.status_code
        if 200 <= status < 300:
            return
        message = self.redact(error_message(response))
        where = self.where
        if status in (401, 403, 407):
            raise ServerError(
                f"{where} refused the request to {path} (HTTP {status}: {message or 'not authorised'}).",
                "Check the authentication configuration in the Flood Mapper options (the token or "
                "header the server or the proxy in front of vLLM expects); vLLM's --api-key protects only "
                "/v1 paths, so a refusal on /pooling comes from a proxy.",
                status=status,
            )
        if status == 404:
            if is_route_not_found(response):
                raise ServerError(
                    f"{where} has no {path} endpoint (HTTP 404).",
                    "The URL must be the server root (e.g. http://host:8000, without /v1), and the server "
                    "must be vLLM serving a pooling model (vLLM >= 0.10.2).",
                    status=status,
                )
            raise ServerError(
                f"{where} does not know the model '{model}' (HTTP 404: {message}).{self.list_models()}",
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
        if status in (500, 503) and engine_died(message):
            raise EngineDied(
                f"The engine of {self.server} stopped while it processed {path} and must be restarted "
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
            raise transient(ServerError(
                f"{where} is unavailable (HTTP {status}{': ' + message if message else ''}), "
                f"still after {self.retries} {'retry' if self.retries == 1 else 'retries'}.",
                "The server is starting, overloaded, or its engine died (check /health and the log); "
                "a 502/504 comes from a proxy in front of it.",
                status=status,
            ))
        if status == 413:
            raise ServerError(
                f"A proxy in front of {self.server} refused the request as too large (HTTP 413).",
                "Raise the proxy's body size limit (vLLM itself has none).",
                status=status,
            )
        raise ServerError(
            f"{where} answered {path} with HTTP {status}: {message or '(no message)'}.",
            "Check the server URL and the server's log.",
            status=status,
        )

    def not_json(self, response: requests.Response, path: str) -> ServerError:
        snippet = self.redact(response.text[:200]).strip().replace("\n", " ")
        ctype = response.headers.get("Content-Type", "?")
        return ServerError(
            f"{self.where} answered {path} with something that is not JSON ({ctype}): {snippet!r}.",
            "Check that the server URL points at vLLM itself; a login page or proxy error page means "
            "a proxy in front of it needs configuring.",
            status=response.status_code,
        )


def transient(error: FloodMapperError) -> FloodMapperError:
    """Mark an error as the server being away for now (see FloodMapperError.transient)."""
    error.transient = True
    return error


def engine_died(message: str) -> bool:
    low = message.lower()
    return any(marker in low for marker in ENGINE_DEAD_MARKERS)


def error_message(response: requests.Response) -> str:
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


def is_route_not_found(response: requests.Response) -> bool:
    """A 404 from the web framework (no such path) rather than vLLM's 'model does not exist'."""
    try:
        body = response.json()
    except ValueError:
        return True
    return isinstance(body, dict) and body.get("detail") == "Not Found"


def _causes(exc: BaseException) -> Iterator[BaseException]:
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
