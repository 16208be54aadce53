"""LocalEngine lifecycle against tests/fixtures/fake_vllm_entry.py (a tiny HTTP server, not vLLM).

The real engine is exercised by tests/e2e/test_engine_real.py; these tests inject the faults a real
vLLM cannot be made to produce on demand: crashes at start and later, an engine that stops answering,
a process that ignores SIGTERM, a grandchild left in the group.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from plugin.core import engine as eng
from plugin.core import engine_env, engines
from plugin.core.errors import Cancelled, EngineError
from plugin.core.settings import DEMO_MODEL_DIR, DEMO_MODEL_NAME, Settings
from tests.fixtures.fake_engine import FAKE, fake_settings, isolated_engines, make
from tests.fixtures.progress import Recorder


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    yield from isolated_engines(monkeypatch)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return fake_settings(tmp_path)


def gone(pid: int) -> bool:
    """True when the process no longer exists (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


def test_start_reuse_and_stop(settings, tmp_path):
    lines: list[str] = []
    engine = make(settings, tmp_path, on_log=lines.append)
    progress = Recorder()
    url = engine.ensure_running(progress)
    assert url.startswith("http://127.0.0.1:")
    assert requests.get(url + "/health", timeout=5).status_code == 200
    assert engine.model_id == settings.model
    assert any("Local vLLM engine ready" in m for m in progress.infos)
    pid, out_dir = engine.pid, engine.output_dir
    assert out_dir and os.path.isdir(out_dir)

    # Reused: same process, same URL.
    assert engine.ensure_running() == url
    assert engine.pid == pid

    engine.stop()
    assert wait_gone(pid)
    assert not engine.is_alive()
    assert not os.path.exists(out_dir), "the private IOProcessor folder must be removed"
    log = engine.log_path.read_text()
    assert "Application startup complete" in log
    assert "engine stopped" in log
    assert any("Application startup complete" in line for line in lines)


def test_command_line_and_environment(settings, tmp_path, monkeypatch):
    argv_file = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_VLLM_ARGV_FILE", str(argv_file))
    monkeypatch.setenv("PYTHONPATH", "/usr/share/qgis/python")  # what QGIS sets; must not leak
    settings = replace(settings, extra_args="--max-model-len 1024 --served-model-name 'my model'",
                       max_num_seqs=3)
    engine = make(settings, tmp_path)
    engine.ensure_running()
    out_dir = engine.output_dir
    engine.stop()
    record = json.loads(argv_file.read_text().splitlines()[0])
    argv, env = record["argv"], record["env"]
    assert argv[0] == settings.model
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    for flag in ("--skip-tokenizer-init", "--enforce-eager", "--enable-mm-embeds"):
        assert flag in argv
    assert argv[argv.index("--io-processor-plugin") + 1] == "terratorch_segmentation"
    assert argv[argv.index("--model-impl") + 1] == "terratorch"
    assert argv[argv.index("--dtype") + 1] == "float16"
    assert argv[argv.index("--max-num-seqs") + 1] == "3"
    assert "--gpu-memory-utilization" not in argv  # CPU environment
    assert argv[-4:] == ["--max-model-len", "1024", "--served-model-name", "my model"]
    assert json.loads(env["TERRATORCH_SEGMENTATION_IO_PROCESSOR_CONFIG"]) == {"output_path": out_dir}
    assert env["TMPDIR"] == out_dir  # vLLM's own temporary files go with the engine's folder
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["HF_HUB_OFFLINE"] == "1"  # a local model folder
    info = engine_env.check_environment(sys.executable, FAKE)
    assert info.raw["pythonpath"] is None


def test_a_model_folder_given_relative_to_the_caller_is_served_by_its_absolute_path(settings, tmp_path,
                                                                                    monkeypatch):
    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    info = engine_env.EngineInfo(sys.executable, "0.32.0", "1.2.13", "2.13.0", "cpu", ("terratorch_segmentation",))
    cmd = make(replace(settings, model="models/m"), tmp_path).build_command(info, 1234)
    assert cmd[cmd.index("serve") + 1] == str(tmp_path / "models" / "m")
    hub_id = make(replace(settings, model="ibm-nasa-geospatial/Prithvi"), tmp_path).build_command(info, 1234)
    assert hub_id[hub_id.index("serve") + 1] == "ibm-nasa-geospatial/Prithvi"  # a Hugging Face id stays as it is


def test_flags_follow_vllm_version_and_device(settings, tmp_path):
    engine = make(settings, tmp_path)
    old = engine_env.EngineInfo(sys.executable, "0.10.2", "1.1", "2.8.0", "cpu", ("terratorch_segmentation",))
    cmd = engine.build_command(old, 1234)
    assert "--enable-mm-embeds" not in cmd
    gpu = engine_env.EngineInfo(sys.executable, "0.11.1rc1", "1.2.13", "2.13.0", "gpu", ("terratorch_segmentation",))
    cmd = make(replace(settings, gpu_memory_utilization=0.5), tmp_path).build_command(gpu, 1234)
    assert "--enable-mm-embeds" in cmd
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.5"
    tensor = eng.LocalEngine(settings, tmp_path, io_processor=False, entry=FAKE)
    assert "--io-processor-plugin" not in tensor.build_command(gpu, 1234)
    demo = make(replace(settings, model=str(DEMO_MODEL_DIR)), tmp_path).build_command(gpu, 1234)
    assert demo[demo.index("--served-model-name") + 1] == DEMO_MODEL_NAME


def test_the_io_processor_engine_runs_float16_and_refuses_another_dtype(settings, tmp_path):
    info = engine_env.EngineInfo(sys.executable, "0.32.0", "1.2.13", "2.13.0", "cpu", ("terratorch_segmentation",))
    for dtype in ("auto", "float16"):
        engine = make(replace(settings, dtype=dtype), tmp_path)
        cmd = engine.build_command(info, 1)
        assert cmd[cmd.index("--dtype") + 1] == "float16" and engine.dtype == "float16"
    with pytest.raises(EngineError, match="Image-to-image needs the engine in float16"):
        make(replace(settings, dtype="float32"), tmp_path).build_command(info, 1)
    tensor = eng.LocalEngine(replace(settings, dtype="float32"), tmp_path, io_processor=False, entry=FAKE)
    cmd = tensor.build_command(info, 1)
    assert cmd[cmd.index("--dtype") + 1] == "float32"  # tensor mode: the client casts to the model dtype


def test_a_model_step_may_take_as_long_as_the_plugin_waits(settings, tmp_path, monkeypatch):
    """vLLM stops its engine when one model step outlasts VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (300 s by default),
    seen with a 512² tile of a ViT-L model in float16 on an AVX2 CPU: the engine gets the plugin's read timeout
    (never less than vLLM's default), and a value set in the environment stands."""
    from plugin.core.engine_command import serve_environment

    cpu = engine_env.EngineInfo(sys.executable, "0.32.0", "1.2.13", "2.13.0+cpu", "cpu", ("terratorch_segmentation",))
    monkeypatch.delenv("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", raising=False)
    env = serve_environment(replace(settings, read_timeout=1800.5), cpu, str(tmp_path))
    assert env["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "1801"
    env = serve_environment(replace(settings, read_timeout=60), replace(cpu, device="gpu"), str(tmp_path))
    assert env["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "300"
    monkeypatch.setenv("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "7200")
    assert serve_environment(settings, cpu, str(tmp_path))["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "7200"


def test_vllms_temporary_files_go_to_the_engines_own_folder_where_its_sockets_fit(settings):
    """vLLM leaves its message queue sockets (<temporary directory>/<uuid4>) and its vllm_dist_* files behind when
    it stops: they go to the engine's folder, removed with it, unless that would make a socket's path longer than
    Linux takes (then vLLM keeps the usual temporary directory)."""
    from plugin.core.engine_command import SOCKET_PATH_MAX, serve_environment

    cpu = engine_env.EngineInfo(sys.executable, "0.32.0", "1.2.13", "2.13.0+cpu", "cpu", ("terratorch_segmentation",))
    short = "/tmp/floodmapper-engine-abcd1234"
    assert serve_environment(settings, cpu, short)["TMPDIR"] == short
    fits = "/" + "d" * (SOCKET_PATH_MAX - 1 - 37)
    assert len(f"{fits}/{uuid.uuid4()}") == SOCKET_PATH_MAX
    assert serve_environment(settings, cpu, fits)["TMPDIR"] == fits
    assert "TMPDIR" not in serve_environment(settings, cpu, fits + "d")


def test_device_mismatch_and_bad_extra_args(settings, tmp_path):
    cpu = engine_env.EngineInfo(sys.executable, "0.32.0", "1.2.13", "2.13.0+cpu", "cpu", ("terratorch_segmentation",))
    with pytest.raises(EngineError, match="no usable GPU"):
        make(replace(settings, device="gpu"), tmp_path).build_command(cpu, 1)
    gpu = replace(cpu, device="gpu")
    with pytest.raises(EngineError, match="cannot run on the CPU"):
        make(replace(settings, device="cpu"), tmp_path).build_command(gpu, 1)
    with pytest.raises(EngineError, match="cannot be parsed"):
        make(replace(settings, extra_args="--x 'unclosed"), tmp_path).build_command(cpu, 1)
    no_plugin = replace(cpu, io_processor_plugins=("something_else",))
    with pytest.raises(EngineError, match="terratorch_segmentation"):
        make(settings, tmp_path).build_command(no_plugin, 1)


def test_crash_at_start_is_reported_with_log_lines(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "crash")
    engine = make(settings, tmp_path)
    with pytest.raises(EngineError) as err:
        engine.ensure_running()
    assert "exited with code 3" in err.value.message
    assert "Engine core initialization failed" in err.value.message
    assert str(engine.log_path) in err.value.hint
    assert not engine.is_alive()


def test_dead_engine_is_restarted(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "crash_after")
    monkeypatch.setenv("FAKE_VLLM_CRASH_AFTER", "1.5")
    engine = make(settings, tmp_path)
    engine.ensure_running()
    first = engine.pid
    assert wait_gone(first, 10)
    progress = Recorder()
    url = engine.ensure_running(progress)
    assert engine.pid != first
    assert requests.get(url + "/health", timeout=5).status_code == 200
    assert any("exited with code 7" in w for w in progress.warnings)


def test_unhealthy_engine_is_restarted(settings, tmp_path, monkeypatch):
    flag = tmp_path / "unhealthy"
    monkeypatch.setenv("FAKE_VLLM_UNHEALTHY_FILE", str(flag))
    engine = make(settings, tmp_path)
    engine.ensure_running()
    first = engine.pid
    flag.write_text(str(first))
    assert requests.get(engine.url + "/health", timeout=5).status_code == 503
    engine.ensure_running()
    assert engine.pid != first
    assert wait_gone(first)


def test_stop_ends_the_whole_process_group(settings, tmp_path, monkeypatch):
    child_file = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_VLLM_CHILD_FILE", str(child_file))
    engine = make(settings, tmp_path)
    engine.ensure_running()
    leader = engine.pid
    child = int(child_file.read_text())
    assert os.getpgid(child) == leader, "the engine's children share its own process group"
    assert os.getpgid(leader) != os.getpgid(0), "the engine is not in the caller's group"
    engine.stop()
    assert wait_gone(leader) and wait_gone(child)


def test_sigterm_ignored_escalates_to_sigkill(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "ignore_term")
    monkeypatch.setattr(eng, "STOP_GRACE", 1.0)
    engine = make(settings, tmp_path)
    engine.ensure_running()
    pid = engine.pid
    t0 = time.monotonic()
    engine.stop()
    assert wait_gone(pid)
    assert time.monotonic() - t0 < 8


def test_cancel_while_starting_stops_the_engine(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DELAY", "30")
    engine = make(settings, tmp_path)
    pids: list[int] = []
    progress = Recorder.cancelling_at_call(3)
    original = engine._probe

    def probe() -> str:
        if engine.pid:
            pids.append(engine.pid)
        return original()

    engine._probe = probe
    with pytest.raises(Cancelled):
        engine.ensure_running(progress)
    assert pids and wait_gone(pids[0])
    assert not engine.is_alive()


def test_start_timeout(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DELAY", "30")
    engine = make(settings, tmp_path)
    with pytest.raises(EngineError, match="did not become healthy within 2 s") as err:
        engine.ensure_running(timeout=2)
    assert "fake vllm" in err.value.message  # the last log lines are quoted
    assert not engine.is_alive()


def test_check_failure_and_missing_python(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_CHECK_FAIL", "ImportError: No module named 'terratorch'")
    with pytest.raises(EngineError, match="No module named 'terratorch'") as err:
        make(settings, tmp_path).ensure_running()
    assert "setup-vllm-env" in err.value.hint
    with pytest.raises(EngineError, match="not found"):
        make(replace(settings, vllm_python=str(tmp_path / "nope" / "python")), tmp_path).ensure_running()


def test_vllm_console_script_resolves_to_its_python(tmp_path):
    script = tmp_path / "vllm"
    script.write_text(f"#!{sys.executable}\nimport sys\n")
    assert engine_env.resolve_python(str(script)) == sys.executable
    bad = tmp_path / "vllm-bad"
    bad.write_text("#!/bin/sh\necho\n")
    with pytest.raises(EngineError, match="neither"):
        engine_env.resolve_python(str(bad))


def test_registry_reuses_and_stops(settings, tmp_path):
    a = engines.get_engine(settings, entry=FAKE, log_dir=tmp_path)
    assert engines.get_engine(settings, entry=FAKE, log_dir=tmp_path) is a
    a.ensure_running()
    first = a.pid
    other = engines.get_engine(replace(settings, max_num_seqs=2), entry=FAKE, log_dir=tmp_path)
    assert other is not a
    assert wait_gone(first), "an engine for other settings is stopped (one engine at a time)"
    other.ensure_running()
    assert engines.running_engines() == [other]
    pid = other.pid
    engines.stop_all()
    assert wait_gone(pid)
    assert engines.running_engines() == []


def test_engine_status(settings, tmp_path):
    status = engines.engine_status(settings, entry=FAKE)
    assert not status.running and status.vllm_version == "0.32.0" and status.device == "cpu"
    status = engines.engine_status(settings, entry=FAKE, start=True)
    assert status.running and status.models == [settings.model]
    assert status.url.startswith("http://127.0.0.1:")
    assert "vLLM 0.32.0 on CPU" in status.summary()


def test_broken_log_callback_is_detached(settings, tmp_path):
    def boom(line: str) -> None:
        raise RuntimeError("sink closed")

    engine = make(settings, tmp_path, on_log=boom)
    assert engine.ensure_running()
    assert engine.on_log is None
    assert "log callback failed" in engine.log_tail(400)


def test_stop_all_reaches_engines_made_outside_the_registry(settings, tmp_path):
    engine = make(settings, tmp_path)  # not through get_engine()
    engine.ensure_running()
    pid = engine.pid
    assert engine in engines.running_engines()
    engines.stop_all()  # what the atexit hook runs
    assert wait_gone(pid)
    assert engines.running_engines() == []


def test_stop_from_another_thread_interrupts_a_start(settings, tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv("FAKE_VLLM_DELAY", "60")
    engine = make(settings, tmp_path)
    errors: list[Exception] = []

    def start() -> None:
        try:
            engine.ensure_running()
        except EngineError as exc:
            errors.append(exc)

    worker = threading.Thread(target=start)
    worker.start()
    deadline = time.monotonic() + 20
    while engine.pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = engine.pid
    assert pid is not None
    t0 = time.monotonic()
    engine.stop()  # what stop_all() at QGIS exit does while a worker thread waits for /health
    worker.join(10)
    assert time.monotonic() - t0 < 8
    assert not worker.is_alive()
    assert errors and "stopped while it was starting" in errors[0].message
    assert wait_gone(pid)
