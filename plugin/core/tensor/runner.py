"""Runs a tensor job: tiles read, sent and stitched with at most `concurrency` requests in flight.

    tiles with a pixel to map (tile_plan.py; the others get no request)
    -> windowed read of the area (one dataset, shared by the workers) -> band selection -> reflectance scale/offset
    -> nodata, mask-polygon and cloud mask
    -> normalise with the model's means/stds -> cast to the server's dtype -> request body -> POST /pooling
    -> logits -> scores (two classes: the water margin, scores.py) -> cos^2 blending in row bands
    -> water class (and probability) -> GeoTIFF rows

As many tiles again are read and encoded ahead, each waiting for a request slot: when an answer comes back, the
next request goes out at once instead of after a read and an encode (the server does not sit idle meanwhile). They
are read once the first requests are out, so that the first tiles have the cores to themselves.

A run that has taken a minute keeps each finished row band beside the output (checkpoint.py); the same job run again
after a stop puts them in its map and sends the tiles from the first unfinished band on.

Memory is bounded by channels x tile x width for the row bands plus `concurrency` tiles on the wire and as
many read ahead, and GDAL's cache of decoded input blocks (128-512 MB, block_cache.py); the whole raster is never
held. A run, finished, failed or cancelled, returns only once its worker threads are done with its dataset: nothing
of it outlives the call.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from typing import Any, Callable, Optional, Union

import numpy as np

from ..area_of_interest import Area, whole_area
from ..errors import Cancelled, EngineDied, FloodMapperError, InputError, ServerError
from ..http import CancelToken
from ..jobs import TensorJob, TensorRunStats
from ..model_spec import ModelSpec
from ..outage import Outage
from ..progress import NullProgress, Progress, ProgressSpan, check_cancel
from ..raster import HiddenNodata, hidden_nodata
from . import block_cache, failure
from . import scores as tile_scores
from .checkpoint import Checkpoint, KeptRows, Resumed, file_identity, fingerprint
from .codec import Body, PayloadEncoder, choose_answer, choose_encoding, decode_logits, logits_float32
from .inputs import Normaliser, tile_locations
from .lookup import prepare as prepare_lookups
from .reader import SharedDataset, band_numbers, detect_scale, mask_needs_read, read_tile
from .tile_plan import tiles_to_send
from .tiling import RowBandStitcher, Tile, TileGrid, overlap_pixels
from .writer import MapWriter

# GDAL decodes the compressed blocks of one read on this many threads (a tile spans up to four blocks, the plan of
# tiles to send reads 1024x1024 windows): the reads hold the shared dataset's lock for less time
GDAL_DECODE_THREADS = "ALL_CPUS"
INFO_EVERY_S = 5.0
POLL_S = 0.1  # how often the main loop looks at the cancel flag
START_POLL_S = 0.001  # how often it looks whether the first requests are out, before it reads ahead (for POLL_S)
PREPARED_AHEAD = 1  # tiles read and encoded ahead, per request slot


def run_tensor(job: TensorJob, client: Any, progress: Optional[Progress] = None,
               span: Optional[ProgressSpan] = None, *, revive: Optional[Callable[[], bool]] = None,
               encoding: Optional[str] = None, answer: Optional[str] = None) -> TensorRunStats:
    """Map floods on `job.input` through a tensor-mode vLLM server, writing `job.output_path`.

    Raises Cancelled (nothing left behind) when `progress.is_canceled()` turns true. A tile whose server went
    away is sent again once it answers, within `job.retry_wait` (`revive` starts the local engine again if it
    died). `encoding` and `answer` force the tensor and logits formats (tests, benchmarks); by default the
    server's version decides.
    """
    import rasterio
    from rasterio._env import get_gdal_config

    progress = progress or NullProgress()
    span = span or ProgressSpan()
    t_start = time.monotonic()
    spec = job.spec.validate_for_tensor()
    info = job.input
    area = job.area or whole_area(info)
    limit = _current_cache_bytes()  # a user's own GDAL_CACHEMAX caps what the run asks for
    threads = get_gdal_config("GDAL_NUM_THREADS")  # a user's own setting stands, 0 and 1 included
    if threads is None:
        threads = GDAL_DECODE_THREADS
    with rasterio.Env(GDAL_CACHEMAX=min(block_cache.MIN_BYTES, limit), GDAL_NUM_THREADS=threads):
        try:
            src = rasterio.open(info.path)
        except rasterio.errors.RasterioError as exc:
            raise InputError(f"Cannot open the input raster {info.path}: {exc}.",
                             "Check the path (or URL) and that GDAL can read the format.") from exc
        with src, ExitStack() as scope:
            bands = band_numbers(job.bands, src.count, spec.channels)
            cache = min(block_cache.cache_bytes(src, bands, spec.tile_height, area.width), limit)
            scope.enter_context(rasterio.Env(GDAL_CACHEMAX=cache))
            offset = 0.0 if job.offset is None else float(job.offset)
            scale = job.scale
            if scale is None:
                scale = detect_scale(src, bands, area)
                progress.info(f"Reflectance scale auto-detected: x{scale:g}"
                              + (f", offset {offset:g}" if offset else ""))
            scale = float(scale)
            ov = overlap_pixels(min(spec.tile_height, spec.tile_width), job.overlap)
            grid = TileGrid.build(area.width, area.height, spec.tile_width, spec.tile_height, ov, ov)
            send = tiles_to_send(src, bands, grid, area, progress.is_canceled)
            locations = (tile_locations(src, grid, spec.location_shape, job.location_mode, area)
                         if spec.has_location else {})
            encoder = PayloadEncoder(job.model, spec, encoding or choose_encoding(job.version),
                                     answer or choose_answer(job.version))
            normalise = Normaliser(spec, scale, offset, src.dtypes[bands[0] - 1])
            prepare_lookups()  # timed here, before the worker threads share the cores
            skipped = len(grid) - int(send.sum())
            progress.info(
                f"Tensor transport: {area.width}x{area.height} px in {len(grid)} tiles of "
                f"{spec.tile_width}x{spec.tile_height} (overlap {ov} px)"
                + (f", {len(grid) - skipped} to send ({skipped} with nothing to map are not sent)" if skipped else "")
                + f", {job.concurrency} in flight, {encoder.encoding} tensors in {spec.dtype}, {encoder.answer} logits"
                + ("" if encoder.base64 == "pybase64" else
                   "; base64 by Python's own encoder: pybase64 encodes each tile ~10x faster (Plugins ▸ Flood Mapper "
                   "▸ Install Python dependencies…, or pip install pybase64 with QGIS's Python)"))
            hidden = hidden_nodata(src, bands)
            key = fingerprint(input=file_identity(job.source or info.path), bands=bands, scale=scale, offset=offset,
                              spec=_spec_values(spec), model=job.model, overlap=ov, location=job.location_mode,
                              window=area.window.flatten(), transform=tuple(area.transform)[:6],
                              mask=area.mask.bits if area.mask is not None else None, hidden=repr(hidden),
                              logits=encoder.logits_dtype, scores=tile_scores.channels(spec))
            writer = MapWriter(src, job.output_path, job.probability_path, spec, area, job.tags)
            kept = None
            try:  # right after the writer is made: an interrupt (Ctrl+C) in between would leave its files
                kept = KeptRows(Checkpoint(job.output_path, key, bool(job.probability_path)), writer, grid.n_rows,
                                area.height, t_start, progress)
                tiles = _Tiles(src, grid, bands, mask_needs_read(src, bands), normalise, encoder,
                               locations, client, spec, writer, area, send, hidden, kept.resume(), kept.flushed)
                tiles.outage = Outage(client, job.retry_wait, tiles.stop.is_set, revive)
                n_requests = tiles.run(job.concurrency, progress, span)
                writer.commit()
                kept.done()
            except BaseException as exc:
                writer.discard()
                said = kept.stopped() if kept is not None else ""
                if said and isinstance(exc, FloodMapperError) and not isinstance(exc, Cancelled):
                    exc.message += said
                elif said:
                    progress.info(said.strip())
                raise
            seconds = time.monotonic() - t_start
            total = area.width * area.height
    progress.set_progress(span.end)
    progress.info(f"Tensor transport done: {len(grid)} tiles, {n_requests} requests in {seconds:.1f} s")
    return TensorRunStats(
        stats=writer.stats.result(), output_path=job.output_path, total_pixels=total, tiles=len(grid),
        requests=n_requests, seconds=seconds, encoding=encoder.encoding, answer=encoder.answer,
        tile_size=spec.tile_size, overlap=ov, concurrency=job.concurrency, scale=scale, offset=offset,
        probability_path=job.probability_path,
    )


def post_tile(client: Any, body: Union[bytes, Body], encoder: PayloadEncoder, spec: ModelSpec,
              token: Optional[CancelToken] = None) -> np.ndarray:
    """POST one tile's body and decode the logits, whichever format the server answered in."""
    reply = client.post_tensor(body, encoder.model, token, max_bytes=answer_limit(spec))
    headers = reply.headers
    return decode_logits(reply.content, spec.num_classes, spec.tile_height, spec.tile_width,
                         headers.get("Content-Type", ""), headers.get("metadata", ""), encoder.logits_dtype)


