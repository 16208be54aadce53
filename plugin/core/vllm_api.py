"""The vLLM server's API as the plugin uses it: health, version, models, which transport it serves, /pooling.

Sessions, retries and cancel are http.py's; turning failures into messages is server_errors.py's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Callable, NamedTuple, Optional, Union

import requests
from urllib3.exceptions import HTTPError

from . import http as http_session
from .errors import Cancelled, FloodMapperError, InputError, ServerError
from .http import EXPIRED, WATCHDOG, Aborted, CancelToken, make_session
from .redact import Redactor, secrets_of
from .server_errors import ServerErrors, error_message
from .urls import normalise_server_url

log = logging.getLogger("floodmapper.client")

DEFAULT_MAX_ANSWER = 256 * 1024 * 1024  # bytes; callers that know their answer's size pass a tighter bound
KIND_IMAGE = "image"
KIND_TENSOR = "tensor"

# What vLLM 0.32 says to an IOProcessor-shaped request when it runs without the plugin (older versions say
# the second), and what a pydantic validation error of the TerraTorch plugin's RequestData looks like.
_NO_PLUGIN_MARKERS = ("invalid plugin request type", "no ioprocessor plugin")
_PLUGIN_VALIDATION_MARKERS = ("data_format", "input should be", "validation error")


class RawReply(NamedTuple):
    """A 200 answer's body, read whole, and its headers (case-insensitive)."""

    content: bytes
    headers: Any


def _content_encoded(headers: Any) -> bool:
    """Whether an answer's body is compressed (gzip, deflate...) and needs urllib3 to decode it. One that is not is
    read as it comes: urllib3 2's decoding path hands the body back through a BytesIO, copying each answer (a
    megabyte of logits per tile) into fresh memory once more."""
    return headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")


