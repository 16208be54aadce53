"""The fault-injection matrix: every fault a job can meet, through map_floods().

Each row runs the whole job, `plugin.core.pipeline.map_floods(request, client, progress)`, against the
programmable HTTP peer of tests/fixtures/fake_http.py on 127.0.0.1 (answering like an IOProcessor server
or like a tensor-mode server), or against a socket that misbehaves below HTTP, and asserts:

- the error type, a message fragment naming the problem and a hint fragment naming the fix;
- that nothing is left: no output and no probability output (or, for rows with an older map at the output
  path, that file byte for byte unchanged), and no temp file anywhere: the whole test folder, which holds
  the private `tempfile.tempdir`, `TMPDIR`, `CPL_TMPDIR`, the working directory and the output folder, is
  compared file by file before and after the job (the input is in it, so it is also proven untouched);
- for faults in the input or the parameters, that the peer received no request at all, or, where the fault
  shows only against the model's bands (which the served model decides), no /pooling job;
- where the fault is on the server, how many /pooling jobs the peer saw (retries, re-sends).

The two single-pixel rows are not faults: they pin what a 1×1 raster does (a valid 1×1 map). Whatever the
outcome, the job's worker threads are gone when it returns.

| # | case | fault injected | expected message |
|---|---|---|---|
| 1 | conn-refused | nothing listens on the server's loopback port | ConnectionFailed: refused / start the server |
| 2 | dns-invalid-host | the URL's host is floodmapper-fault.invalid | ConnectionFailed: not resolved (DNS) / typos |
| 3 | tls-plain-http-peer | an https URL to the plain-HTTP peer | ConnectionFailed: TLS failed / scheme http/https |
| 4 | tls-self-signed | a TLS peer with a self-signed certificate | ConnectionFailed: verify failed / CA bundle |
| 5 | connect-timeout | a listener whose accept backlog is full | ConnectionFailed: timed out after 0.3 s |
| 6 | read-timeout | /pooling answers after 3 s; read timeout 0.5 s | ConnectionFailed: read timeout of 0.5 s |
| 7 | stalled-trickle | the /pooling body trickles 1 byte per 50 ms | ConnectionFailed: no complete answer in 1 s |
| 8 | tensor-stalled-trickle | a tile answer trickles 1 byte per 5 ms | ConnectionFailed: no complete answer |
| 9 | http-401 | a proxy answers 401 to every request | ServerError: refused (HTTP 401) / authentication |
| 10 | http-403 | a proxy answers 403 to every /pooling | ServerError: refused (HTTP 403) / authentication |
| 11 | model-not-listed | model 'other'; the server lists test-model | InputError: it serves: test-model / use one |
| 12 | pooling-404-unknown-model | /pooling answers 404 model does not exist | ServerError: HTTP 404, it serves: both |
| 13 | no-pooling-route | /pooling answers the framework's 404 | ServerError: no /pooling endpoint / server root |
| 14 | http-400-vllm-message | the job answers 400 with error.message | ServerError: the server's message, once |
| 15 | http-500-message | the job answers 500 with a message | ServerError: HTTP 500: the message / server's log |
| 16 | probe-500-unrecognised | the transport probe answers 500 | ServerError: could not tell / with or without plugin |
| 17 | tensor-empty-500 | a tile answered by an empty 500 | TransportUnsupported: IOProcessor / image transport |
| 18 | http-502-retried | the job answers 502 every time, retries=2 | ServerError: HTTP 502 after 2 retries, 3 jobs |
| 19 | http-503-retried | the job answers 503 every time, retries=2 | ServerError: HTTP 503 after 2 retries, 3 jobs |
| 20 | http-504-retried | the job answers 504 every time, retries=2 | ServerError: HTTP 504 after 2 retries, 3 jobs |
| 21 | retry-after-honoured | 503 with Retry-After 1, retries=1 | ServerError: HTTP 503 after waiting >= 1 s |
| 22 | retry-after-capped | 503 with Retry-After 3600, cap 0.4 s | ServerError: HTTP 503 after 0.4 s, not 1 h |
| 23 | non-json-body | the job answers 200 text/html (a login page) | ServerError: not JSON (text/html) / proxy |
| 24 | truncated-body | Content-Length 4000, 50 bytes sent, close | ServerError: truncated answer / dropped |
| 25 | hangup-before-answer | the peer closes without a status line | ConnectionFailed: closed, re-sent once / crashed |
| 26 | chunked-torn | chunked body closed before the last chunk | ServerError: truncated answer / dropped |
| 27 | image-no-image | the job answers JSON without the image | ServerError: has no image / version and log |
| 28 | image-not-geotiff | the job answers base64 of PNG bytes | ServerError: not a GeoTIFF / version and log |
| 29 | image-grid-mismatch | the server's map is 80x60 for an 80x64 input | ServerError: does not match the grid |
| 30 | no-crs-location-model | no CRS; 500 Could not infer dtype | InputError: needs the location / assign a CRS |
| 31 | tensor-wrong-shape | tile logits of 3 classes, the spec says 2 | ServerError: shape [3, 32, 32] / spec |
| 32 | tensor-base64-garbage | a tile answer's data is not base64 | ServerError: logits are not valid base64 |
| 33 | tensor-nan-logits | every tile answer's logits are NaN | ServerError: NaN logits |
| 34 | tensor-server-dies-midrun | 500 EngineCore died from the 3rd tile on | ServerError: HTTP 500: EngineCore died |
| 35 | tensor-sockets-closed-midrun | connections closed from the 3rd tile on | ConnectionFailed: closed / crashed |
| 36 | tensor-hangup-mid-body | the 3rd tile answer is cut after 100 bytes | ServerError: truncated answer / dropped |
| 37 | tensor-no-model-spec | no model spec, the model is no preset | ModelSpecError: needs config.json / set it |
| 38 | input-missing | the input path does not exist | InputError: cannot open, no such file / GDAL |
| 39 | input-not-raster | the input is a text file | InputError: cannot open, not recognized / GDAL |
| 40 | input-complex | complex64 bands (a radar SLC product) | InputError: complex numbers / multispectral |
| 41 | output-is-input | the output path is the input path | OutputError: is the input raster / another file |
| 42 | output-folder-missing | the output folder does not exist | OutputError: does not exist / create it |
| 43 | output-folder-not-writable | os.access: the folder is not writable | OutputError: not writable / another folder |
| 44 | output-folder-removed-image | the output folder is deleted while waiting | OutputError: folder does not exist |
| 45 | output-folder-removed-tensor | the output folder is deleted mid-run | OutputError: folder |
| 46 | probability-folder-removed | the probability's folder is deleted mid-run | OutputError: no flood.tif |
| 47 | too-few-bands | a 3-band raster for a 6-band model | MissingBands: has 3 band(s), needs 6 / stack them |
| 48 | all-nodata | every pixel is the nodata value | InputError: every pixel is nodata / nodata value |
| 49 | nan-inf-everywhere | float32 NaN, +Inf, -Inf, no nodata value | InputError: every pixel is nodata |
| 50 | single-pixel-image | a 1x1 raster, image transport | success: a 1x1 map, 1 valid pixel |
| 51 | single-pixel-tensor | a 1x1 raster, tensor transport | success: 1x1 map and probability, 1 tile |
| 52 | unknown-transport | transport 'carrier-pigeon' | InputError: unknown transport / auto, image, tensor |
| 53 | forced-image-unreachable-file | image, remote server, no path mapping | TransportUnsupported: path mapping |
| 54 | forced-image-on-tensor-server | image, the server has no IOProcessor | TransportUnsupported: use tensor |
| 55 | forced-tensor-on-image-server | tensor, the server has the IOProcessor | TransportUnsupported: use image |
| 56 | cancel-before-start | cancelled before the job starts | Cancelled: no output was written |
| 57 | cancel-mid-request | cancel while the image job waits | Cancelled: no output; peer sees the hang-up |
| 58 | cancel-mid-run-tensor | cancel with 2 tiles stitched, 2 in flight | Cancelled: no output; peer sees 2 hang-ups |
| 59 | tensor-engine-died | a tile answered with vLLM's EngineDeadError 500 | EngineDied: sent float16 [6, 32, 32] |
| 60 | image-engine-died | the job is answered with vLLM's EngineDeadError 500 | EngineDied: restart / --dtype float16 |
| 61 | image-server-dtype-float32 | image, SERVER_DTYPE float32 | TransportUnsupported: sends float16 / no job |
| 62 | tensor-answer-10gb | a tile answer announces 10 GB | ServerError: announces 10 GB, at most ~ / not vLLM |
| 63 | tensor-answer-endless | a tile answer goes on with no length | ServerError: went on past ~ / not vLLM |
| 64 | image-answer-10gb | the job's answer announces 10 GB | ServerError: announces 10 GB / not vLLM |
| 65 | output-disk-full | the output folder is a full 8 kB tmpfs | OutputError: nothing written, earlier map kept |
| 66 | stale-part-of-a-killed-run | a 2-hour-old .part of ours in the folder | success: it is removed, others kept |
| 67 | output-permissions | umask 022 | success: outputs 0644 |
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import rasterio

from plugin.core import http as http_module
from plugin.core.errors import (
    Cancelled,
    ConnectionFailed,
    EngineDied,
    FloodMapperError,
    InputError,
    MissingBands,
    ModelSpecError,
    OutputError,
    ServerError,
    TransportUnsupported,
)
from plugin.core.pipeline import map_floods
from plugin.core.vllm_api import VllmClient
from tests.fixtures.fake_http import FakeHttpServer, Reply, closed_port, models_body, unaccepting_port, vllm_error
from tests.fixtures.progress import Recorder
from tests.fixtures.world import (
    ENGINE_DEAD,
    MODEL,
    TILE,
    World,
    image_answer,
    model_config,
    write_scene,
)

pytestmark = pytest.mark.timeout(60)  # a row that hangs is a failure, not a stuck suite


@dataclass
class Scenario:
    """What a row's setup returns: how to run the job and what else to check."""

    request: dict = field(default_factory=dict)  # MapFloodsRequest fields
    client: dict = field(default_factory=dict)  # VllmClient arguments
    url: str = ""  # the client's server URL when it is not the fake peer's
    progress: Optional[Recorder] = None
    sentinel: bool = False  # an older map (and probability) sits at the output path(s) and must survive
    requests: Optional[int] = None  # requests the fake peer must have received in all (0: input faults)
    jobs: Optional[int] = None  # /pooling jobs (not the probe) it must have received
    check: Optional[Callable[[World, Any, float], None]] = None  # more assertions: (world, error/result, s)
    vanished: tuple[str, ...] = ()  # folders (relative to the test folder) the fault itself deletes
    seconds: float = 10.0  # the job must end within this


