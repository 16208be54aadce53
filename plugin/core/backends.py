"""How a job reaches its server: a remote one the caller has a client for, or the local engine, started to suit
the job (its dtype, and whether it loads the IOProcessor: transport_choice.plan_local_engine)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, Protocol

from .errors import EngineError
from .image_source import ServerReach
from .jobs import MapFloodsRequest
from .model_spec import preset_for_model_name
from .progress import Progress
from .raster import RasterInfo
from .settings import Settings
from .vllm_api import VllmClient


@dataclass
class Connection:
    """A server ready for the job, and what the job must know of it."""

    client: VllmClient
    reach: ServerReach  # what the server can read (image-to-image)
    server_dtype: str  # its --dtype ("auto": what vLLM's auto runs for the model)
    dtype_reason: str = ""
    owns_client: bool = False  # the job closes it when done
    revive: Optional[Callable[[], bool]] = None  # starts the server again if it died (the local engine)
    release: Optional[Callable[[], None]] = None  # the job is done with the server (a kept engine's idle time starts)
    concurrency: Optional[int] = None  # tiles in flight when the job sets none (the local engine: what it batches)
    concurrency_reason: str = ""  # why, for the log

    def close(self) -> None:
        """The job is done with the server."""
        try:
            if self.owns_client:
                self.client.close()
        finally:
            if self.release is not None:
                self.release()


class Backend(Protocol):
    def reach(self, request: MapFloodsRequest) -> ServerReach:
        """What the server will be able to read, known before connecting."""

    def spec_source(self, request: MapFloodsRequest) -> str:
        """The model's config.json (or preset) when it is known without asking the server, else ""."""

    def connect(self, request: MapFloodsRequest, info: RasterInfo, asked: str, progress: Progress) -> Connection:
        """The server, ready for this job (the local engine starts here)."""


class RemoteBackend:
    """A server someone else runs; the caller made the client (authentication, proxy, TLS)."""

    def __init__(self, client: VllmClient) -> None:
        self.client = client

    def reach(self, request: MapFloodsRequest) -> ServerReach:
        return ServerReach(request.server_url or self.client.base_url, request.server_can_read_local_files,
                           request.path_map_local, request.path_map_server)

    def spec_source(self, request: MapFloodsRequest) -> str:
        return request.model_spec_source

    def connect(self, request: MapFloodsRequest, info: RasterInfo, asked: str, progress: Progress) -> Connection:
        return Connection(self.client, self.reach(request), request.server_dtype, request.server_dtype_reason)


class LocalBackend:
    """The engine the plugin runs on this computer: it reads local files, and runs the dtype it was given."""

    def __init__(self, settings: Settings, on_log: Optional[Callable[[str], None]] = None) -> None:
        self.settings = settings
        self.on_log = on_log

    def reach(self, request: MapFloodsRequest) -> ServerReach:
        return ServerReach("the local engine", reads_local_files=True)

    def spec_source(self, request: MapFloodsRequest) -> str:
        model = self.settings.model
        if request.model_spec_source:
            return request.model_spec_source
        if os.path.isfile(os.path.join(model, "config.json")):
            return model
        return preset_for_model_name(model) or ""

    def connect(self, request: MapFloodsRequest, info: RasterInfo, asked: str, progress: Progress) -> Connection:
        from .engine_env import check_environment
        from .engines import get_engine
        from .kept_engine import known_device
        from .settings import env_keep_alive
        from .transport_choice import plan_local_engine

        s = self.settings
        try:
            env_keep_alive(strict=True)
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        # a kept engine of this environment tells the device without asking the environment (~20 s)
        device = (s.engine_keep_alive > 0 and known_device(s.vllm_python)) or check_environment(s.vllm_python).device
        plan = plan_local_engine(s, asked, info, request.image_max_megapixels, device)
        progress.info(f"Local engine: {plan.reason}")
        engine = get_engine(replace(s, dtype=plan.dtype), on_log=self.on_log, io_processor=plan.io_processor)
        url = engine.ensure_running(progress, timeout=s.startup_timeout)
        held = [engine.hold()]
        client = VllmClient(url, connect_timeout=s.connect_timeout, read_timeout=s.read_timeout)

        restarts = []

        def revive() -> bool:
            """Start the engine again, once per job, if it died (killed, out of memory); point the client at it.
            False when its process runs (busy, or shutting down: the next look decides)."""
            if engine.is_alive():
                return False
            if restarts:
                raise EngineError("The local vLLM engine stopped again after it was started anew during this job.",
                                  f"See its log ({engine.log_path}); the machine may be short of memory.")
            restarts.append(time.monotonic())
            client.rebase(engine.ensure_running(progress, timeout=s.startup_timeout))
            held[0]()
            held[0] = engine.hold()  # the new engine's own lease
            return True

        def release() -> None:
            held[0]()
            if self.on_log is not None and engine.on_log == self.on_log:
                # the job's log sink ends with the job: a kept engine logs on for minutes, and in qgis_process
                # a line relayed while QGIS exits would reach a torn-down message log (its lines stay in the file)
                engine.on_log = None

        # The engine serves this job alone: keep as many tiles in flight as it batches in one step (max-num-seqs)
        batch = max(1, int(s.max_num_seqs))
        return Connection(client, ServerReach(url, reads_local_files=True), plan.dtype,
                          f"the local engine runs {plan.dtype}", owns_client=True, revive=revive, release=release,
                          concurrency=batch,
                          concurrency_reason=f"the local engine batches {batch} at once (max-num-seqs)")
