"""VllmClient against a programmable HTTP server on 127.0.0.1: error mapping, retries, cancel, redaction.

The real vLLM server is exercised in tests/e2e; here every failure a real deployment produces only now
and then (proxy 502s, torn bodies, stalls, TLS mistakes) is produced on purpose.
"""

from __future__ import annotations

import gzip
import logging
import socket
import subprocess
import threading
import time

import pytest
import requests

from plugin.core import http as http_module
from plugin.core.errors import (
    Cancelled,
    ConnectionFailed,
    FloodMapperError,
    InputError,
    ServerError,
    TransportUnsupported,
)
from plugin.core.http import CancelToken
from plugin.core.tensor.codec import Body
from plugin.core.vllm_api import KIND_IMAGE, KIND_TENSOR, VllmClient
from tests.fixtures.fake_http import FakeHttpServer, Reply, closed_port, models_body, unaccepting_port, vllm_error

TOKEN = "s3cr3t-T0ken-value"
TENSOR_PAYLOAD = {"model": "m", "encoding_format": "base64", "messages": [{"role": "user", "content": []}]}
IMAGE_PAYLOAD = {"model": "m", "data": {"data": "/x.tif", "data_format": "path", "out_data_format": "b64_json"}}


@pytest.fixture
def srv():
    with FakeHttpServer() as server:
        yield server


def make(url: str, **kw) -> VllmClient:
    kw.setdefault("retries", 0)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("connect_timeout", 2)
    kw.setdefault("read_timeout", 5)
    return VllmClient(url, **kw)


def text_of(exc: FloodMapperError) -> str:
    return f"{exc.message} || {exc.hint}"


# ------------------------------------------------------------------------------------------ basics
def test_health_true_false(srv):
    srv.on("GET", "/health", Reply(200), Reply(503))
    c = make(srv.url)
    assert c.health() is True
    assert c.health() is False


def test_health_false_when_nothing_listens():
    assert make(f"http://127.0.0.1:{closed_port()}").health() is False


def test_version_is_cached(srv):
    srv.on("GET", "/version", Reply(200, {"version": "0.32.0+cpu"}))
    c = make(srv.url)
    assert c.version() == "0.32.0+cpu"
    assert c.version() == "0.32.0+cpu"
    assert len(srv.calls("GET", "/version")) == 1


def test_version_missing_endpoint_is_empty(srv):
    c = make(srv.url)
    assert c.version() == ""


def test_models_and_resolve_only_model(srv):
    srv.on("GET", "/v1/models", Reply(200, models_body("floodmapper-demo")))
    c = make(srv.url)
    assert c.models() == ["floodmapper-demo"]
    assert c.resolve_model("") == "floodmapper-demo"
    assert c.resolve_model("floodmapper-demo") == "floodmapper-demo"
    assert c.resolve_model("/models/floodmapper-demo") == "floodmapper-demo"  # the folder it was served from


def test_resolve_model_several_lists_them(srv):
    srv.on("GET", "/v1/models", Reply(200, models_body("alpha", "beta")))
    with pytest.raises(InputError) as ei:
        make(srv.url).resolve_model("")
    assert "alpha" in ei.value.message and "beta" in ei.value.message
    assert "Model" in ei.value.hint


def test_resolve_model_unknown_lists_served(srv):
    srv.on("GET", "/v1/models", Reply(200, models_body("alpha")))
    with pytest.raises(InputError) as ei:
        make(srv.url).resolve_model("gamma")
    assert "'gamma'" in ei.value.message and "alpha" in ei.value.message


def test_models_wrong_shape(srv):
    srv.on("GET", "/v1/models", Reply(200, {"models": ["a"]}))
    with pytest.raises(ServerError) as ei:
        make(srv.url).models()
    assert "not a model list" in ei.value.message