@dataclass(frozen=True)
class Case:
    id: str
    fault: str  # the "fault injected" column of the table, verbatim
    setup: Callable[[World], Optional[Scenario]]
    exc: Optional[type]  # None: the job succeeds (rows that pin a clear outcome that is not an error)
    message: str  # regex searched in the error's message
    hint: str  # regex searched in the error's hint
    kind: str = "image"  # what the fake server is: "image" (IOProcessor plugin) or "tensor"


# ------------------------------------------------------------------------------------ setup helpers
def every_job(reply: Reply, jobs: int = 1, sentinel: bool = False) -> Callable[[World], Scenario]:
    def setup(world: World) -> Scenario:
        world.fault = lambda n, body: reply
        return Scenario(jobs=jobs, sentinel=sentinel)

    return setup


def from_job(first: int, make: Callable[[dict], Reply]) -> Callable[[int, dict], Optional[Reply]]:
    return lambda n, body: make(body) if n >= first else None


def waited(low: float, high: float) -> Callable[[World, Any, float], None]:
    def check(world: World, err: Any, seconds: float) -> None:
        assert low <= seconds < high, seconds

    return check


def _at_least_jobs(count: int) -> Callable[[World, Any, float], None]:
    def check(world: World, err: Any, seconds: float) -> None:
        assert len(world.jobs()) >= count

    return check


