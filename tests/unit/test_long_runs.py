"""Long runs that survive: a server that restarts, an engine that stops, an answer that never ends, a write
that fails. Against the fake server of tests/fixtures/world.py, whose rule "model" gives the same answer for
the same tile every time, so a run that rode out an outage must give exactly the undisturbed run's map.
The real server killed and restarted mid-run is tests/e2e/test_long_runs_real.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rasterio

from plugin.core.errors import Cancelled, EngineDied, FloodMapperError, OutputError, ServerError
from plugin.core.output import STALE_AFTER_S, remove_stale_parts, temp_beside
from plugin.core.pipeline import map_floods
from tests.fixtures.fake_http import Reply, vllm_error
from tests.fixtures.progress import Recorder
from tests.fixtures.world import ENGINE_DEAD, World, write_scene

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path, "tensor")
    w.input = write_scene(tmp_path / "in" / "big.tif", h=160, w=200)  # 49 tiles of 32 px
    yield w
    w.close()


def reference(world, tmp_path) -> bytes:
    """The map of an undisturbed run of the same raster."""
    out = tmp_path / "reference.tif"
    map_floods(world.request(output_path=str(out), probability_path=""), world.client())
    with rasterio.open(out) as ds:
        return ds.read(1).tobytes()


def read(path) -> bytes:
    with rasterio.open(path) as ds:
        return ds.read(1).tobytes()


def restart_later(world, after_jobs: int, down_for: float) -> threading.Thread:
    """Kill the fake server once it has seen `after_jobs` jobs; start it again on the same port later."""

    def run() -> None:
        while len(world.jobs()) < after_jobs:
            time.sleep(0.01)
        world.restart_server(down_for)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_run_rides_out_a_server_restart_and_gives_the_same_map(world, tmp_path):
    expected = reference(world, tmp_path)
    progress = Recorder()
    restarter = restart_later(world, after_jobs=len(world.jobs()) + 10, down_for=6.0)
    result = map_floods(world.request(retry_wait=30.0, concurrency=2, probability_path=""), world.client(),
                        progress)
    restarter.join(5)
    assert result.transport == "tensor"
    assert read(world.output) == expected  # byte for byte: no tile lost, none doubled
    notes = [m for m in progress.infos if "unreachable" in m]
    assert notes and "waiting for it" in notes[0] and "of 30 s" in notes[0], progress.infos[-8:]


def test_a_job_that_starts_while_its_server_restarts_waits_for_it(world, tmp_path):
    """The rows of a batch that meet a restart: the server answered the first row, is away when the next
    starts, and is waited for within the retry wait; a server never reached fails at once (a wrong URL)."""
    from plugin.core import outage

    expected = reference(world, tmp_path)  # the first row: the server answers
    url = world.srv.url
    assert outage.answered_before(url)
    world.srv.kill()
    restarter = threading.Thread(target=world.restart_server, args=(3.0,), daemon=True)
    restarter.start()
    progress = Recorder()
    t0 = time.monotonic()
    map_floods(world.request(retry_wait=30.0, probability_path=""), world.client(), progress)
    restarter.join(5)
    assert read(world.output) == expected
    assert time.monotonic() - t0 >= 2.5  # it waited for the server, it did not fail
    assert any("It answered earlier; waiting up to 30 s" in m for m in progress.warnings), progress.warnings

    with outage._ANSWERED_LOCK:
        outage._ANSWERED.discard(url.rstrip("/"))
    world.srv.kill()
    t0 = time.monotonic()
    with pytest.raises(FloodMapperError) as err:
        map_floods(world.request(retry_wait=30.0, probability_path=""), world.client(), Recorder())
    assert time.monotonic() - t0 < 10 and err.value.transient, err.value.message


def test_503_while_the_server_restarts_is_waited_out(world, tmp_path):
    expected = reference(world, tmp_path)
    busy_until = time.monotonic() + 3.0
    world.fault = lambda n, body: (Reply(503, "starting", content_type="text/plain")
                                   if time.monotonic() < busy_until else None)
    map_floods(world.request(retry_wait=30.0, probability_path=""), world.client(retries=0))
    assert read(world.output) == expected


def test_an_engine_that_stops_once_is_waited_for_twice_on_a_tile_stops_the_run(world, tmp_path):
    died = {"n": 0}

    def once(n, body):
        if n == 3 and died["n"] == 0:
            died["n"] += 1
            return Reply(500, vllm_error(ENGINE_DEAD, 500, "InternalServerError"))
        return None

    world.fault = once
    map_floods(world.request(retry_wait=10.0, concurrency=1), world.client())
    assert died["n"] == 1 and os.path.exists(world.output)

    first_tile = {}

    def always_on_one_tile(n, body):  # the same tile (the same request body) stops the engine every time
        key = body["messages"][0]["content"][0]["image_embeds"]["pixel_values"]
        first_tile.setdefault("body", key)
        return Reply(500, vllm_error(ENGINE_DEAD, 500, "InternalServerError")) if key == first_tile["body"] else None

    world.fault = always_on_one_tile
    out = tmp_path / "out" / "second.tif"
    with pytest.raises(EngineDied) as err:
        map_floods(world.request(output_path=str(out), retry_wait=10.0, concurrency=1), world.client())
    assert "stopped on this tile twice" in err.value.message and not out.exists()


def test_an_engine_that_stops_is_the_error_even_when_the_dropped_requests_come_first(world):
    """vLLM answers the request its engine stopped on with the engine's error and drops the others' connections as
    it shuts down; the drops can reach the client before that answer."""
    first = threading.Lock()

    def engine_stops(n, body):
        if first.acquire(blocking=False):  # the first tile stops the engine; its answer comes last
            return Reply(500, vllm_error(ENGINE_DEAD, 500, "InternalServerError"), delay=0.5)
        return Reply(drop=True)

    world.fault = engine_stops
    with pytest.raises(EngineDied) as err:
        map_floods(world.request(concurrency=4), world.client(retries=0))
    assert "must be restarted" in err.value.message and "This run sent float16 tensors" in err.value.message
    assert not os.path.exists(world.output)


def test_a_server_that_only_drops_requests_is_reported_as_that(world):
    world.fault = lambda n, body: Reply(drop=True)
    t0 = time.monotonic()
    with pytest.raises(FloodMapperError) as err:
        map_floods(world.request(concurrency=4), world.client(retries=0))
    assert not isinstance(err.value, EngineDied) and err.value.transient, err.value.message
    assert time.monotonic() - t0 < 5 and not os.path.exists(world.output)


def test_errors_waiting_cannot_fix_stop_at_once(world):
    world.fault = lambda n, body: Reply(400, vllm_error("pixel_values has the wrong shape"))
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="wrong shape"):
        map_floods(world.request(retry_wait=60.0), world.client())
    assert time.monotonic() - t0 < 5 and not os.path.exists(world.output)


def test_the_retry_wait_ends_and_says_so(world):
    world.fault = lambda n, body: Reply(503, "down", content_type="text/plain") if n >= 3 else None
    t0 = time.monotonic()
    with pytest.raises(ServerError) as err:
        map_floods(world.request(retry_wait=2.0), world.client(retries=0))
    assert 2.0 <= time.monotonic() - t0 < 10
    assert "did not answer again within the retry wait of 2 s" in err.value.message
    assert "retry wait" in err.value.hint
    assert not os.path.exists(world.output) and not os.path.exists(world.probability)


def test_cancel_while_waiting_for_the_server_stops_within_a_second(world):
    world.fault = lambda n, body: Reply(503, "down", content_type="text/plain") if n >= 3 else None
    progress = Recorder(lambda r: r.since("The server is unreachable") is not None)
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        map_floods(world.request(retry_wait=120.0), world.client(retries=0), progress)
    assert time.monotonic() - t0 < 10  # the note comes within 5 s of the outage, the cancel within 1 s of it
    assert not [t for t in threading.enumerate() if t.name.startswith("floodmapper-tile") and t.is_alive()]


def test_image_to_image_is_asked_again_once_the_server_is_back(tmp_path):
    world = World(tmp_path, "image")
    try:
        answered = {"n": 0}

        def refuse_first(n, body):
            answered["n"] += 1
            return Reply(503, "restarting", content_type="text/plain") if answered["n"] == 1 else None

        world.fault = refuse_first
        progress = Recorder()
        result = map_floods(world.request(retry_wait=30.0), world.client(retries=0), progress)
        assert result.transport == "image" and len(world.jobs()) == 2
        assert any("sending the request again" in m for m in progress.infos)
    finally:
        world.close()


# --------------------------------------------------------------------------------------- bounded answers
def test_an_endless_answer_is_refused_with_memory_bounded(tmp_path):
    """A 'server' that answers a tile with 10 GB: the client reads at most what a tile's answer can be."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from plugin.core.errors import ServerError