def test_base_url_normalised_and_invalid():
    assert VllmClient("http://127.0.0.1:8000/v1/").base_url == "http://127.0.0.1:8000"
    assert VllmClient("http://127.0.0.1:8000/pooling").base_url == "http://127.0.0.1:8000"
    with pytest.raises(InputError) as ei:
        VllmClient("127.0.0.1:8000")
    assert "http://127.0.0.1:8000" in ei.value.hint


def test_missing_ca_bundle_file_is_input_error(tmp_path):
    with pytest.raises(InputError) as ei:
        VllmClient("https://127.0.0.1:1", verify=str(tmp_path / "nope.pem"))
    assert "CA bundle" in ei.value.message and "CA bundle" in ei.value.hint


# ---------------------------------------------------------------------------------- connection errors
def test_connection_refused():
    c = make(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ConnectionFailed) as ei:
        c.pooling(IMAGE_PAYLOAD)
    assert "refused" in ei.value.message.lower()
    assert "Start the vLLM server" in ei.value.hint


def test_connection_refused_is_retried_with_backoff():
    c = make(f"http://127.0.0.1:{closed_port()}", retries=2, backoff=0.2)
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailed):
        c.models()
    # urllib3 sleeps 0 before the first retry and backoff*2 before the second
    assert time.monotonic() - t0 >= 0.35