def _wait_for(predicate: Callable[[], bool], seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def setup_refused(world: World) -> Scenario:
    return Scenario(url=f"http://127.0.0.1:{closed_port()}", requests=0)


def setup_dns(world: World) -> Scenario:
    return Scenario(url="http://floodmapper-fault.invalid:8000", requests=0)


def setup_tls_plain(world: World) -> Scenario:
    return Scenario(url=world.srv.url.replace("http://", "https://"), requests=0)


def _self_signed(folder: Path) -> tuple[str, str]:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        pytest.skip("the cryptography package is not installed: no self-signed certificate for the TLS peer")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir()
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def setup_tls_self_signed(world: World) -> Scenario:
    tls = FakeHttpServer(tls=_self_signed(world.tmp / "tls")).start()
    tls.on("GET", "/v1/models", Reply(200, models_body(MODEL)))
    world.cleanups.append(tls.stop)

    def check(world: World, err: Any, seconds: float) -> None:
        assert tls.requests == []  # the handshake failed: no request reached the TLS peer

    return Scenario(url=tls.url, client={"retries": 2}, check=check)


def setup_connect_timeout(world: World) -> Scenario:
    port, held = unaccepting_port()
    world.cleanups.append(lambda: [s.close() for s in held])
    return Scenario(url=f"http://127.0.0.1:{port}", client={"connect_timeout": 0.3}, requests=0,
                    check=waited(0.25, 3.0))


def setup_read_timeout(world: World) -> Scenario:
    world.fault = lambda n, body: Reply(200, {"data": {}}, delay=3)
    return Scenario(client={"read_timeout": 0.5, "retries": 3}, jobs=1, check=waited(0.4, 2.5))


def _budget_1_2_s(world: World) -> None:
    # budget = attempts * (connect + read timeout) + attempts * MAX_RETRY_AFTER = 1 * (0.5 + 0.5) + 0.2
    patch = pytest.MonkeyPatch()
    patch.setattr(http_module, "MAX_RETRY_AFTER", 0.2)
    world.cleanups.append(patch.undo)


def setup_trickle(world: World) -> Scenario:
    _budget_1_2_s(world)
    world.fault = lambda n, body: Reply(200, {"data": "x" * 400}, trickle=0.05)
    return Scenario(client={"connect_timeout": 0.5, "read_timeout": 0.5}, jobs=1, sentinel=True,
                    check=waited(1.0, 3.0))


def setup_tensor_trickle(world: World) -> Scenario:
    _budget_1_2_s(world)
    Path(world.spec).write_text(json.dumps(model_config(tile=8)))  # 8x8 tiles: a 700-byte answer, ~4 s
    world.fault = lambda n, body: (replace(world.tensor_answer(body), trickle=0.005) if n == 1 else None)
    return Scenario(client={"connect_timeout": 0.5, "read_timeout": 0.5}, sentinel=True, check=waited(1.0, 3.0))


def setup_401(world: World) -> Scenario:
    unauthorised = Reply(401, {"detail": "Unauthorized"})
    for method, path in (("GET", "/v1/models"), ("GET", "/version"), ("POST", "/pooling")):
        world.srv.on(method, path, unauthorised)
    return Scenario(requests=1)


def setup_403(world: World) -> Scenario:
    world.probe_reply = Reply(403, "Forbidden", content_type="text/plain")
    world.fault = lambda n, body: world.probe_reply
    return Scenario(jobs=0)


def setup_model_not_listed(world: World) -> Scenario:
    return Scenario(request={"model": "other"}, requests=1)


def setup_pooling_404(world: World) -> Scenario:
    world.srv.on("GET", "/v1/models", Reply(200, models_body(MODEL, "other-model")))
    world.probe_reply = Reply(404, vllm_error(f"The model `{MODEL}` does not exist.", 404, "NotFoundError"))
    return Scenario(jobs=0)


def setup_no_route(world: World) -> Scenario:
    world.probe_reply = Reply(404, {"detail": "Not Found"})
    return Scenario(jobs=0)


def setup_probe_500(world: World) -> Scenario:
    world.probe_reply = Reply(500, vllm_error("boom in the probe", 500, "InternalServerError"))
    return Scenario(jobs=0)


def setup_tensor_empty_500(world: World) -> Scenario:
    world.fault = lambda n, body: Reply(500, vllm_error("", 500, "InternalServerError"))
    return Scenario(sentinel=True, check=_at_least_jobs(1))


def setup_retried(status: int) -> Callable[[World], Scenario]:
    def setup(world: World) -> Scenario:
        world.fault = lambda n, body: Reply(status, f"{status} from the proxy", content_type="text/plain")
        return Scenario(client={"retries": 2}, jobs=3)

    return setup


def setup_retry_after(seconds: str, cap: Optional[float], low: float, high: float) -> Callable[[World], Scenario]:
    def setup(world: World) -> Scenario:
        if cap is not None:
            patch = pytest.MonkeyPatch()
            patch.setattr(http_module, "MAX_RETRY_AFTER", cap)
            world.cleanups.append(patch.undo)
        world.fault = lambda n, body: Reply(503, vllm_error("starting", 503), headers={"Retry-After": seconds})
        return Scenario(client={"retries": 1}, jobs=2, check=waited(low, high))

    return setup


def setup_chunked_torn(world: World) -> Scenario:
    torn = b"10\r\n{\"data\": {\"data\"\r\n"  # one chunk, then the connection closes before the 0-chunk
    world.fault = lambda n, body: Reply(200, torn, headers={"Transfer-Encoding": "chunked"}, truncate=len(torn))
    return Scenario(jobs=1, sentinel=True)


def setup_grid_mismatch(world: World) -> Scenario:
    world.fault = lambda n, body: image_answer(body, shape=(60, 80))
    return Scenario(jobs=1, sentinel=True)


def setup_no_crs(world: World) -> Scenario:
    nocrs = write_scene(world.tmp / "in" / "nocrs.tif", crs=None)
    world.fault = lambda n, body: Reply(500, vllm_error("Could not infer dtype of NoneType", 500))
    return Scenario(request={"input_path": nocrs}, jobs=1)


def setup_tensor_wrong_shape(world: World) -> Scenario:
    world.srv.num_classes = 3
    return Scenario(sentinel=True)


def setup_tensor_garbage(world: World) -> Scenario:
    world.fault = lambda n, body: Reply(200, {"data": [{"index": 0, "data": "%%%not base64%%%"}]})
    return Scenario()


def setup_tensor_nan(world: World) -> Scenario:
    nan = np.full((2, TILE, TILE), np.nan, np.float32)
    world.fault = lambda n, body: Reply(200, {"data": [{"index": 0, "data": base64.b64encode(nan.tobytes()).decode()}]})
    return Scenario(sentinel=True)


def setup_tensor_dies(world: World) -> Scenario:
    world.fault = from_job(3, lambda body: Reply(500, vllm_error("EngineCore died unexpectedly", 500)))
    return Scenario(sentinel=True, check=_at_least_jobs(3))


def setup_engine_died(world: World) -> Scenario:
    world.fault = from_job(1, lambda body: Reply(500, vllm_error(ENGINE_DEAD, 500, "InternalServerError")))
    return Scenario(sentinel=True, check=_at_least_jobs(1))


def setup_flood(declare: bool) -> Callable[[World], Scenario]:
    def setup(world: World) -> Scenario:
        world.fault = lambda n, body: Reply(200, flood=10 * 1024**3, declare=declare,
                                            content_type="application/octet-stream")
        return Scenario(sentinel=True, check=_at_least_jobs(1))

    return setup


def setup_disk_full(world: World) -> Scenario:
    out = world.out_dir
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(out)],
                      capture_output=True).returncode != 0:
        pytest.skip("a small tmpfs needs root to mount (tests/unit/test_long_runs.py limits the file size instead)")
    world.cleanups.append(lambda: subprocess.run(["umount", str(out)], check=True))
    return Scenario(sentinel=True)