class VllmClient:
    """One vLLM server: health, version, models, /pooling, and which transport it can do."""

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
        self.base_url = normalise_server_url(base_url)
        self.headers = dict(headers or {})
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.retries = int(retries)
        self.redact = Redactor(secrets_of(self.headers, proxies))
        if isinstance(verify, str) and verify and not os.path.isfile(verify):
            raise InputError(
                f"The CA bundle '{verify}' does not exist.",
                "Fix the 'CA bundle' setting of the Flood Mapper options (a PEM file of the CA that signed "
                "the server's certificate), or clear it to use the system's CAs.",
            )
        self.verify = verify
        self.errors = ServerErrors(self.base_url, self.redact, self.connect_timeout, self.read_timeout,
                                   self.retries, self._models_listing)
        self.session = make_session(self.headers, verify, proxies, self.retries, float(backoff), pool_size)
        self._version: Optional[str] = None
        self._kinds: dict[str, str] = {}
        self._model_roots: dict[str, str] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------- lifecycle
    def rebase(self, base_url: str) -> None:
        """The same server at another address (a local engine started again on another port)."""
        self.base_url = self.errors.base_url = normalise_server_url(base_url)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> VllmClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VllmClient({self.redact(self.base_url)!r})"

    @property
    def total_budget(self) -> float:
        """A wall-clock cap on one /pooling call, so that nothing ever waits forever (e.g. a trickling body)."""
        attempts = self.retries + 1
        return attempts * (self.connect_timeout + self.read_timeout) + attempts * http_session.MAX_RETRY_AFTER

    # ------------------------------------------------------------------------------------- small GETs
    @property
    def _meta_timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, min(self.read_timeout, 60.0))

    def health(self) -> bool:
        """True when /health answers 200. Never raises: it answers "can I use the server now?"."""
        try:
            response = self.session.get(self.base_url + "/health", timeout=(self.connect_timeout, 10.0),
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
            self.errors.raise_for_status(response, "/version")
            body = self._json(response, "/version")
            version = str(body.get("version", "")) if isinstance(body, dict) else ""
        with self._lock:
            self._version = version
        return version

    def models(self) -> list[str]:
        """The model names the server serves (the ids of GET /v1/models)."""
        response = self._request("GET", "/v1/models", timeout=self._meta_timeout)
        self.errors.raise_for_status(response, "/v1/models")
        body = self._json(response, "/v1/models")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
            raise ServerError(
                f"{self.errors.where} answered /v1/models with something that is not a model list.",
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
        where = self.errors.where
        if not models:
            raise ServerError(f"{where} serves no model.", "Start vLLM with a model (vllm serve MODEL).")
        name = (name or "").strip()
        if not name:
            if len(models) == 1:
                return models[0]
            raise InputError(
                f"{where} serves several models: {', '.join(models)}.",
                "Choose one of them in the 'Model' parameter.",
            )
        if name in models:
            return name
        wanted = os.path.normpath(name)
        by_root = [m for m, root in self._model_roots.items() if root and os.path.normpath(root) == wanted]
        if len(by_root) == 1:
            return by_root[0]
        raise InputError(
            f"{where} does not serve the model '{name}'; it serves: {', '.join(models)}.",
            "Use one of those names in the 'Model' parameter (or leave it empty when there is only one).",
        )

    def server_kind(self, model: str) -> str:
        """KIND_IMAGE if the server runs the IOProcessor plugin (image-to-image), else KIND_TENSOR.

        One server does one transport: with the plugin a tensor request fails with an empty 500, without it
        an image request cannot work. The probe is an image request with an invalid `data_format`: the plugin
        rejects it in validation (400 naming data_format) before touching any file or the engine, and a server
        without the plugin rejects the IOProcessor-shaped request itself (400 "Invalid plugin request type",
        or "No IOProcessor plugin installed" in older vLLM). One cheap round trip that never reaches the
        model. Cached per model.
        """
        with self._lock:
            if model in self._kinds:
                return self._kinds[model]
        probe = {
            "model": model,
            "data": {"data": "", "data_format": "floodmapper-probe", "out_data_format": "b64_json"},
        }
        response = self._request("POST", "/pooling", timeout=self._meta_timeout, json=probe)
        message = error_message(response)
        low = message.lower()
        if response.status_code == 400 and any(m in low for m in _NO_PLUGIN_MARKERS):
            kind = KIND_TENSOR
        elif response.status_code == 400 and any(m in low for m in _PLUGIN_VALIDATION_MARKERS):
            kind = KIND_IMAGE
        elif response.status_code in (400, 422, 500):
            raise ServerError(
                f"Could not tell whether {self.errors.server} runs the TerraTorch IOProcessor plugin: it "
                f"answered the probe with HTTP {response.status_code}: {self.redact(message) or '(empty)'}.",
                "Start the server with '--io-processor-plugin terratorch_segmentation' for image-to-image, "
                "or without it (and with --enable-mm-embeds) for tensor-to-tensor.",
                status=response.status_code,
            )
        else:
            self.errors.raise_for_status(response, "/pooling", model=model)
            raise ServerError(
                f"{self.errors.where} accepted an invalid probe request (HTTP {response.status_code}); "
                "it does not behave like vLLM with a TerraTorch model.",
                "Check that the server URL points at vLLM serving a TerraTorch segmentation model.",
                status=response.status_code,
            )
        with self._lock:
            self._kinds[model] = kind
        log.debug("%s serves %s as a %s server", self.redact(self.base_url), model, kind)
        return kind

    # ------------------------------------------------------------------------------------------ /pooling
    def pooling(self, payload: dict, cancel: Optional[Callable[[], bool]] = None,
                on_wait: Optional[Callable[[float], None]] = None, max_bytes: int = DEFAULT_MAX_ANSWER) -> dict:
        """POST /pooling (an image-to-image request) and return the JSON answer.

        `cancel()` is looked at every tenth of a second while the request runs; when it turns true the socket
        is shut down, so vLLM drops the request, and Cancelled is raised. `on_wait(seconds)` is called as
        often, for progress. An answer longer than `max_bytes` is refused after reading at most that much.
        """
        body = json.dumps(payload).encode()
        tensor_request = "messages" in payload and "data" not in payload
        log.debug("POST %s/pooling (%d bytes)", self.redact(self.base_url), len(body))
        response, _ = self._send(body, CancelToken(), cancel, on_wait, max_bytes)
        if response.status_code != 200:
            self.errors.raise_for_status(response, "/pooling", tensor_request=tensor_request,
                                         model=str(payload.get("model", "")))
        answer = self._json(response, "/pooling")
        if not isinstance(answer, dict):
            raise ServerError(
                f"{self.errors.where} answered /pooling with JSON that is not an object.",
                "Check that the URL points at a vLLM server and not at another service.",
                status=response.status_code,
            )
        return answer

    def post_tensor(self, body: Any, model: str, token: Optional[CancelToken] = None,
                    max_bytes: int = DEFAULT_MAX_ANSWER) -> RawReply:
        """POST one pre-encoded tensor request (bytes, or parts with a length: tensor.codec.Body); the 200
        answer's body and headers.

        For many requests in flight from worker threads (tiles): `token.cancel()` from any thread stops this
        one. The headers matter for vLLM's binary answers (`encoding_format: "bytes"`), whose shape and dtype
        come in a `metadata` header. An answer longer than `max_bytes` (what the tile's logits can take) is
        refused after reading at most that much: memory stays bounded whatever the server sends.
        """
        response, content = self._send(body, token or CancelToken(), None, None, max_bytes)
        if response.status_code != 200:
            self.errors.raise_for_status(response, "/pooling", tensor_request=True, model=model)
        return RawReply(content, response.headers)

    # ------------------------------------------------------------------------------------------ plumbing
    def _send(self, body: Any, token: CancelToken, cancel: Optional[Callable[[], bool]],
              on_wait: Optional[Callable[[float], None]], max_bytes: int) -> tuple[requests.Response, bytes]:
        """POST /pooling and read the whole answer under the watchdog, which shuts the socket down on cancel
        or once the wall-clock budget is spent. The body is read in one call, of at most `max_bytes` + 1
        (requests' 10 kB chunks cost ~100 Python-level reads per megabyte), decoded only if it is compressed;
        urllib3 pools the connection once it is read whole, and drops it when the answer was refused."""
        budget = self.total_budget
        limit = max_bytes
        with WATCHDOG.watch(token, budget=budget, should_cancel=cancel, on_tick=on_wait):
            try:
                with token.bound():
                    response = self.session.post(
                        self.base_url + "/pooling", data=body, headers={"Content-Type": "application/json"},
                        timeout=(self.connect_timeout, self.read_timeout), verify=self.verify, stream=True,
                    )
                    declared = response.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > limit:
                        response.close()
                        raise self.errors.too_large(int(declared), limit)
                    encoded = _content_encoded(response.headers)
                    content = response.raw.read(limit + 1, decode_content=encoded)
                    if len(content) > limit:
                        response.close()
                        raise self.errors.too_large(len(content), limit, declared=False)
                    if not encoded:  # at the end: b""; short of the Content-Length: IncompleteRead
                        response.raw.read(1, decode_content=False)
                    response._content = content  # for .json()/.text of an error answer
                token.finish()
            except (Aborted, requests.RequestException, HTTPError, OSError) as exc:
                raise self._stopped(exc, token, budget) from None
        return response, content

    def _stopped(self, exc: BaseException, token: CancelToken, budget: float) -> FloodMapperError:
        if token.reason == EXPIRED:
            return self.errors.too_slow(budget)
        if token.cancelled:
            return Cancelled()
        return self.errors.from_exception(exc, "/pooling")

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        # Per request: a session-level `verify` loses against REQUESTS_CA_BUNDLE in requests' merge.
        kwargs.setdefault("verify", self.verify)
        try:
            return self.session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as exc:
            raise self.errors.from_exception(exc, path) from None

    def _json(self, response: requests.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self.errors.not_json(response, path) from None

    def _models_listing(self) -> str:
        try:
            return f" It serves: {', '.join(self.models())}."
        except FloodMapperError as exc:  # the listing is a courtesy; the 404 itself is the error to report
            log.debug("could not list models: %s", exc)
            return ""