def test_dns_failure(monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    c = make("http://vllm.invalid:8000")
    with pytest.raises(ConnectionFailed) as ei:
        c.models()
    assert "could not be resolved" in ei.value.message and "vllm.invalid" in ei.value.message


def test_connect_timeout():
    port, held = unaccepting_port()
    try:
        c = make(f"http://127.0.0.1:{port}", connect_timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailed) as ei:
            c.pooling(IMAGE_PAYLOAD)
        assert time.monotonic() - t0 < 5
        assert "timed out" in ei.value.message and "connect timeout" in ei.value.hint
    finally:
        for s in held:
            s.close()


def test_read_timeout_not_retried(srv):
    srv.on("POST", "/pooling", Reply(200, {"data": {}}, delay=3))
    c = make(srv.url, read_timeout=0.5, retries=3)
    with pytest.raises(ConnectionFailed) as ei:
        c.pooling(IMAGE_PAYLOAD)
    assert "read timeout of 0.5 s" in ei.value.message
    assert "read timeout" in ei.value.hint
    assert len(srv.calls("POST", "/pooling")) == 1  # a busy server is not asked twice


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def test_tls_self_signed_fails_then_works_with_ca_bundle(self_signed):
    with FakeHttpServer(tls=self_signed) as tls_srv:
        tls_srv.on("GET", "/v1/models", Reply(200, models_body("m")))
        with pytest.raises(ConnectionFailed) as ei:
            make(tls_srv.url, retries=2).models()
        assert "TLS" in ei.value.message and "CA bundle" in ei.value.hint
        assert len(tls_srv.calls("GET", "/v1/models")) == 0
        assert make(tls_srv.url, verify=self_signed[0]).models() == ["m"]


def test_tls_against_plain_http_server(srv):
    with pytest.raises(ConnectionFailed) as ei:
        make(srv.url.replace("http://", "https://")).models()
    assert "TLS" in ei.value.message and "scheme" in ei.value.hint


# ------------------------------------------------------------------------------------- HTTP statuses
@pytest.mark.parametrize("status", [401, 403])
def test_auth_refused_redacts_token(srv, status, caplog):
    srv.on("POST", "/pooling", Reply(status, {"detail": f"bad token {TOKEN}"}))
    c = make(srv.url, headers={"Authorization": f"Bearer {TOKEN}", "X-Api-Key": "k3y-" + TOKEN})
    caplog.set_level(logging.DEBUG, logger="floodmapper")
    with pytest.raises(ServerError) as ei:
        c.pooling(IMAGE_PAYLOAD)
    assert ei.value.status == status
    assert f"HTTP {status}" in ei.value.message
    assert "authentication configuration" in ei.value.hint and "proxy" in ei.value.hint
    assert TOKEN not in str(ei.value) and TOKEN not in repr(c)
    assert TOKEN not in caplog.text
    sent = srv.calls("POST", "/pooling")[0].headers
    assert sent["Authorization"] == f"Bearer {TOKEN}"  # sent to the server, never shown


def test_userinfo_in_url_is_redacted():
    c = make(f"http://alice:{TOKEN}@127.0.0.1:{closed_port()}")
    with pytest.raises(ConnectionFailed) as ei:
        c.models()
    assert TOKEN not in str(ei.value) and "***@" in ei.value.message


def test_404_unknown_model_lists_models(srv):
    srv.on("POST", "/pooling", Reply(404, vllm_error("The model `nope` does not exist.", 404, "NotFoundError")))
    srv.on("GET", "/v1/models", Reply(200, models_body("floodmapper-demo")))
    with pytest.raises(ServerError) as ei:
        make(srv.url).pooling({**IMAGE_PAYLOAD, "model": "nope"})
    assert ei.value.status == 404
    assert "'nope'" in ei.value.message and "It serves: floodmapper-demo" in ei.value.message
    assert len(srv.calls("POST", "/pooling")) == 1


def test_404_no_such_endpoint(srv):
    with pytest.raises(ServerError) as ei:
        make(srv.url + "/api").pooling(IMAGE_PAYLOAD)
    assert "no /pooling endpoint" in ei.value.message and "server root" in ei.value.hint


def test_400_shows_vllm_message_not_retried(srv):
    msg = "1 validation error for RequestData\ndata_format\n  Input should be 'path' or 'url'"
    srv.on("POST", "/pooling", Reply(400, vllm_error(msg)))
    with pytest.raises(ServerError) as ei:
        make(srv.url, retries=3).pooling(IMAGE_PAYLOAD)
    assert ei.value.status == 400 and "Input should be 'path' or 'url'" in ei.value.message
    assert len(srv.calls("POST", "/pooling")) == 1


def test_500_with_message(srv):
    srv.on("POST", "/pooling", Reply(500, vllm_error("[Errno 2] No such file or directory: '/x.tif'", 500,
                                                     "InternalServerError")))
    with pytest.raises(ServerError) as ei:
        make(srv.url).pooling(IMAGE_PAYLOAD)
    assert type(ei.value) is ServerError and ei.value.status == 500
    assert "No such file or directory" in ei.value.message and "log" in ei.value.hint


def test_empty_500_to_tensor_request_is_transport_unsupported(srv):
    srv.on("POST", "/pooling", Reply(500, vllm_error("", 500, "InternalServerError")))
    with pytest.raises(TransportUnsupported) as ei:
        make(srv.url).pooling(TENSOR_PAYLOAD)
    assert "IOProcessor plugin" in ei.value.message and "tensor" in ei.value.message
    assert "image transport" in ei.value.hint


def test_empty_500_to_image_request_is_server_error(srv):
    srv.on("POST", "/pooling", Reply(500, vllm_error("", 500, "InternalServerError")))
    with pytest.raises(ServerError) as ei:
        make(srv.url).pooling(IMAGE_PAYLOAD)
    assert "(no message)" in ei.value.message


def test_503_then_200_is_retried(srv):
    srv.on("POST", "/pooling", Reply(503, "starting", content_type="text/plain"), Reply(200, {"data": {"x": 1}}))
    assert make(srv.url, retries=2).pooling(IMAGE_PAYLOAD) == {"data": {"x": 1}}
    assert len(srv.calls("POST", "/pooling")) == 2


def test_502_exhausts_retries(srv):
    srv.on("POST", "/pooling", Reply(502, "<html>Bad Gateway</html>", content_type="text/html"))
    with pytest.raises(ServerError) as ei:
        make(srv.url, retries=2).pooling(IMAGE_PAYLOAD)
    assert ei.value.status == 502 and "after 2 retries" in ei.value.message
    assert "proxy" in ei.value.hint
    assert len(srv.calls("POST", "/pooling")) == 3


def test_retry_after_is_honoured_but_capped(srv, monkeypatch):
    monkeypatch.setattr(http_module, "MAX_RETRY_AFTER", 0.3)
    srv.on("GET", "/v1/models", Reply(503, headers={"Retry-After": "3600"}), Reply(200, models_body("m")))
    t0 = time.monotonic()
    assert make(srv.url, retries=1).models() == ["m"]
    assert 0.25 <= time.monotonic() - t0 < 5


def test_413_from_proxy(srv):
    srv.on("POST", "/pooling", Reply(413, "too large", content_type="text/plain"))
    with pytest.raises(ServerError) as ei:
        make(srv.url).pooling(IMAGE_PAYLOAD)
    assert "too large" in ei.value.message and "body size limit" in ei.value.hint


# --------------------------------------------------------------------------------------- bad bodies
def test_truncated_body(srv):
    srv.on("POST", "/pooling", Reply(200, {"data": {"data": "A" * 5000}}, truncate=100))
    with pytest.raises(ServerError) as ei:
        make(srv.url).pooling(IMAGE_PAYLOAD)
    assert "truncated" in ei.value.message


def test_connection_dropped_without_answer_is_resent_once(srv):
    srv.on("POST", "/pooling", Reply(drop=True))
    with pytest.raises(ConnectionFailed) as ei:
        make(srv.url, retries=3).pooling(IMAGE_PAYLOAD)
    assert "closed the connection without answering" in ei.value.message
    assert "crashed" in ei.value.hint
    assert len(srv.calls("POST", "/pooling")) == 2


def test_dropped_keepalive_connection_is_transparent(srv):
    # uvicorn closes the connection after vLLM's unhandled-exception 500s; the next request on the pooled
    # connection must not fail because of it
    srv.on("POST", "/pooling", Reply(500, vllm_error("", 500)), Reply(drop=True), Reply(200, {"ok": 2}))
    c = make(srv.url, retries=0)
    with pytest.raises(ServerError):
        c.pooling(IMAGE_PAYLOAD)
    assert c.pooling(IMAGE_PAYLOAD) == {"ok": 2}


def test_plain_text_500_to_tensor_request(srv):
    srv.on("POST", "/pooling", Reply(500, "Internal Server Error", content_type="text/plain"))
    with pytest.raises(TransportUnsupported):
        make(srv.url).pooling(TENSOR_PAYLOAD)


def test_non_json_body(srv):
    srv.on("POST", "/pooling", Reply(200, "<html>Sign in</html>", content_type="text/html"))
    with pytest.raises(ServerError) as ei:
        make(srv.url).pooling(IMAGE_PAYLOAD)
    assert "not JSON" in ei.value.message and "Sign in" in ei.value.message
    assert "proxy" in ei.value.hint


def test_json_that_is_not_an_object(srv):
    srv.on("POST", "/pooling", Reply(200, [1, 2, 3]))
    with pytest.raises(ServerError) as ei:
        make(srv.url).pooling(IMAGE_PAYLOAD)
    assert "not an object" in ei.value.message


def test_trickling_body_hits_total_budget(srv, monkeypatch):
    srv.on("POST", "/pooling", Reply(200, {"data": "x" * 200}, trickle=0.05))
    c = make(srv.url, read_timeout=1)
    monkeypatch.setattr(VllmClient, "total_budget", property(lambda self: 1.0))
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailed) as ei:
        c.pooling(IMAGE_PAYLOAD)
    assert time.monotonic() - t0 < 3
    assert "no complete answer" in ei.value.message