def setup_stale_part(world: World) -> Scenario:
    stale = Path(world.out_dir) / ".flood.tif.k3j9x0q2.part.tif"  # what a run killed mid-write leaves
    foreign = Path(world.out_dir) / "notes.part.tif"
    for path in (stale, foreign):
        path.write_bytes(b"left over")
        old = time.time() - 2 * 3600
        os.utime(path, (old, old))

    def check(world: World, result: Any, seconds: float) -> None:
        assert not stale.exists() and foreign.read_bytes() == b"left over"

    return Scenario(vanished=(os.path.join("out", stale.name),), check=check)


def setup_umask(world: World) -> Scenario:
    old = os.umask(0o022)
    world.cleanups.append(lambda: os.umask(old))

    def check(world: World, result: Any, seconds: float) -> None:
        for path in (world.output, world.probability):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, oct(os.stat(path).st_mode)

    return Scenario(check=check)


def setup_tensor_sockets_closed(world: World) -> Scenario:
    world.fault = from_job(3, lambda body: Reply(drop=True))
    return Scenario(sentinel=True, check=_at_least_jobs(4))  # the 3rd tile is re-sent once


def setup_tensor_hangup_mid_body(world: World) -> Scenario:
    world.fault = from_job(3, lambda body: replace(world.tensor_answer(body), truncate=100))
    return Scenario(sentinel=True, check=_at_least_jobs(3))


def setup_tensor_no_spec(world: World) -> Scenario:
    return Scenario(request={"model_spec_source": ""}, jobs=0)


def setup_input(**scene: Any) -> Callable[[World], Scenario]:
    def setup(world: World) -> Scenario:
        path = write_scene(world.tmp / "in" / "bad.tif", **scene)
        return Scenario(request={"input_path": path}, jobs=0)

    return setup


def setup_input_missing(world: World) -> Scenario:
    return Scenario(request={"input_path": str(world.tmp / "in" / "nope.tif")}, requests=0)


def setup_input_text(world: World) -> Scenario:
    text = world.tmp / "in" / "notes.tif"
    text.write_text("this is not a raster\n")
    return Scenario(request={"input_path": str(text)}, requests=0)


def setup_input_complex(world: World) -> Scenario:
    data = (np.full((6, 64, 80), 1000, np.float32) + 1j * 50).astype(np.complex64)
    path = write_scene(world.tmp / "in" / "slc.tif", fill=data, dtype="complex64", nodata=None)
    return Scenario(request={"input_path": path}, jobs=0)


def setup_nan_inf(world: World) -> Scenario:
    data = np.full((6, 64, 80), np.nan, np.float32)
    data[:, ::3] = np.inf
    data[:, 1::3] = -np.inf
    path = write_scene(world.tmp / "in" / "nan.tif", fill=data, dtype="float32", nodata=None)
    return Scenario(request={"input_path": path}, jobs=0)


