"""Headless runs whose server is killed at a random moment: `qgis_process` always ends with its own exit code
and message (1, or 0 when the server came back within the retry wait), never with a signal, and leaves no
temporary file.

The server here is the fake vLLM of tests/fixtures/fake_vllm.py in a process of its own, killed with SIGKILL
as a crashed or OOM-killed server is: what is under test is the client's side of a server that vanishes (the
connections reset, the requests in flight, the per-thread datasets), which is the same whatever served them.
A run whose server was killed after some tiles handed its datasets to a thread that could outlive the
process's exit, and GDAL was torn down under it (CPLAcquireMutex, then a segmentation fault): a run now
returns only once its threads are done.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from scripts.scenes import generate_scene
from tests.fixtures.world import model_config

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("FLOODMAPPER_KILLED_RUNS", "50"))


class Server:
    """The fake server's process, on a fixed port, which can be killed and started again."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.fake_vllm", "--port", str(self.port)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("PORT"), line
        self.port = int(line.split()[1])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def test_runs_whose_server_is_killed_end_with_their_code_and_message(tmp_path, capsys):
    scene = tmp_path / "scene.tif"
    generate_scene(scene, seed=8800, width=320, height=320)  # 121 tiles of 32 px: a few seconds of work
    spec = tmp_path / "config.json"
    spec.write_text(json.dumps(model_config()))
    profile = tmp_path / "qgis" / "profile" / "profiles" / "default" / "QGIS"
    profile.mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    rng = random.Random(8800)
    server = Server()
    outcomes = []
    try:
        for run in range(RUNS):
            comes_back = run % 2 == 1  # every other run, the server returns within the run's retry wait
            (profile / "QGIS3.ini").write_text(
                "[PythonPlugins]\nfloodmapper=true\nprocessing=true\n\n"
                f"[floodmapper]\nretry_wait={30 if comes_back else 0}\n")
            if server.proc.poll() is not None:
                server.start()
            target = out / f"flood-{run}.tif"
            env = {k: v for k, v in os.environ.items() if not k.startswith("FLOODMAPPER_")}
            env["FLOODMAPPER_QGIS_STATE"] = str(tmp_path / "qgis")
            command = [str(ROOT / "scripts" / "qgis-process"), "run", "floodmapper:map_floods", "--",
                       f"INPUT={scene}", "BACKEND=0", f"SERVER_URL={server.url}", "TRANSPORT=2",
                       f"MODEL_SPEC={spec}", f"OUTPUT={target}"]
            delay = rng.uniform(0.5, 6.0)  # qgis_process starts in 3-6 s: some kills come before any tile

            def kill_later(delay=delay, comes_back=comes_back) -> None:
                time.sleep(delay)
                server.kill()
                if comes_back:
                    time.sleep(1.0)
                    server.start()

            killer = threading.Thread(target=kill_later, daemon=True)
            t0 = time.monotonic()
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            killer.start()
            output, _ = proc.communicate(timeout=300)
            killer.join(30)
            outcomes.append((run, proc.returncode, round(time.monotonic() - t0, 1)))
            assert proc.returncode in (0, 1), f"run {run}: exit {proc.returncode} (a signal?)\n{output[-3000:]}"
            assert "Segmentation fault" not in output and "CPLAcquireMutex" not in output, output[-3000:]
            if proc.returncode == 1:
                assert "The vLLM server at" in output or "Connection refused" in output, output[-3000:]
                assert not target.exists()
            else:
                assert target.exists()
            assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], f"run {run} left parts"
    finally:
        server.kill()
    ok = sum(1 for _, code, _ in outcomes if code == 0)
    with capsys.disabled():
        print(f"\nkilled-server runs: {len(outcomes)} runs, {ok} mapped after the server came back, "
              f"{len(outcomes) - ok} ended with their message; longest {max(t for *_, t in outcomes):.0f} s")
    assert ok > 0 and len(outcomes) - ok > 0  # both ways out were taken