# ---------------------------------------------------------------------------------------- cancel
def test_cancel_within_a_second_and_server_sees_disconnect(srv):
    srv.on("POST", "/pooling", Reply(200, {"data": {}}, delay=20))
    c = make(srv.url, read_timeout=60)
    t_cancel = time.monotonic() + 0.4
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        c.pooling(IMAGE_PAYLOAD, cancel=lambda: time.monotonic() > t_cancel)
    assert time.monotonic() - t0 < 1.5
    deadline = time.monotonic() + 1.5
    while not srv.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.disconnects == ["/pooling"]  # the server noticed the client go: vLLM aborts the request
    # the client is still usable afterwards
    srv.on("GET", "/v1/models", Reply(200, models_body("m")))
    assert c.models() == ["m"]


def test_on_wait_reports_elapsed(srv):
    srv.on("POST", "/pooling", Reply(200, {"ok": True}, delay=0.5))
    seen: list[float] = []
    assert make(srv.url).pooling(IMAGE_PAYLOAD, on_wait=seen.append) == {"ok": True}
    assert seen and seen == sorted(seen) and seen[-1] > 0.2


def test_a_tensor_request_is_cancelled_by_its_token_from_another_thread(srv):
    srv.on("POST", "/pooling", Reply(200, b"\x00" * 8, delay=20, content_type="application/octet-stream"))
    c = make(srv.url, read_timeout=60)
    token = CancelToken()
    out: dict = {}

    def work():
        try:
            c.post_tensor(b"{}", "m", token)
        except FloodMapperError as exc:
            out["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    token.cancel()
    t.join(2)
    assert not t.is_alive() and time.monotonic() - t0 < 1.0
    assert isinstance(out["error"], Cancelled)
    deadline = time.monotonic() + 1.5
    while not srv.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.disconnects == ["/pooling"]  # the server saw the hang-up
    srv.on("GET", "/v1/models", Reply(200, models_body("m")))
    assert c.models() == ["m"]  # the pool is fine afterwards


def test_a_token_cancelled_before_the_request_sends_nothing(srv):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        make(srv.url).post_tensor(b"{}", "m", token)
    assert srv.calls("POST", "/pooling") == []


def test_post_tensor_returns_raw_and_maps_errors(srv):
    srv.on("POST", "/pooling", Reply(200, b"\x01\x02", content_type="application/octet-stream"),
           Reply(500, vllm_error("", 500)))
    c = make(srv.url)
    reply = c.post_tensor(b"{}", "m")
    assert reply.content == b"\x01\x02" and reply.headers["Content-Type"] == "application/octet-stream"
    with pytest.raises(TransportUnsupported):
        c.post_tensor(b"{}", "m")


def test_a_compressed_tensor_answer_is_decompressed(srv):
    """An answer without Content-Encoding is read as it comes; one a proxy compressed is decoded first."""
    logits = bytes(range(256)) * 40
    srv.on("POST", "/pooling",
           Reply(200, gzip.compress(logits), headers={"Content-Encoding": "gzip"},
                 content_type="application/octet-stream"),
           Reply(200, logits, content_type="application/octet-stream"))
    c = make(srv.url)
    assert c.post_tensor(b"{}", "m").content == logits
    assert c.post_tensor(b"{}", "m").content == logits


def test_a_tensor_answer_cut_short_of_its_length_is_refused(srv):
    srv.on("POST", "/pooling", Reply(200, b"\x01" * 4000, content_type="application/octet-stream", truncate=100))
    with pytest.raises(ServerError) as ei:
        make(srv.url, retries=0).post_tensor(b"{}", "m")
    assert "truncated" in ei.value.message


def test_a_body_in_parts_goes_whole_with_its_length_and_again_on_a_retry(srv):
    """A tile's body is sent as its parts under one Content-Length (never chunked): a 503 retried by the
    retry policy sends every byte again."""
    srv.on("POST", "/pooling", Reply(503), Reply(200, b"\x01\x02", content_type="application/octet-stream"))
    parts = [b'{"model":"m","x":"', b"A" * 300_000, b'"}']
    reply = make(srv.url, retries=1).post_tensor(Body(parts), "m")
    assert reply.content == b"\x01\x02"
    calls = srv.calls("POST", "/pooling")
    assert len(calls) == 2
    for call in calls:
        assert call.body == b"".join(parts)
        assert call.headers["Content-Length"] == str(len(call.body))
        assert "Transfer-Encoding" not in call.headers


# ----------------------------------------------------------------------------------- server kind
def _probe_route(answer: Reply):
    def route(rec):
        body = rec.json()
        assert body["data"]["data_format"] == "floodmapper-probe"  # the probe never names a real file
        return answer

    return route


def test_server_kind_image_is_cached(srv):
    srv.on("POST", "/pooling", _probe_route(Reply(400, vllm_error(
        "1 validation error for RequestData\ndata_format\n  Input should be 'path' or 'url' "
        "[type=literal_error, input_value='floodmapper-probe', input_type=str]"))))
    c = make(srv.url)
    assert c.server_kind("m") == KIND_IMAGE
    assert c.server_kind("m") == KIND_IMAGE
    assert len(srv.calls("POST", "/pooling")) == 1


def test_server_kind_tensor(srv):
    srv.on("POST", "/pooling", _probe_route(Reply(400, vllm_error("Invalid plugin request type"))))
    assert make(srv.url).server_kind("m") == KIND_TENSOR


def test_server_kind_unrecognised_answer(srv):
    srv.on("POST", "/pooling", Reply(500, vllm_error("something else", 500)))
    with pytest.raises(ServerError) as ei:
        make(srv.url).server_kind("m")
    assert "Could not tell" in ei.value.message and "io-processor-plugin" in ei.value.hint


def test_server_kind_unknown_model(srv):
    srv.on("POST", "/pooling", Reply(404, vllm_error("The model `m` does not exist.", 404, "NotFoundError")))
    srv.on("GET", "/v1/models", Reply(200, models_body("other")))
    with pytest.raises(ServerError) as ei:
        make(srv.url).server_kind("m")
    assert ei.value.status == 404 and "other" in ei.value.message


def test_session_is_pooled(srv):
    srv.on("GET", "/v1/models", Reply(200, models_body("m")))
    c = make(srv.url)
    ports = set()
    orig = requests.adapters.HTTPAdapter.build_response

    def spy(self, req, resp):
        ports.add(resp.connection.sock.getsockname()[1] if resp.connection and resp.connection.sock else None)
        return orig(self, req, resp)

    requests.adapters.HTTPAdapter.build_response = spy
    try:
        for _ in range(3):
            c.models()
    finally:
        requests.adapters.HTTPAdapter.build_response = orig
    assert len(ports) == 1  # one keep-alive connection reused


def test_the_environment_is_read_once_per_server_and_its_proxy_still_applies(srv, monkeypatch):
    """The proxy variables are read at a client's first request to a server, not at every tile's."""
    srv.on("GET", "/v1/models", Reply(200, models_body("m")))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    read = []
    environ_proxies = requests.sessions.get_environ_proxies
    monkeypatch.setattr(requests.sessions, "get_environ_proxies",
                        lambda url, no_proxy=None: read.append(url) or environ_proxies(url, no_proxy=no_proxy))
    c = make(srv.url)
    for _ in range(3):
        assert c.models() == ["m"]
    assert read == [srv.url + "/v1/models"]
    settings = c.session.merge_environment_settings(srv.url + "/pooling", {}, None, None, None)
    settings["proxies"]["http"] = "http://changed.invalid"  # a caller's change stays in its copy
    assert "http" not in c.session.merge_environment_settings(srv.url + "/pooling", {}, None, None, None)["proxies"]

    # a proxy in the environment is what the next client's requests go through: this one listens nowhere
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(FloodMapperError) as ei:
        make(srv.url).models()
    assert "proxy" in text_of(ei.value).lower()
    assert c.models() == ["m"]  # the first client keeps the environment it read