def setup_not_writable(world: World) -> Scenario:
    from plugin.core import raster

    real = os.access
    patch = pytest.MonkeyPatch()  # we may run as root, where chmod does not stop a write
    patch.setattr(raster.os, "access", lambda p, m: False if str(p) == str(world.out_dir) else real(p, m))
    world.cleanups.append(patch.undo)
    return Scenario(requests=0)


def setup_folder_removed(folder: str, first: int, probability_elsewhere: bool = False):
    def setup(world: World) -> Scenario:
        request = {}
        if probability_elsewhere:
            (world.tmp / folder).mkdir()
            request["probability_path"] = str(world.tmp / folder / "probability.tif")

        def fault(n: int, body: dict) -> Optional[Reply]:
            if n == first:
                shutil.rmtree(world.tmp / folder)
            return None

        world.fault = fault
        return Scenario(request=request, vanished=(folder,), check=_at_least_jobs(first))

    return setup


def setup_single_pixel(world: World) -> Scenario:
    one = write_scene(world.tmp / "in" / "one.tif", h=1, w=1)

    def check(world: World, result: Any, seconds: float) -> None:
        paths = [world.output] + ([world.probability] if world.kind == "tensor" else [])
        for path in paths:
            with rasterio.open(path) as ds:
                assert (ds.width, ds.height, ds.crs) == (1, 1, rasterio.crs.CRS.from_epsg(32633))
        with rasterio.open(world.output) as ds:
            value = int(ds.read(1)[0, 0])
        assert value in (0, 1) and (result.valid_pixels, result.water_pixels) == (1, value)
        assert len(world.jobs()) == 1

    return Scenario(request={"input_path": one}, check=check)


def setup_cancel_mid_request(world: World) -> Scenario:
    world.fault = lambda n, body: Reply(200, {"data": {}}, delay=30)

    def check(world: World, err: Any, seconds: float) -> None:
        assert _wait_for(lambda: world.srv.disconnects == ["/pooling"]), world.srv.disconnects

    progress = Recorder(lambda r: len(world.jobs()) >= 1)
    return Scenario(progress=progress, client={"read_timeout": 60}, jobs=1, sentinel=True, check=check,
                    seconds=3.0)


def setup_cancel_mid_run_tensor(world: World) -> Scenario:
    world.fault = from_job(3, lambda body: Reply(200, {"data": []}, delay=30))

    def check(world: World, err: Any, seconds: float) -> None:
        assert world.srv.calls("POST", "/pooling")
        assert _wait_for(lambda: len(world.srv.disconnects) == 2), world.srv.disconnects
        assert len(world.jobs()) == 4  # tiles 3 and 4 in flight, nothing sent after the cancel

    progress = Recorder(lambda r: len(world.jobs()) >= 4)
    return Scenario(progress=progress, client={"read_timeout": 60}, sentinel=True, check=check, seconds=4.0)


# ----------------------------------------------------------------------------------------- the matrix
_LOG = "see the server's log"
_RETRY_HINT = r"starting, overloaded, or its engine died"
_IMAGE_HINT = r"did not answer like the TerraTorch segmentation plugin"
_TRUNCATED = r"sent a truncated answer to /pooling \(the connection closed mid-body\)"
_DROPPED = r"dropped the connection"
_CLOSED = r"closed the connection without answering /pooling"
_CRASHED = r"may have crashed or restarted"
_NODATA = r"Every pixel of '.*' is nodata in the bands used \(\[1, 2, 3, 4, 5, 6\]\)"
_CANCELLED = r"^Cancelled by the user; no output was written\.$"

