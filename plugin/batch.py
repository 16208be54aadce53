"""Batch flood mapping without QGIS: many rasters, one vLLM engine (in this process, or the plugin's local engine).

Run from the checkout root with the vLLM environment's Python (either engine, below), or with QGIS's Python (the
checkout's .venv/bin/python: the local engine only, and the one that stacks Sentinel-2 products, with GDAL's own
bindings):

    ~/.local/share/floodmapper/vllm-env/bin/python -m plugin.batch scenes/ a.tif b.tif --out maps/ \
        [--recursive] [--model DIR] [--max-num-seqs N] [--indices 0,1,2,3,4,5] \
        [--reference FILE [--reference-threshold T]] [--pre-event FILE] [--engine auto|offline|local] [--clouds] \
        [--area FILE] [--polygons [--min-area M2]] [--skip-existing]

A folder stands for the rasters in it: its *.tif, *.tiff and *.vrt files (any case, hidden files left out),
in name order, the Sentinel-2 products in it as downloaded (`*.zip`, `*.SAFE`), and Landsat scenes as downloaded
(`*.tar`); with --recursive those of its subfolders too. The batch's own outputs (`*_flood.tif` in the output
folder) are never taken as inputs, so a run can write into the folder it reads.

A Sentinel-2 product, or a set of band files (B02.tif beside B03.tif ..., Landsat's *_SR_B2.TIF ..., HLS's), is
mapped as the plugin maps it: its bands stacked, its scaling applied, and with --clouds its own cloud classification
(L2A SCL, L1C MSK_CLASSI, the QA_PIXEL, Fmask or SCL file beside band files) as the cloud mask. A set is mapped
once, however many of its files are named or found in a folder, and the files that come with it in a folder (its
quality, cloud, thermal and angle files) are not mapped on their own. A Landsat scene as USGS serves it (one
.tar of its files) stands for the band files inside it, read without unpacking. A scene downloaded twice (a
product's .zip beside its unpacked .SAFE) is mapped once, from the unpacked copy. That is the local engine's work (the
plugin's pipeline, which auto then takes); the offline engine reads one raster file with its bands in the model's
order.

With --pre-event, each raster's water is compared with the water of one image of the same place before the event
(a raster, a product or a scene, mapped on each raster's area with the same model), as the plugin's PRE_EVENT
compares it: 1 = flood water, 2 = water already there before (local engine). A series of scenes during a flood is
so compared with one baseline; the pre-event image itself is not mapped on its own.

With --area, each raster is mapped only inside the area of interest's polygons, as the plugin's MASK maps it: the
map covers the polygons' bounds on the raster's grid, with nodata outside them (local engine).

Why offline: for a folder of scenes, `vllm.LLM(...)` with TerraTorch's `terratorch_segmentation`
IOProcessor (as vLLM's upstream example "prithvi_geospatial_mae_io_processor" does) skips HTTP and the server's
start-up per run; the engine is built once and fed raster after raster. The IOProcessor sends float16 only, so
on a CPU that runs float16 slowly the batch maps through the plugin's local engine instead, started once, in
the CPU's fastest dtype (batch_engine.py says which and why; `--engine` forces either).

Each output is `<out>/<name>_flood.tif`, named after the input file, its product (the .SAFE's name) or its set of
band files (their name without the band), encoded like the QGIS path (plugin/core/classes.py): uint8
class ids 0 = not water, 1 = water, 255 = nodata wherever a used input band has no data (or a cloud, with
--clouds); same CRS, transform and size as the input (a product's: its 10 m bands'); written to a temp file and
moved into place. With `--reference` (water that is always there: a raster, water where its value is >=
`--reference-threshold`, or a polygon file) the water is split as in the plugin: 1 = flood water, 2 = permanent
water. A raster that fails is
reported and skipped; the exit code is 0 only when every raster succeeded (1 otherwise, 2 for usage or
engine errors, 130 when interrupted). `<out>/flood_maps.csv` has a row of figures for each input (batch_summary.py).

With --polygons, each map's water is also traced into `<out>/<name>_flood.geojson` (polygon_file.py): one polygon
per connected area, with its class (flood, or permanent on a map compared with a reference), its area in m² and
its pixels, in WGS 84 as GeoJSON has it, for the GIS, web maps and phone apps the maps are shared with; --min-area
leaves out areas under so many m² (specks of one or two pixels).

A map is only ever in the output folder complete, so a batch stopped midway (Ctrl+C, a crash, a power cut)
has lost the raster under way and nothing else: run the same command again with --skip-existing and the rasters
whose map is there are left out. The same maps a folder that new downloads have joined: only the new ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .batch_engine import (
    ENGINE_AUTO,
    ENGINE_LOCAL,
    ENGINE_OFFLINE,
    ENGINES,
    LocalBatch,
    choose_engine,
    has_vllm,
    local_settings,
    torch_device,
)
from .batch_inputs import (
    RASTER_SUFFIXES,
    Job,
    LeftOut,
    expand_inputs,
    load_area,
    load_reference,
    needs_stacking,
    one_scene,
    outside_area,
    plan,
    pre_event_input,
    validate,
)
from .batch_offline import build_llm, run_one, stop_llm, vllm_temporary_folder
from .batch_summary import write_summary
from .core import vllm_entry
from .core.errors import EngineError, FloodMapperError, InputError, NothingToMap
from .core.flood_extent import ExtentStats, summary
from .core.jobs import MapFloodsResult, Stats
from .core.polygon_file import PolygonsWritten, polygons_path, write_water_geojson
from .core.reference import Reference
from .core.settings import DEMO_MODEL_DIR

if __name__ in ("__main__", "__mp_main__"):  # also in vLLM's spawned engine core, which re-imports this
    vllm_entry.install()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m plugin.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+",
                   help="input rasters (GeoTIFF or anything GDAL reads), Sentinel-2 products (.zip, .SAFE) and "
                        "Landsat scenes (.tar), or folders: their " + ", ".join(f"*{s}" for s in RASTER_SUFFIXES)
                        + " files, products and scenes, in name order (a set of band files is one raster)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--recursive", action="store_true", help="with a folder, take the rasters of its subfolders too")
    p.add_argument("--model", default=os.environ.get("FLOODMAPPER_MODEL") or str(DEMO_MODEL_DIR),
                   help="TerraTorch model folder for vLLM (default: the demo model, or $FLOODMAPPER_MODEL)")
    p.add_argument("--max-num-seqs", type=int, default=8, help="tiles processed together by the engine")
    p.add_argument("--indices", default="",
                   help="0-based input band indices in the model's band order; default: the local engine chooses as "
                        "the plugin does (band names, a product's own bands, else the first six), the offline "
                        "engine takes 0,1,2,3,4,5")
    p.add_argument("--reference", default="",
                   help="water that is always there (a raster, or a polygon file such as OpenStreetMap water): "
                        "water also in it is permanent water (class 2), the rest of the water flood water (1)")
    p.add_argument("--reference-threshold", type=float, default=1.0,
                   help="a raster reference is water where its value is >= this (1 for a 0/1 mask, 50 for the JRC "
                        "Global Surface Water occurrence in percent)")
    p.add_argument("--pre-event", default="",
                   help="an image of the same place before the event (a raster, a Sentinel-2 product or a Landsat "
                        "scene), mapped on each raster's area with the same model, as the plugin's PRE_EVENT: water "
                        "already there before is permanent water (class 2), the rest flood water (1) (local engine)")
    p.add_argument("--engine", choices=ENGINES, default=ENGINE_AUTO,
                   help="offline: vLLM in this process with TerraTorch's IOProcessor (float16 only); local: the "
                        "plugin's local engine, a vLLM server on 127.0.0.1 started once for the batch, tensor "
                        "transport in this computer's fastest dtype; auto (default): offline where float16 runs "
                        "fast (a GPU, a CPU with AVX512-FP16 or AMX-FP16 and no faster dtype), else local")
    p.add_argument("--area", default="",
                   help="map only inside these polygons, the area of interest (a GeoPackage, shapefile or GeoJSON; "
                        "FILE|layername=NAME picks a layer), as the plugin's MASK does: the pixels outside are nodata "
                        "and the tiles outside are never sent (local engine)")
    p.add_argument("--clouds", action="store_true",
                   help="mask the clouds of each Sentinel-2 product with its own classification (L2A SCL, L1C "
                        "MSK_CLASSI), and of each set of band files with the cloud file beside it (Landsat "
                        "QA_PIXEL, HLS Fmask, SCL), as the plugin's CLOUD_MASK does (local engine)")
    p.add_argument("--polygons", action="store_true",
                   help="also trace each map's water into <name>_flood.geojson beside it: a polygon per connected "
                        "area with its class, area_m2 and pixels, in WGS 84 (a map already there without its "
                        "polygons gets them too)")
    p.add_argument("--min-area", type=float, default=0.0, metavar="M2",
                   help="with --polygons, leave out water areas smaller than this many m² (default 0: keep all)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave out the inputs whose map is already in the output folder, from an earlier run (a "
                        "map is moved there only when complete): run a stopped batch again with it to map the "
                        "rest, or a folder new downloads have joined to map only those")
    args = p.parse_args(argv)
    args.indices = _indices(p, args.indices)
    args.area_polygons = None  # --area's polygons, read by main() before any engine starts
    args.pre_event_path = ""  # --pre-event as an input (a .tar's band file, a folder's one scene), found by main()
    if args.max_num_seqs < 1:
        p.error("--max-num-seqs must be >= 1")
    if not args.min_area >= 0:
        p.error("--min-area must be >= 0 (m²)")
    if args.min_area and not args.polygons:
        p.error("--min-area applies to the water polygons: add --polygons")
    return args


def _indices(p: argparse.ArgumentParser, text: str) -> Optional[list[int]]:
    """--indices as 0-based band indices; None (each engine's own choice) when it is not given."""
    if not text.strip():
        return None
    try:
        indices = [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        p.error(f"--indices must be comma-separated integers, got {text!r}")
    if not indices or min(indices) < 0:
        p.error("--indices needs at least one band index, all >= 0")
    return indices


class _Console:
    """Progress printed under the raster's line: warnings always, the pipeline's steps with `steps` (the local
    engine's start, tiles and ETA: a raster can take minutes on a CPU)."""

    def __init__(self, steps: bool = False) -> None:
        self.steps = steps

    def set_progress(self, percent: float) -> None:
        pass

    def info(self, message: str) -> None:
        if self.steps:
            print(f"  {message}", flush=True)

    def warning(self, message: str) -> None:
        print(f"  warning: {message}", flush=True)

    def is_canceled(self) -> bool:
        return False


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the output folder {out_dir}: {exc.strerror}", file=sys.stderr)
        return 2
    if not Path(args.model, "config.json").is_file():
        print(f"error: no model at {args.model} (config.json missing). Pass --model DIR or set FLOODMAPPER_MODEL.",
              file=sys.stderr)
        return 2
    left_out = LeftOut()
    try:
        inputs = expand_inputs(args.inputs, out_dir, args.recursive, left_out)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.pre_event:
        try:
            args.pre_event_path = pre_event_input(args.pre_event, out_dir, args.indices)
        except FloodMapperError as exc:
            print(f"error: --pre-event: {exc}", file=sys.stderr)
            return 2
        left_out.pre_event = [i for i in inputs if one_scene(i, args.pre_event_path)]
        inputs = [i for i in inputs if i not in left_out.pre_event]
        if not inputs:
            print(f"error: the only input is the pre-event image {args.pre_event}; give the rasters of the event "
                  "too.", file=sys.stderr)
            return 2
    for line in left_out.lines():
        print(line, flush=True)
    try:
        refs = load_reference(args.reference, args.reference_threshold)
    except FloodMapperError as exc:
        print(f"error: --reference: {exc}", file=sys.stderr)
        return 2
    try:
        args.area_polygons = load_area(args.area)
    except FloodMapperError as exc:
        print(f"error: --area: {exc}", file=sys.stderr)
        return 2
    jobs = plan(inputs, out_dir)
    total = len(jobs)
    t_start = time.monotonic()
    for job in jobs:
        job.skipped = args.skip_existing and os.path.isfile(job.output_path)
        if job.skipped:
            continue
        try:
            validate(job, args.indices)
            job.outside = outside_area(job.input_path, args.area_polygons)
        except FloodMapperError as exc:
            job.error = str(exc)
    if jobs and all(job.outside for job in jobs):
        print(f"error: --area: the area of interest {args.area} overlaps none of the {total} raster(s), so there is "
              "nothing to map. Check that it is the area of these rasters, and that its CRS is set right.",
              file=sys.stderr)
        return 2

    def report(i: int, job: Job) -> None:
        """A raster's line, once it has ended (and its water polygons, with --polygons, are traced)."""
        if args.polygons:
            trace_polygons(job, args.min_area)
        name = job.name
        traced = f"; {polygons_text(job.polygons, args.min_area)}" if job.polygons else ""
        if job.skipped:
            print(f"[{i}/{total}] skipped {name}: its map {job.output_path} is already there{traced}"
                  + (f"; {job.error}" if job.error else ""), flush=True)
        elif job.outside:
            print(f"[{i}/{total}] skipped {name}: the area of interest (--area) does not overlap it", flush=True)
        elif job.error:
            print(f"[{i}/{total}] FAILED {name}: {job.error}", flush=True)
        else:
            assert job.stats is not None
            print(f"[{i}/{total}] ok {name} -> {job.output_path}: {figures(job.stats)}{traced} "
                  f"({job.seconds:.1f} s)", flush=True)

    try:
        code = _map_all(jobs, args, refs, out_dir, report)
    except KeyboardInterrupt:
        mapped = sum(1 for j in jobs if j.stats is not None)
        left = sum(1 for j in jobs if j.stats is None and j.to_map)
        print(f"\nInterrupted: {mapped} raster(s) mapped before it, {left} not (the one under way left no map "
              "behind). Run the same command with --skip-existing to map only those.", file=sys.stderr, flush=True)
        _summarise(jobs, out_dir)
        return 130
    _summarise(jobs, out_dir)
    if code is not None:
        return code
    failed = sum(1 for j in jobs if j.error)
    skipped = sum(1 for j in jobs if j.skipped and not j.error)  # a map already there whose polygons failed: failed
    outside = sum(1 for j in jobs if j.outside)
    print(f"Done: {total - failed - skipped - outside} of {total} raster(s) mapped, "
          + (f"{skipped} already there, " if skipped else "")
          + (f"{outside} outside the area, " if outside else "")
          + f"{failed} failed, in {time.monotonic() - t_start:.1f} s", flush=True)
    return 0 if failed == 0 else 1


def _summarise(jobs: list[Job], out_dir: Path) -> None:
    """The table of figures written, and where it is said; a table that cannot be written is only a warning."""
    try:
        print(f"Figures of each raster: {write_summary(jobs, out_dir)}", flush=True)
    except (FloodMapperError, OSError) as exc:
        print(f"warning: the table of figures could not be written in {out_dir}: {exc}", file=sys.stderr, flush=True)


def _map_all(jobs: list[Job], args: argparse.Namespace, refs: list[Reference], out_dir: Path,
             report) -> Optional[int]:
    """The rasters left to map on the engine chosen for them (none started when none is left), each reported as
    it ends; 2 when the engine cannot run, else None."""
    code = None
    if any(j.to_map for j in jobs):
        try:
            in_process = has_vllm()
            settings = local_settings(args.model, args.max_num_seqs, in_process=in_process)
            device = torch_device() if in_process and args.engine != ENGINE_OFFLINE else "cpu"
            choice = choose_engine(args.engine, settings, device, in_process, _pipeline_for(jobs, args))
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"Engine: {choice.reason}", flush=True)
        needs = _pipeline_options(args)
        if needs and choice.engine != ENGINE_LOCAL:
            print(f"error: {' and '.join(f'{name} {does}' for name, does in needs)} in the plugin's pipeline, "
                  "which the offline engine does not run; add --engine local.", file=sys.stderr)
            return 2
        if choice.engine == ENGINE_LOCAL:
            code = map_on_local_engine(LocalBatch(settings), jobs, args, report)
        else:
            code = map_offline(jobs, args, refs, out_dir, report)
    else:
        for i, job in enumerate(jobs, 1):
            report(i, job)
    return code


def _pipeline_options(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The options given that the plugin's pipeline does and the offline engine cannot, and what each does."""
    return [(name, does) for name, does, given in (("--clouds", "masks clouds", args.clouds),
                                                   ("--area", "masks the area of interest", args.area),
                                                   ("--pre-event", "maps the pre-event image", args.pre_event))
            if given]


def _pipeline_for(jobs: list[Job], args: argparse.Namespace) -> str:
    """Why the batch needs the plugin's pipeline (to stack inputs, to mask clouds or the area, to map the
    pre-event image), or ""."""
    needs = _pipeline_options(args)
    if needs:
        return " and ".join(name for name, _ in needs)
    stacked = sum(1 for j in jobs if j.to_map and needs_stacking(j.input_path))
    return f"{stacked} input(s) to stack (Sentinel-2 products, band files)" if stacked else ""


def figures(stats: Stats | ExtentStats | MapFloodsResult) -> str:
    """A mapped raster's water (and the clouds left out), and its flood and permanent water when it was compared
    with a reference."""
    line = f"water {stats.water_fraction:.1%} of {stats.valid_pixels} valid pixels"
    if isinstance(stats, MapFloodsResult) and stats.cloud_pixels:
        line += f" ({stats.cloud_pixels} cloud pixels left out, {stats.cloud_fraction:.1%} of those with data)"
    if isinstance(stats, ExtentStats):
        return f"{line}; {summary(stats)}"
    if isinstance(stats, MapFloodsResult) and stats.reference:
        return (f"{line}; flood water {stats.flood_pixels:,} px, permanent water {stats.permanent_water_pixels:,} px "
                f"(reference: {stats.reference})")
    return line


def trace_polygons(job: Job, min_area: float) -> None:
    """The water polygons of a map made now, or of a map already there (--skip-existing) that has none yet; a
    failure is the raster's error (its map stays)."""
    target = polygons_path(job.output_path)
    made_now = job.stats is not None and not job.error
    lacking = job.skipped and not os.path.isfile(target)
    if not (made_now or lacking):
        return
    try:
        job.polygons = write_water_geojson(job.output_path, target, min_area)
    except FloodMapperError as exc:
        job.error = f"its map {job.output_path} is written, but not its water polygons: {exc}"


def polygons_text(written: PolygonsWritten, min_area: float) -> str:
    areas = ", ".join(f"{name} {m2 / 1e6:.4f} km²" for name, m2 in written.m2.items() if m2)
    return (f"{written.kept} water polygon(s)" + (f" ({areas})" if areas else "") + f" -> {written.path}"
            + (f", {written.dropped} under {min_area:g} m² left out" if written.dropped else ""))


def map_each(jobs: list[Job], report, map_one, fatal: tuple[type[Exception], ...] = ()) -> Optional[int]:
    """`map_one(job)` for every raster not failed yet, each reported as it ends. A raster that fails is reported
    and the batch goes on; a `fatal` error (an engine that cannot run: every later raster would wait for it in
    vain) ends the batch with 2."""
    for i, job in enumerate(jobs, 1):
        if job.to_map:
            t0 = time.monotonic()
            try:
                job.stats = map_one(job)
            except NothingToMap:  # a product's or band files' stack that the area (--area) misses
                job.outside = True
            except fatal as exc:
                job.error = str(exc)
                report(i, job)
                left = sum(1 for j in jobs[i:] if not j.error)
                print(f"error: the engine cannot run, so the batch stops ({left} raster(s) not mapped): {exc}",
                      file=sys.stderr)
                return 2
            except FloodMapperError as exc:
                job.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - one bad raster must not stop the batch
                job.error = f"{type(exc).__name__}: {exc}"
            job.seconds = time.monotonic() - t0
        report(i, job)
    return None


def map_offline(jobs: list[Job], args: argparse.Namespace, refs: list[Reference], out_dir: Path,
                report) -> Optional[int]:
    """Every raster through vLLM in this process; 2 if the engine cannot start, else None."""
    work_dir = tempfile.mkdtemp(prefix=".floodmapper-batch-", dir=str(out_dir))
    try:
        with vllm_temporary_folder():
            print(f"Loading the model {args.model} into vLLM (this takes a minute on a CPU)…", flush=True)
            t0 = time.monotonic()
            try:
                llm = build_llm(args.model, args.max_num_seqs, work_dir)
            except Exception as exc:  # noqa: BLE001 - vLLM raises many types; report and stop
                print(f"error: the vLLM engine could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 2
            print(f"Engine ready in {time.monotonic() - t0:.1f} s", flush=True)
            try:
                return map_each(jobs, report, lambda job: run_one(llm, job, args.indices, work_dir, refs, _Console(),
                                                                   args.model))
            finally:
                problem = stop_llm(llm)
                if problem:
                    print(f"warning: stopping the vLLM engine failed: {problem}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def map_on_local_engine(engine: LocalBatch, jobs: list[Job], args: argparse.Namespace, report) -> Optional[int]:
    """Every raster through the plugin's pipeline on one local engine (its start, tiles and ETA printed), which
    stops at the end; 2 if the engine cannot run, else None."""
    console = _Console(steps=True)
    try:
        return map_each(jobs, report, lambda job: engine.map(job.input_path, job.output_path, args, console),
                        fatal=(EngineError,))
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
