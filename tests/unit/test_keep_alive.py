"""Keep-alive: a local engine that outlives its run is found and reused by the next one (checked by model, dtype
and vLLM environment), is never stopped mid-job, and stops by itself once idle, leaving nothing behind.

Against tests/fixtures/fake_vllm_entry.py, which runs the real entry point's idle watch; the real engine under
qgis_process is exercised in tests/qgis/test_local_engine.py.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import requests

from plugin.core import engine as eng
from plugin.core import engines, kept_engine
from plugin.core.settings import Settings, env_keep_alive
from tests.fixtures.fake_engine import fake_settings, isolated_engines, make, stand_in_engine
from tests.fixtures.progress import Recorder

IDLE_MIN = 0.05  # 3 s


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolation = isolated_engines(monkeypatch, ("FAKE_VLLM_", "FLOODMAPPER_"))
    next(isolation)
    monkeypatch.setenv("FLOODMAPPER_HOME", str(tmp_path / "home"))
    yield
    next(isolation, None)  # kept engines are left running by stop_all(): killed here, nothing outlives a test
    for _path, record in kept_engine.records():
        if record.pid > 0:
            eng.kill_foreign_group(record.pid, 3)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return fake_settings(tmp_path, engine_keep_alive=IDLE_MIN)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_until(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_kept_engine_is_reused_never_stops_mid_job_and_stops_when_idle(settings, tmp_path):
    first = make(settings, tmp_path)
    url = first.ensure_running(Recorder())
    pid, out_dir = first.pid, first.output_dir
    record = kept_engine.read_record(kept_engine.record_path(eng.engine_key_hash(settings)))
    assert record is not None and record.pid == pid and record.url == url and record.model_id == settings.model
    assert record.dtype == "float16" and record.io_processor
    release = first.hold()
    release()
    first.detach()  # what the exit of the process that started it does
    assert alive(pid), "a kept engine outlives the process that started it"

    second = make(settings, tmp_path)  # a later run
    progress = Recorder()
    assert second.ensure_running(progress) == url
    assert second.pid == pid and second.output_dir == out_dir
    assert any("Reusing the local vLLM engine kept running" in m for m in progress.infos), progress.infos
    assert not any("Starting the local vLLM engine" in m for m in progress.infos)

    release = second.hold()
    time.sleep(3 * IDLE_MIN * 60)  # a job three times longer than the idle time
    assert alive(pid), "a kept engine must not stop while a job holds it"
    assert requests.get(url + "/health", timeout=5).status_code == 200
    release()
    t0 = time.monotonic()
    assert wait_until(lambda: not alive(pid), IDLE_MIN * 60 + 10), "the idle engine must stop by itself"
    assert time.monotonic() - t0 >= IDLE_MIN * 60 - 0.5, "it stopped before its idle time"
    assert not kept_engine.record_path(record.key).exists()
    assert not os.path.exists(out_dir)
    assert "kept engine stopping: unused for" in Path(record.log_path).read_text()

    # the run after that starts a new engine, saying why
    third = make(settings, tmp_path)
    progress = Recorder()
    third.ensure_running(progress)
    assert third.pid != pid and any("Starting the local vLLM engine" in m for m in progress.infos)
    third.stop()


def _kept_engine(settings: Settings, tmp_path) -> tuple[int, Path]:
    """An engine started with keep-alive and left by its process: its pid and its record's path."""
    first = make(settings, tmp_path)
    first.ensure_running()
    pid = first.pid
    first.detach()
    return pid, kept_engine.record_path(eng.engine_key_hash(settings))


def test_an_engine_of_another_environment_is_not_reused_and_goes(settings, tmp_path):
    old, path = _kept_engine(settings, tmp_path)
    data = json.loads(path.read_text())
    data["python"] = ["/elsewhere/bin/python", 1, 1]  # as if the vLLM environment had been rebuilt since
    path.write_text(json.dumps(data))

    second = make(settings, tmp_path)
    progress = Recorder()
    second.ensure_running(progress)
    assert second.pid != old
    assert any(m.startswith(f"Not reusing the local vLLM engine kept running (pid {old}): it runs another vLLM "
                            "environment") for m in progress.infos), progress.infos
    assert wait_until(lambda: not alive(old), 10), "the engine nobody can reuse must stop"
    assert kept_engine.read_record(path).pid == second.pid
    second.stop()
    assert wait_until(lambda: not alive(second.pid or 0), 10)
    assert not path.exists(), "an explicit stop removes the record"


def test_a_kept_engine_of_other_settings_is_stopped_before_a_new_one_starts(settings, tmp_path):
    old, path = _kept_engine(settings, tmp_path)
    folder = kept_engine.read_record(path).output_dir
    assert os.path.isdir(folder)
    os.utime(path, (time.time() - 600, time.time() - 600))  # idle for a while, yet its keep-alive not over
    other = make(Settings(**{**settings.__dict__, "max_num_seqs": 3}), tmp_path)
    other.ensure_running()
    assert not alive(old), "two engines would compete for the same cores and memory"
    assert not path.exists()
    assert not os.path.exists(folder), "the stopped engine's output folder goes with it"
    other.stop()


