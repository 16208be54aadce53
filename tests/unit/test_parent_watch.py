"""The engine's parent watch: when the process that started the engine dies (qgis_process exits without
exit hooks, QGIS crashes), the engine's whole process group goes too, and so does its private output folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ENTRY_DIR = Path(__file__).resolve().parents[2] / "plugin" / "core"

# the "engine": leads its own session, runs the watch on its parent, and has a child of its own and an output
# folder (its path is the first argument)
ENGINE = textwrap.dedent(f"""
    import os, subprocess, sys, time
    sys.path.insert(0, {str(ENTRY_DIR)!r})
    import vllm_entry
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(os.getpid(), child.pid, flush=True)
    vllm_entry.watch_parent(os.getppid(), interval=0.2, grace=3, output_dir=sys.argv[1])
    time.sleep(600)
""")

# the "starter" (QGIS): starts the engine in a new session, reports its pids, then waits to be killed
STARTER = textwrap.dedent(f"""
    import subprocess, sys, time
    p = subprocess.Popen([sys.executable, "-c", {ENGINE!r}, sys.argv[1]], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    print(p.stdout.readline().strip(), flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/status") as fh:
        return "State:\tZ" not in fh.read()


def test_engine_group_ends_when_its_starter_dies(tmp_path):
    out = tmp_path / "floodmapper-engine-out"
    out.mkdir()
    (out / "answer.tif").write_bytes(b"an IOProcessor output not yet read")
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(out)], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    engine_pid, child_pid = (int(x) for x in starter.stdout.readline().split())
    try:
        assert _alive(engine_pid) and _alive(child_pid)
        time.sleep(0.5)
        assert _alive(engine_pid), "the watch must not fire while the starter lives"
        assert out.is_dir()
        starter.kill()  # SIGKILL: no exit hook of the starter runs
        starter.wait()
        deadline = time.monotonic() + 10
        while (_alive(engine_pid) or _alive(child_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(engine_pid) and not _alive(child_pid)
        assert not out.exists(), "the engine's output folder must go with it"
    finally:
        for pid in (engine_pid, child_pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