from plugin.core.model_spec import ModelSpec
from plugin.core.tensor.runner import answer_limit
from plugin.core.vllm_api import VllmClient
from tests.fixtures.fake_http import FakeHttpServer, Reply
spec = ModelSpec(channels=6, tile_height=512, tile_width=512, num_classes=2, means=(0,) * 6, stds=(1,) * 6)
for declare in (True, False):
    with FakeHttpServer() as srv, VllmClient(srv.url, retries=0) as client:
        srv.on("POST", "/pooling", Reply(200, flood=10 * 1024 ** 3, declare=declare,
                                         content_type="application/octet-stream"))
        try:
            client.post_tensor(b"{{}}", "m", max_bytes=answer_limit(spec))
        except ServerError as exc:
            print("refused:", exc.message)
# VmHWM is this program's own peak: ru_maxrss would count the forked copy of the pytest process it came from
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("peak_rss_mb", int(hwm.split()[1]) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "refused: " in lines[0] and "announces 10,737,418,240 bytes" in lines[0]
    assert "refused: " in lines[1] and "went on past" in lines[1]
    peak = int(lines[-1].split()[1])
    print(f"client peak RSS with a 10 GB answer: {peak} MB")
    assert peak < 1024


# ------------------------------------------------------------------------------------------ the outputs
def test_outputs_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        tmp = temp_beside(str(tmp_path / "flood.tif"))
        assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o644
        os.umask(0o077)
        tmp2 = temp_beside(str(tmp_path / "flood2.tif"))
        assert stat.S_IMODE(os.stat(tmp2).st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_run_that_was_killed_leaves_parts_the_next_run_removes(tmp_path):
    stale = Path(temp_beside(str(tmp_path / "flood.tif")))
    stale_dir = Path(temp_beside(str(tmp_path / "model"), folder=True))
    fresh = Path(temp_beside(str(tmp_path / "other.tif")))  # a job running now
    foreign = [tmp_path / ".flood.tif.part", tmp_path / "notes.part.tif", tmp_path / ".hidden.abcdefgh.part.tif.x"]
    for path in foreign:
        path.write_text("not ours")
    old = time.time() - STALE_AFTER_S - 60
    for path in (stale, stale_dir, *foreign):
        os.utime(path, (old, old))
    removed = remove_stale_parts(str(tmp_path))
    assert sorted(removed) == sorted([str(stale), str(stale_dir)])
    assert fresh.exists() and all(p.exists() for p in foreign)


def _write_job_in_a_child(world, out: Path, limit_bytes: int) -> subprocess.CompletedProcess:
    """The job in a child process under a file size limit (RLIMIT_FSIZE; SIGXFSZ ignored, so a write that
    passes the limit fails with EFBIG as on a full disk)."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(ROOT)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, resource.RLIM_INFINITY))
from plugin.core.errors import OutputError
from plugin.core.jobs import MapFloodsRequest
from plugin.core.pipeline import map_floods
from plugin.core.vllm_api import VllmClient
req = MapFloodsRequest(input_path={world.input!r}, output_path={str(out)!r}, server_url={world.srv.url!r},
                       model="test-model", model_spec_source={world.spec!r}, retry_wait=0,
                       probability_path={str(out.with_name("p.tif"))!r})
try:
    map_floods(req, VllmClient({world.srv.url!r}, retries=0))
except OutputError as exc:
    print("OutputError:", exc.message)
    print("hint:", exc.hint)
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_a_write_past_the_file_size_limit_fails_cleanly(world, tmp_path):
    out = Path(world.out_dir) / "flood.tif"
    out.write_bytes(b"an earlier map")
    proc = _write_job_in_a_child(world, out, 3_000)  # the map (~1.2 kB) fits, its probability (~5 kB) not
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OutputError: Writing the flood map" in proc.stdout and "Nothing was written" in proc.stdout
    assert "free space" in proc.stdout
    assert out.read_bytes() == b"an earlier map"
    assert sorted(os.listdir(world.out_dir)) == ["flood.tif"]  # no part, no probability


def test_a_full_disk_fails_cleanly(world, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (the file size limit test covers the same path)")
    try:
        out = small / "flood.tif"
        (small / "flood.tif").write_bytes(b"an earlier map")
        big = write_scene(tmp_path / "in" / "bigger.tif", h=400, w=400)  # map ~5 kB + probability ~24 kB
        request = world.request(input_path=big, output_path=str(out), probability_path=str(small / "p.tif"))
        with pytest.raises(OutputError) as err:
            map_floods(request, world.client())
        assert "Writing the flood map" in err.value.message and "free space" in err.value.hint
        assert out.read_bytes() == b"an earlier map" and sorted(os.listdir(small)) == ["flood.tif"]
    finally:
        subprocess.run(["umount", str(small)], check=True)