def _spec_values(spec: ModelSpec) -> dict:
    """What of a spec the logits depend on (not where it came from or why)."""
    return {"channels": spec.channels, "tile": [spec.tile_height, spec.tile_width], "classes": spec.num_classes,
            "means": list(spec.means), "stds": list(spec.stds), "dtype": spec.dtype, "input": spec.input_name,
            "location": [spec.location_name, list(spec.location_shape), list(spec.location_order)],
            "water": spec.water_class, "extra": spec.extra_inputs}


def answer_limit(spec: ModelSpec) -> int:
    """The most a tile's answer can take: float32 logits as base64 in JSON (raw bytes are smaller)."""
    return spec.num_classes * spec.tile_height * spec.tile_width * 4 * 4 // 3 + 64 * 1024


def fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _current_cache_bytes() -> int:
    """GDAL_CACHEMAX as set (by the user, or QGIS), in bytes; unset, as much as a run would ask for."""
    from rasterio._env import get_gdal_config

    value = get_gdal_config("GDAL_CACHEMAX")
    try:
        value = int(value)
    except (TypeError, ValueError):
        return block_cache.MAX_BYTES
    return value * 1024 * 1024 if value < 100000 else value  # GDAL reads small values as MB


class _Tiles:
    """The tiles of one run: each read, normalised and sent in a worker thread, stitched in the caller's."""

    def __init__(self, src: Any, grid: TileGrid, bands: list[int], mask_read: bool, normalise: Normaliser,
                 encoder: PayloadEncoder, locations: dict, client: Any, spec: ModelSpec, writer: MapWriter,
                 area: Area, send: np.ndarray, hidden: HiddenNodata, resumed: Optional[Resumed] = None,
                 on_flushed: Optional[Callable] = None) -> None:
        """`resumed`: the rows an earlier run of the job kept (put in the map already); the tiles of the bands
        before its next band are not sent. `on_flushed` hears each finished band (checkpoint.KeptRows)."""
        self.grid = grid
        self.area = area
        self.send = send  # [rows, cols]: the tiles with a pixel to map (tile_plan.py)
        self.bands = bands
        self.mask_read = mask_read
        self.hidden = hidden  # nodata GDAL's masks do not give (raster.hidden_nodata)
        self.normalise = normalise
        self.encoder = encoder
        self.locations = locations
        self.client = client
        self.spec = spec
        self.dataset = SharedDataset(src)
        self.start_row = resumed.next_row if resumed is not None else 0
        self.stitcher = RowBandStitcher(grid, tile_scores.channels(spec), writer.sink, self.start_row,
                                        resumed.rows_done if resumed is not None else 0,
                                        resumed.carry if resumed is not None else None, on_flushed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.tokens: set[CancelToken] = set()  # the requests on the wire
        self.sent = 0
        self.outage = Outage(client, 0.0, self.stop.is_set)
        self.engine_died: set[tuple[int, int]] = set()  # tiles the server's engine stopped on once
        self.slots = threading.BoundedSemaphore(1)  # run() sizes it

    def work(self, tile: Tile) -> Optional[tuple[Tile, Optional[np.ndarray], np.ndarray]]:
        from rasterio.errors import RasterioError

        if self.stop.is_set():
            return None
        try:
            with self.dataset as ds:
                raw, valid = read_tile(ds, self.bands, tile, self.mask_read, self.area, self.hidden)
        except RasterioError as exc:
            raise InputError(f"Reading the input raster failed at pixel ({tile.x0}, {tile.y0}): {exc}.",
                             "Check that the file is complete and readable (gdalinfo -checksum).") from None
        if not valid.any():
            return tile, None, valid  # nothing to ask the model about
        body = self.encoder.body(self.normalise(raw, valid), self.locations.get(tile.index))
        del raw
        if not self._take_slot():
            return None
        try:
            logits = self._send(tile, body)
        except BaseException:
            self.stop.set()  # the run ends with this error: no tile read ahead takes the slot
            raise
        finally:
            self.slots.release()
        del body
        if self.stop.is_set():
            return None
        # here, in the worker, not in the stitching thread
        scores = tile_scores.of_tile(logits_float32(logits), self.spec)
        if np.isnan(scores).any():  # NaN would silently read as "not water" everywhere it lands
            raise ServerError(
                f"The model returned NaN logits (or the same infinite logit for both classes) for the tile at pixel "
                f"({tile.x0}, {tile.y0}).",
                "The input is probably outside the range the model expects (an overflow in float16): check "
                "SCALE/OFFSET (reflectance 0-1) and BANDS, or serve the model in float32.")
        return tile, scores, valid

    def _take_slot(self) -> bool:
        """Wait for one of the `concurrency` request slots; False once the run stops."""
        while not self.slots.acquire(timeout=POLL_S):
            if self.stop.is_set():
                return False
        if self.stop.is_set():
            self.slots.release()
            return False
        return True

    def _send(self, tile: Tile, body: Body) -> Optional[np.ndarray]:
        """The tile's logits; sent again after the server went away and came back (Outage). An engine that
        stops on the same tile twice stops the run: the tile, not the server, is the problem."""
        while True:
            token = CancelToken()
            with self.lock:
                if self.stop.is_set():
                    return None
                self.sent += 1
                self.tokens.add(token)
            try:
                logits = post_tile(self.client, body, self.encoder, self.spec, token)
                self.outage.answered()
                return logits
            except Cancelled:
                raise
            except FloodMapperError as exc:
                if self.stop.is_set():
                    if isinstance(exc, EngineDied):
                        raise  # the run stops for another tile's error, which this may explain (run() picks it)
                    return None
                if isinstance(exc, EngineDied):
                    if tile.index in self.engine_died:
                        exc.message += " It stopped on this tile twice, so the tile itself is the likely cause."
                        raise
                    self.engine_died.add(tile.index)
                self.outage.ride_out(exc)
            finally:
                with self.lock:
                    self.tokens.discard(token)

    def run(self, concurrency: int, progress: Progress, span: ProgressSpan) -> int:
        """Send every tile; returns the number of requests. The threads are done, and the dataset closed, when it
        returns."""
        # the tiles read and encoded ahead wait for a slot: one freed by an answer is refilled at once
        self.slots = threading.BoundedSemaphore(concurrency)
        workers = concurrency + concurrency * PREPARED_AHEAD
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="floodmapper-tile")
        tiles = (tile for tile in self.grid if tile.row >= self.start_row)  # those before: kept by an earlier run
        pending: set[Future] = set()
        total = max(int(self.send[self.start_row:].sum()), 1)  # progress and ETA count the tiles that are sent
        nothing = np.zeros((self.grid.tile_height, self.grid.tile_width), dtype=bool)
        done = 0
        t0 = last_info = time.monotonic()
        # The tiles read ahead are read once the first requests are out: before, they would share the cores with
        # the first tiles' reads and encodes, and the server would wait for its first tiles that much longer.
        first_wave = min(concurrency, total)
        started = False
        try:
            exhausted = False
            while True:
                started = started or self.sent >= first_wave or time.monotonic() - t0 >= POLL_S
                while not exhausted and len(pending) < (workers if started else concurrency):
                    tile = next(tiles, None)
                    if tile is None:
                        exhausted = True
                        break
                    if not self.send[tile.row, tile.col]:
                        self.stitcher.add(tile, None, nothing)  # nothing to map: no request
                        continue
                    pending.add(executor.submit(self.work, tile))
                if not pending:
                    break
                finished, pending = wait(pending, timeout=POLL_S if started else START_POLL_S,
                                         return_when=FIRST_COMPLETED)
                check_cancel(progress)
                for fut in finished:
                    try:
                        result = fut.result()
                    except FloodMapperError as exc:
                        reported = failure.cause(exc, (finished | pending) - {fut})
                        failure.explain(reported, self.spec, done, total)
                        if reported is not exc:
                            raise reported from None
                        raise
                    if result is None:  # only after stop, which only a raise sets
                        continue
                    self.stitcher.add(*result)
                    if result[1] is None:  # nothing to map after all (zero fill): no request, out of the count
                        total = max(total - 1, 1)
                    else:
                        done += 1
                if finished:
                    started = True  # a tile came back (or had nothing to send after all): read ahead from now on
                    now = time.monotonic()
                    progress.set_progress(span.at(done / total))
                    if now - last_info >= INFO_EVERY_S or done == total:
                        rate = done / max(now - t0, 1e-9)
                        progress.info(f"Tile {done}/{total}, {rate:.2f} tiles/s, "
                                      f"ETA {fmt_eta((total - done) / rate if rate else 0)}")
                        last_info = now
                elif self.outage.since is not None and time.monotonic() - last_info >= INFO_EVERY_S:
                    progress.info(self.outage.note())
                    last_info = time.monotonic()
            if not self.stitcher.finished:
                raise FloodMapperError("Internal error: some raster rows were never written.",
                                       "Please report this with the raster size and tile size.")
            return self.sent
        finally:
            with self.lock:
                self.stop.set()
                tokens = list(self.tokens)
            for token in tokens:  # vLLM sees the hang-up and drops those requests
                token.cancel()
            for fut in pending:
                fut.cancel()
            executor.shutdown(wait=True)  # the cancelled requests end within a tick
            self.dataset.close()