CASES: list[Case] = [
    Case("conn-refused", "nothing listens on the server's loopback port", setup_refused, ConnectionFailed,
         r"Connection refused by http://127\.0\.0\.1:\d+: nothing is listening there", r"Start the vLLM server"),
    Case("dns-invalid-host", "the URL's host is floodmapper-fault.invalid", setup_dns,
         ConnectionFailed, r"host name 'floodmapper-fault\.invalid' of the server URL could not be resolved \(DNS\)",
         r"typos"),
    Case("tls-plain-http-peer", "an https URL to the plain-HTTP peer", setup_tls_plain, ConnectionFailed,
         r"^TLS failed with the vLLM server at https://127\.0\.0\.1", r"scheme \(http/https\) matches"),
    Case("tls-self-signed", "a TLS peer with a self-signed certificate", setup_tls_self_signed, ConnectionFailed,
         r"^TLS failed .*certificate verify failed", r"'CA bundle' setting"),
    Case("connect-timeout", "a listener whose accept backlog is full", setup_connect_timeout,
         ConnectionFailed, r"Connecting to the vLLM server at .* timed out after 0\.3 s", r"raise the connect timeout"),
    Case("read-timeout", "/pooling answers after 3 s; read timeout 0.5 s", setup_read_timeout,
         ConnectionFailed, r"did not answer /pooling within the read timeout of 0\.5 s", r"raise the read timeout"),
    Case("stalled-trickle", "the /pooling body trickles 1 byte per 50 ms",
         setup_trickle, ConnectionFailed, r"gave no complete answer in 1 s", r"raise the read timeout"),
    Case("tensor-stalled-trickle", "a tile answer trickles 1 byte per 5 ms",
         setup_tensor_trickle, ConnectionFailed, r"gave no complete answer", r"raise the read timeout",
         kind="tensor"),
    Case("http-401", "a proxy answers 401 to every request", setup_401, ServerError,
         r"refused the request to /v1/models \(HTTP 401: Unauthorized\)", r"authentication configuration"),
    Case("http-403", "a proxy answers 403 to every /pooling", setup_403, ServerError,
         r"refused the request to /pooling \(HTTP 403: Forbidden\)", r"authentication configuration"),
    Case("model-not-listed", "model 'other'; the server lists test-model",
         setup_model_not_listed, InputError, r"does not serve the model 'other'; it serves: test-model\.",
         r"Use one of those names"),
    Case("pooling-404-unknown-model", "/pooling answers 404 model does not exist",
         setup_pooling_404, ServerError,
         r"does not know the model 'test-model' \(HTTP 404: The model `test-model` does not exist\.\)\. "
         r"It serves: test-model, other-model\.", r"Use the name /v1/models lists"),
    Case("no-pooling-route", "/pooling answers the framework's 404", setup_no_route, ServerError,
         r"has no /pooling endpoint \(HTTP 404\)", r"must be the server root .*without /v1"),
    Case("http-400-vllm-message", "the job answers 400 with error.message",
         every_job(Reply(400, vllm_error("The output path '/x' does not exist"))), ServerError,
         r"rejected the request: The output path '/x' does not exist\.", r"the server's own"),
    Case("http-500-message", "the job answers 500 with a message",
         every_job(Reply(500, vllm_error("[Errno 2] No such file or directory: '/in.tif'", 500))), ServerError,
         r"failed while processing /pooling \(HTTP 500\): \[Errno 2\] No such file or directory: '/in\.tif'",
         r"See the server's log"),
    Case("probe-500-unrecognised", "the transport probe answers 500", setup_probe_500, ServerError,
         r"Could not tell whether .* runs the TerraTorch IOProcessor plugin: .*HTTP 500: boom in the probe",
         r"--io-processor-plugin terratorch_segmentation' for image-to-image, or without it"),
    Case("tensor-empty-500", "a tile answered by an empty 500",
         setup_tensor_empty_500, TransportUnsupported,
         r"runs the TerraTorch IOProcessor plugin, so it cannot answer tensor-to-tensor requests \(HTTP 500 "
         r"with an empty message\)", r"Use the image transport", kind="tensor"),
    Case("http-502-retried", "the job answers 502 every time, retries=2", setup_retried(502), ServerError,
         r"is unavailable \(HTTP 502: 502 from the proxy\), still after 2 retries", r"a 502/504 comes from a proxy"),
    Case("http-503-retried", "the job answers 503 every time, retries=2", setup_retried(503), ServerError,
         r"is unavailable \(HTTP 503: 503 from the proxy\), still after 2 retries", _RETRY_HINT),
    Case("http-504-retried", "the job answers 504 every time, retries=2", setup_retried(504), ServerError,
         r"is unavailable \(HTTP 504: 504 from the proxy\), still after 2 retries", r"a 502/504 comes from a proxy"),
    Case("retry-after-honoured", "503 with Retry-After 1, retries=1",
         setup_retry_after("1", None, 0.95, 4.0), ServerError,
         r"is unavailable \(HTTP 503: starting\), still after 1 retry", _RETRY_HINT),
    Case("retry-after-capped", "503 with Retry-After 3600, cap 0.4 s",
         setup_retry_after("3600", 0.4, 0.35, 3.0), ServerError,
         r"is unavailable \(HTTP 503: starting\), still after 1 retry", _RETRY_HINT),
    Case("non-json-body", "the job answers 200 text/html (a login page)",
         every_job(Reply(200, "<html>Sign in</html>", content_type="text/html")), ServerError,
         r"answered /pooling with something that is not JSON \(text/html\): '<html>Sign in</html>'",
         r"a proxy in front of it needs configuring"),
    Case("truncated-body", "Content-Length 4000, 50 bytes sent, close",
         every_job(Reply(200, {"data": {"data": "A" * 3980}}, truncate=50), sentinel=True), ServerError,
         _TRUNCATED, _DROPPED),
    Case("hangup-before-answer", "the peer closes without a status line",
         every_job(Reply(drop=True), jobs=2), ConnectionFailed, _CLOSED, _CRASHED),
    Case("chunked-torn", "chunked body closed before the last chunk", setup_chunked_torn,
         ServerError, _TRUNCATED, _DROPPED),
    Case("image-no-image", "the job answers JSON without the image", every_job(Reply(200, {"data": {}})),
         ServerError, r"The server's /pooling answer has no image", _IMAGE_HINT),
    Case("image-not-geotiff", "the job answers base64 of PNG bytes",
         every_job(Reply(200, {"data": {"data_format": "b64_json",
                                        "data": base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode()}})),
         ServerError, r"The server's image is not a GeoTIFF", _IMAGE_HINT),
    Case("image-grid-mismatch", "the server's map is 80x60 for an 80x64 input",
         setup_grid_mismatch, ServerError,
         r"does not match the input raster's grid: size 80×60 instead of 80×64", r"use the tensor transport"),
    Case("no-crs-location-model", "no CRS; 500 Could not infer dtype",
         setup_no_crs, InputError, r"needs the raster's location, but the raster has no CRS",
         r"Assign a CRS to the raster"),
    Case("tensor-wrong-shape", "tile logits of 3 classes, the spec says 2", setup_tensor_wrong_shape,
         ServerError, r"returned logits of shape \[3, 32, 32\]; this tile needs \[2, 32, 32\]",
         r"model spec .* does not match the served model", kind="tensor"),
    Case("tensor-base64-garbage", "a tile answer's data is not base64", setup_tensor_garbage, ServerError,
         r"The server's logits are not valid base64", r"server log", kind="tensor"),
    Case("tensor-nan-logits", "every tile answer's logits are NaN", setup_tensor_nan, ServerError, r"(?i)\bnan\b",
         r"check SCALE/OFFSET .* or serve the model in float32", kind="tensor"),
    Case("tensor-server-dies-midrun", "500 EngineCore died from the 3rd tile on", setup_tensor_dies, ServerError,
         r"failed while processing /pooling \(HTTP 500\): EngineCore died unexpectedly.* The run stopped after "
         r"\d+ of 9 tiles; no output was written\.", r"See the server's log",
         kind="tensor"),
    Case("tensor-sockets-closed-midrun", "connections closed from the 3rd tile on",
         setup_tensor_sockets_closed, ConnectionFailed, _CLOSED, _CRASHED, kind="tensor"),
    Case("tensor-hangup-mid-body", "the 3rd tile answer is cut after 100 bytes",
         setup_tensor_hangup_mid_body, ServerError, _TRUNCATED, _DROPPED, kind="tensor"),
    Case("tensor-no-model-spec", "no model spec, the model is no preset",
         setup_tensor_no_spec, ModelSpecError, r"needs the model's config\.json and none was given",
         r"Set the model spec", kind="tensor"),
    Case("input-missing", "the input path does not exist", setup_input_missing, InputError,
         r"Cannot open the raster '.*nope\.tif': .*No such file", r"Choose a raster GDAL can read"),
    Case("input-not-raster", "the input is a text file", setup_input_text, InputError,
         r"Cannot open the raster '.*notes\.tif': .*not recognized", r"Choose a raster GDAL can read"),
    Case("input-complex", "complex64 bands (a radar SLC product)", setup_input_complex, InputError,
         r"Band\(s\) 1, 2, 3, 4, 5, 6 of '.*slc\.tif' hold complex numbers \(complex64\)",
         r"Use a multispectral raster"),
    Case("output-is-input", "the output path is the input path",
         lambda w: Scenario(request={"output_path": w.input}, requests=0), OutputError,
         r"The output '.*scene\.tif' is the input raster\.", r"Choose another output file"),
    Case("output-folder-missing", "the output folder does not exist",
         lambda w: Scenario(request={"output_path": str(w.tmp / "nope" / "flood.tif")}, requests=0), OutputError,
         r"The output folder '.*nope' does not exist\.", r"Create it"),
    Case("output-folder-not-writable", "os.access: the folder is not writable", setup_not_writable,
         OutputError, r"The output folder '.*out' is not writable\.", r"Choose a folder you can write to"),
    Case("output-folder-removed-image", "the output folder is deleted while waiting",
         setup_folder_removed("out", 1), OutputError, r"The output folder '.*out' does not exist\.", r"Create it"),
    Case("output-folder-removed-tensor", "the output folder is deleted mid-run", setup_folder_removed("out", 3),
         OutputError, r"The output folder '.*out' went away while the flood map was written",
         r"output folder still exists", kind="tensor"),
    Case("probability-folder-removed", "the probability's folder is deleted mid-run",
         setup_folder_removed("prob", 3, probability_elsewhere=True), OutputError,
         r"The output folder '.*prob' went away while the flood map was written", r"output folder still exists",
         kind="tensor"),
    Case("too-few-bands", "a 3-band raster for a 6-band model", setup_input(count=3), MissingBands,
         r"The raster has 3 band\(s\); the model needs 6", r"stack them first"),
    Case("all-nodata", "every pixel is the nodata value", setup_input(fill=0), InputError, _NODATA,
         r"Check the raster and its nodata value"),
    Case("nan-inf-everywhere", "float32 NaN, +Inf, -Inf, no nodata value", setup_nan_inf,
         InputError, _NODATA, r"Check the raster and its nodata value"),
    Case("single-pixel-image", "a 1x1 raster, image transport", setup_single_pixel, None, "", ""),
    Case("single-pixel-tensor", "a 1x1 raster, tensor transport", setup_single_pixel, None, "", "",
         kind="tensor"),
    Case("unknown-transport", "transport 'carrier-pigeon'",
         lambda w: Scenario(request={"transport": "carrier-pigeon"}, requests=0), InputError,
         r"Unknown transport 'carrier-pigeon'", r"Use auto, image or tensor"),
    Case("forced-image-unreachable-file", "image, remote server, no path mapping",
         lambda w: Scenario(request={"transport": "image", "server_can_read_local_files": False}, requests=0),
         TransportUnsupported, r"cannot read the local file '.*scene\.tif'", r"set a path mapping"),
    Case("forced-image-on-tensor-server", "image, the server has no IOProcessor",
         lambda w: Scenario(request={"transport": "image", "server_can_read_local_files": True}, jobs=0),
         TransportUnsupported, r"started without the TerraTorch IOProcessor plugin, so it cannot do image-to-image",
         r"Choose the tensor transport", kind="tensor"),
    Case("forced-tensor-on-image-server", "tensor, the server has the IOProcessor",
         lambda w: Scenario(request={"transport": "tensor"}, jobs=0), TransportUnsupported,
         r"runs the TerraTorch IOProcessor plugin, so it cannot answer tensor-to-tensor requests",
         r"Choose the image transport"),
    Case("cancel-before-start", "cancelled before the job starts",
         lambda w: Scenario(progress=Recorder(lambda r: True), requests=0), Cancelled, _CANCELLED, r"^$"),
    Case("cancel-mid-request", "cancel while the image job waits", setup_cancel_mid_request,
         Cancelled, _CANCELLED, r"^$"),
    Case("cancel-mid-run-tensor", "cancel with 2 tiles stitched, 2 in flight",
         setup_cancel_mid_run_tensor, Cancelled, _CANCELLED, r"^$", kind="tensor"),
    Case("tensor-engine-died", "a tile answered with vLLM's EngineDeadError 500", setup_engine_died, EngineDied,
         r"The engine of the vLLM server at \S+ stopped while it processed /pooling and must be restarted "
         r"\(HTTP 500: EngineCore encountered an issue.*This run sent float16 tensors of shape \[6, 32, 32\]",
         r"--dtype.*SERVER_DTYPE", kind="tensor"),
    Case("image-engine-died", "the job is answered with vLLM's EngineDeadError 500", setup_engine_died, EngineDied,
         r"The engine of the vLLM server at \S+ stopped while it processed /pooling and must be restarted",
         r"another dtype than the server's --dtype.*image-to-image server must run --dtype float16"),
    Case("image-server-dtype-float32", "image, SERVER_DTYPE float32",
         lambda w: Scenario(request={"transport": "image", "server_dtype": "float32"}, jobs=0),
         TransportUnsupported, r"runs float32 \(SERVER_DTYPE\), and image-to-image sends float16 tiles",
         r"--dtype float16"),
    Case("tensor-answer-10gb", "a tile answer announces 10 GB", setup_flood(True), ServerError,
         r"to /pooling announces 10,737,418,240 bytes; this request's answer is at most [\d,]+ bytes",
         r"Something other than vLLM may be answering", kind="tensor"),
    Case("tensor-answer-endless", "a tile answer goes on with no length", setup_flood(False), ServerError,
         r"to /pooling went on past [\d,]+ bytes", r"Something other than vLLM", kind="tensor"),
    Case("image-answer-10gb", "the job's answer announces 10 GB", setup_flood(True), ServerError,
         r"to /pooling announces 10,737,418,240 bytes", r"Something other than vLLM"),
    Case("output-disk-full", "the output folder is a full 8 kB tmpfs", setup_disk_full, OutputError,
         r"Writing the flood map .* failed: .*Nothing was written; an earlier flood map of that name is untouched",
         r"free space", kind="tensor"),
    Case("stale-part-of-a-killed-run", "a 2-hour-old .part of ours in the folder", setup_stale_part, None, "", "",
         kind="tensor"),
    Case("output-permissions", "umask 022", setup_umask, None, "", "", kind="tensor"),
]