def test_the_record_and_folder_of_an_engine_killed_from_outside_are_removed_at_the_next_start(settings, tmp_path):
    old, path = _kept_engine(settings, tmp_path)
    folder = kept_engine.read_record(path).output_dir
    eng.kill_foreign_group(old, 3)  # as `kill` or a restart would: the engine leaves its record behind
    assert path.exists() and not alive(old)
    other = make(Settings(**{**settings.__dict__, "max_num_seqs": 3}), tmp_path)
    other.ensure_running()
    assert not path.exists()
    assert not os.path.exists(folder), "and so is the output folder it left"
    other.stop()


def test_forgetting_an_engine_removes_no_folder_the_plugin_did_not_make(settings, tmp_path):
    old, path = _kept_engine(settings, tmp_path)
    eng.kill_foreign_group(old, 3)
    precious = tmp_path / "maps"
    precious.mkdir()
    data = json.loads(path.read_text())
    own = data["output_dir"]
    data["output_dir"] = str(precious)  # a record edited by hand, or written by another program
    path.write_text(json.dumps(data))
    kept_engine.forget_engine(eng.engine_key_hash(settings), old)
    assert not path.exists() and precious.is_dir()
    shutil.rmtree(own)


def test_no_process_groups_no_kept_engine_alive(monkeypatch):
    """Where os.killpg does not exist (Windows), no engine of the plugin can be running."""
    monkeypatch.delattr(os, "killpg")
    assert eng.group_alive(os.getpid()) is False


def test_without_keep_alive_nothing_is_kept(settings, tmp_path):
    engine = make(Settings(**{**settings.__dict__, "engine_keep_alive": 0.0}), tmp_path)
    engine.ensure_running()
    pid = engine.pid
    assert kept_engine.records() == []
    engines.stop_all()
    engine.detach()
    assert wait_until(lambda: not alive(pid), 10)


def test_lease_touches_the_record_while_held(tmp_path):
    path = tmp_path / "engine.json"
    path.write_text("{}")
    lease = kept_engine.Lease(path, keep_alive=4.0)  # touched every second while held
    first = lease.hold()
    second = lease.hold()  # two jobs at once
    os.utime(path, (0, 0))
    assert wait_until(lambda: kept_engine.idle_seconds(path) < 5, 3)
    first()
    first()  # a second call of the same release changes nothing
    os.utime(path, (0, 0))
    assert wait_until(lambda: kept_engine.idle_seconds(path) < 5, 3), "one job still holds it"
    second()
    assert kept_engine.idle_seconds(path) < 5, "the release is the last use"
    os.utime(path, (0, 0))
    time.sleep(2)
    assert kept_engine.idle_seconds(path) > 1000, "released: the idle time runs"


def test_keep_alive_from_the_environment():
    assert env_keep_alive({}) is None
    assert env_keep_alive({"FLOODMAPPER_ENGINE_KEEP_ALIVE": "15"}) == 15.0
    assert env_keep_alive({"FLOODMAPPER_ENGINE_KEEP_ALIVE": "-3"}) == 0.0
    assert Settings().with_env({"FLOODMAPPER_ENGINE_KEEP_ALIVE": "2.5"}).engine_keep_alive == 2.5
    assert env_keep_alive({"FLOODMAPPER_ENGINE_KEEP_ALIVE": "ten"}) is None
    with pytest.raises(ValueError, match="is not a number of minutes; set it to e.g. 10"):
        env_keep_alive({"FLOODMAPPER_ENGINE_KEEP_ALIVE": "ten"}, strict=True)


def test_a_jobs_log_sink_ends_with_the_job(tmp_path, monkeypatch):
    """A kept engine logs on after the job (vLLM's periodic statistics): its lines stay in the engine's log file
    and tail, and no longer reach the finished job's sink, which in qgis_process is a QGIS that may be exiting."""
    from plugin.core import backends
    from plugin.core.jobs import MapFloodsRequest

    engine = stand_in_engine(monkeypatch, "http://127.0.0.1:9", tmp_path / "engine.log")
    sink_lines: list[str] = []
    backend = backends.LocalBackend(Settings(), on_log=sink_lines.append)
    request = MapFloodsRequest(input_path="in.tif", output_path=str(tmp_path / "out.tif"), server_url="")
    conn = backend.connect(request, None, "auto", Recorder())
    assert engine.on_log == sink_lines.append  # the job's lines go to the job
    conn.close()
    assert engine.on_log is None and engine.released == 1
    engine.on_log = print  # another job's sink, set since: left alone
    conn.close()
    assert engine.on_log is print


def test_a_kept_engine_that_loads_longer_than_its_idle_time_is_not_stopped_for_idleness(settings, tmp_path,
                                                                                           monkeypatch):
    """The idle time counts from the end of the last run: a start-up slower than the keep-alive (a busy machine,
    a big model) is not idleness, and the engine must come up."""
    monkeypatch.setenv("FAKE_VLLM_DELAY", str(3 * IDLE_MIN * 60))
    engine = make(settings, tmp_path)
    url = engine.ensure_running(Recorder())
    assert alive(engine.pid)
    assert requests.get(url + "/health", timeout=5).status_code == 200
    assert "kept engine stopping" not in engine.log_tail(50)
    engine.stop()