# ----------------------------------------------------------------------------------------------- tests
def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root: relative path -> content digest ("dir" for folders)."""
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """tmp_path as the job's whole world: private temp folder (Python and GDAL), working directory."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    for var in ("TMPDIR", "TEMP", "TMP", "CPL_TMPDIR"):
        monkeypatch.setenv(var, str(private))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_fault(case: Case, sandbox: Path) -> None:
    world = World(sandbox, case.kind)
    try:
        _run_case(case, world, sandbox)
    finally:
        world.close()


def _run_case(case: Case, world: World, root: Path) -> None:
    scenario = case.setup(world) or Scenario()
    client_args = {"retries": 0, "backoff": 0.0, "connect_timeout": 2.0, "read_timeout": 5.0, **scenario.client}
    client = VllmClient(scenario.url or world.srv.url, **client_args)
    request = world.request(**scenario.request)
    outputs = [request.output_path] + ([request.probability_path] if request.probability_path else [])
    if scenario.sentinel:
        for path in outputs:
            Path(path).write_bytes(b"an older map that must survive: " + path.encode())
    before = snapshot(root)
    progress = scenario.progress or Recorder()
    t0 = time.monotonic()
    try:
        if case.exc is None:
            outcome: Any = map_floods(request, client, progress)
        else:
            with pytest.raises(FloodMapperError) as info:
                map_floods(request, client, progress)
            outcome = info.value
    finally:
        seconds = time.monotonic() - t0
        client.close()
    after = snapshot(root)

    gone = tuple(scenario.vanished)
    before = {k: v for k, v in before.items() if not any(k == g or k.startswith(g + os.sep) for g in gone)}
    if case.exc is None:
        created = {os.path.relpath(p, root) for p in outputs}
        assert set(after) - set(before) == created, sorted(set(after) ^ set(before))
        assert {k: v for k, v in after.items() if k not in created} == before
        assert not progress.warnings, progress.warnings
    else:
        err = outcome
        assert type(err) is case.exc, f"{type(err).__name__}: {err}"
        assert re.search(case.message, err.message), err.message
        assert re.search(case.hint, err.hint), err.hint
        # nothing left: no new file or folder anywhere (outputs, .part files, temp folders), none changed
        assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                                 if before.get(k) != after.get(k)}
        assert not [p for p in outputs if os.path.exists(p) and os.path.relpath(p, root) not in before]
    if scenario.requests is not None:
        assert len(world.srv.requests) == scenario.requests, [(r.method, r.path) for r in world.srv.requests]
    if scenario.jobs is not None:
        assert len(world.jobs()) == scenario.jobs
    if scenario.check is not None:
        scenario.check(world, outcome, seconds)
    assert seconds < scenario.seconds, seconds
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("floodmapper-tile") and t.is_alive()]
    assert not leaked, leaked  # a job returns only once its worker threads are done


_ROW = re.compile(r"^\| (\d+) \| ([a-z0-9-]+) \| (.+?) \| (\w+): (.+) \|$")


def test_table_and_cases_agree() -> None:
    """The docstring's table is the list of cases: it must be exactly CASES, in order."""
    rows = [_ROW.match(line) for line in (__doc__ or "").splitlines() if re.match(r"^\| \d+ \|", line)]
    assert all(rows), [line for line in (__doc__ or "").splitlines() if re.match(r"^\| \d+ \|", line)]
    assert [int(r.group(1)) for r in rows] == list(range(1, len(rows) + 1))
    assert [r.group(2) for r in rows] == [c.id for c in CASES]
    assert [r.group(3) for r in rows] == [c.fault for c in CASES]
    assert [r.group(4) for r in rows] == [c.exc.__name__ if c.exc else "success" for c in CASES]
    assert len({c.id for c in CASES}) == len(CASES) >= 30
