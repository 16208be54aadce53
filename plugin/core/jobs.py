"""The values a job passes along: the request, the work each transport is given, and what comes back.

    algorithm parameters -> MapFloodsRequest -> pipeline -> ImageJob | TensorJob -> transport
                                                   <- Stats / TensorRunStats <- transport
    MapFloodsResult -> algorithm outputs and post-processor

They live here, apart from the pipeline and the transports, so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .errors import InputError
from .layer_nodata import NodataRange
from .settings import DEFAULT_IMAGE_MAX_MEGAPIXELS, DEFAULT_RETRY_WAIT

if TYPE_CHECKING:
    from .area_of_interest import Area
    from .image_source import ServerReach
    from .model_spec import ModelSpec
    from .raster import RasterInfo
    from .reference import PolygonReference

TRANSPORT_AUTO = "auto"
TRANSPORT_IMAGE = "image"
TRANSPORT_TENSOR = "tensor"
TRANSPORTS = (TRANSPORT_AUTO, TRANSPORT_IMAGE, TRANSPORT_TENSOR)

DEFAULT_OVERLAP = 0.125  # 1/8 of the tile: enough context at tile edges, 1.3x the tiles of no overlap
# Tiles in flight at once. Measured (benchmarks/bench_tensor_real.py, demo model, fp16, 2 CPU cores,
# 16 tiles of 256²): 1.11-1.40 tiles/s at 1 and 2, 1.29-1.61 at 4, 1.58 at 8: vLLM batches what is in
# flight (max-num-seqs 8), and the next tiles are read and encoded meanwhile. 4 gets most of that gain
# while keeping a shared server's queue short; against a fast peer the client's own work is the limit.
# The local engine serves one job: it gets its max-num-seqs in flight instead (backends.LocalBackend).
DEFAULT_CONCURRENCY = 4


@dataclass
class MapFloodsRequest:
    input_path: str  # a GDAL-readable source: local file, http(s) URL or /vsicurl/ URL
    output_path: str  # GeoTIFF to write (atomically; never the input)
    server_url: str  # the server to talk to (for the local engine: filled in when it has started)
    server_can_read_local_files: bool = False  # a loopback server
    model: str = ""  # served model name; "" = the only one /v1/models lists
    transport: str = TRANSPORT_AUTO
    bands: Optional[list[int]] = None  # 1-based input band numbers in the model's order; None = automatic
    path_map_local: str = ""  # local prefix ...
    path_map_server: str = ""  # ... seen by the server as this prefix
    image_max_megapixels: float = DEFAULT_IMAGE_MAX_MEGAPIXELS  # larger rasters go to the tensor transport
    # tensor transport
    model_spec_source: str = ""  # config.json path/URL/preset; "" = ask the server side/preset
    overlap: Optional[float] = None  # fraction of the tile; None = default
    concurrency: Optional[int] = None
    scale: Optional[float] = None  # reflectance = value * scale + offset; None = auto-detect
    offset: Optional[float] = None
    probability_path: str = ""  # optional water-probability GeoTIFF
    # the server's --dtype: "auto" = what `vllm serve --dtype auto` runs for the model's config.json (or preset)
    server_dtype: str = "auto"
    server_dtype_reason: str = ""  # why that dtype, for the log (e.g. the local engine's choice)
    retry_wait: float = DEFAULT_RETRY_WAIT  # seconds a job waits for a server that went away (0: fail at once)
    # the area mapped (area_of_interest.py); the rest of the raster is neither sent nor mapped
    extent: Optional[tuple[float, float, float, float]] = None  # (xmin, ymin, xmax, ymax); None = all
    extent_crs: str = ""  # the extent's CRS (EPSG:n or WKT); "" = the raster's
    mask_polygons: Optional[list[dict]] = None  # GeoJSON-like (multi)polygons; None = no mask ([]: an error)
    mask_crs: str = ""  # the polygons' CRS; "" = the raster's
    cloud_mask_path: str = ""  # a raster whose cloud_values are cloud (e.g. Sentinel-2 L2A SCL); "" = none
    cloud_values: Optional[tuple[float, ...]] = None  # None = 3, 8, 9, 10 (SCL cloud shadow, clouds, cirrus)
    cloud_bits: tuple[int, ...] = ()  # instead of the values: cloud where any of these bits is set (QA bands)
    # values the QGIS layer adds to the raster's nodata (Layer Properties ▸ Transparency; layer_nodata.py)
    layer_nodata: tuple[NodataRange, ...] = ()
    # flood extent (flood_job.py): water compared with reference water, united from any of these
    pre_event_path: str = ""  # the same place before the event: mapped like input_path, its water is reference
    pre_event_layer_nodata: tuple[NodataRange, ...] = ()  # its QGIS layer's additional no data values
    pre_event_cloud_mask_path: str = ""  # its cloud raster, read with cloud_values; "" = none
    reference_path: str = ""  # water that is always there: a raster (water >= reference_threshold) or polygons
    reference_threshold: float = 1.0
    reference_polygons: Optional[PolygonReference] = None  # such polygons already read (from a QGIS layer)
    source: str = ""  # what input_path was made from (a product, band files), named in the map; "" = input_path

    def wants_flood_extent(self) -> bool:
        """Whether any reference water was given (else the map stays water / not water)."""
        return bool(self.pre_event_path or self.reference_path or self.reference_polygons is not None)

    def transport_asked(self) -> str:
        transport = (self.transport or TRANSPORT_AUTO).lower()
        if transport not in TRANSPORTS:
            raise InputError(f"Unknown transport '{self.transport}'.", "Use auto, image or tensor.")
        return transport

    def dtype_asked(self) -> str:
        """SERVER_DTYPE normalised ("auto", float16, float32 or bfloat16); InputError for anything else."""
        dtype = (self.server_dtype or "auto").strip().lower()
        if dtype == "auto":
            return dtype
        from .errors import ModelSpecError
        from .model_spec import normalise_dtype

        try:
            return normalise_dtype(dtype, "SERVER_DTYPE")
        except ModelSpecError:
            raise InputError(f"SERVER_DTYPE '{self.server_dtype}' is not a dtype.",
                             "Use auto, float16, float32 or bfloat16: the server's --dtype.") from None

    def tensor_options(self) -> tuple[float, int]:
        """(overlap fraction, requests in flight), defaults filled in; InputError for values out of range."""
        overlap = DEFAULT_OVERLAP if self.overlap is None else float(self.overlap)
        if not 0 <= overlap < 0.5:
            raise InputError(f"overlap={overlap} is not a fraction of the tile in [0, 0.5).",
                             "Use e.g. 0.125 (1/8 of the tile) or 0 for no overlap.")
        concurrency = DEFAULT_CONCURRENCY if self.concurrency is None else int(self.concurrency)
        if concurrency < 1:
            raise InputError(f"concurrency={concurrency}; it must be at least 1.", "Use 1 or more.")
        return overlap, concurrency


@dataclass(frozen=True)
class Stats:
    water_pixels: int
    valid_pixels: int
    water_fraction: float
    water_area_km2: float  # NaN when the raster has no CRS (the area of a pixel is unknown)


@dataclass(frozen=True)
class ServerFacts:
    """What the server is, asked once per job."""

    model: str  # the served name to put in requests
    version: str  # vLLM's version ("" when it does not say)
    kind: str  # "image" (runs the IOProcessor plugin) or "tensor"


@dataclass(frozen=True)
class ImageJob:
    """Image-to-image: the server reads the raster at `data` (a path it sees, or a URL)."""

    input: RasterInfo
    bands: list[int]  # 0-based, in the model's order
    model: str
    version: str
    data: str
    data_format: str  # "path" | "url"
    output_path: str
    retry_wait: float = 0.0  # seconds to wait for a server that went away before the request is sent again
    area: Optional[Area] = None  # the part mapped; None = the whole raster
    # set when the server cannot read the input as it is (a window of it, a VRT): the transport writes the
    # area's bands to a temporary GeoTIFF this server reads, and sends that instead of `data`
    copy_for: Optional[ServerReach] = None
    # the user's reflectance scaling (SCALE, OFFSET; None = none given): the IOProcessor only divides by 10000,
    # so a scaling given makes the server get a copy holding the scaled values
    scale: Optional[float] = None
    offset: Optional[float] = None
    tags: dict[str, str] = field(default_factory=dict)  # the map's provenance metadata (provenance.py)


@dataclass(frozen=True)
class TensorJob:
    """Tensor-to-tensor: the plugin reads, normalises and tiles the raster and sends each tile."""

    input: RasterInfo
    bands: list[int]  # 0-based, in the model's order
    spec: ModelSpec  # in the server's dtype
    model: str
    version: str
    output_path: str
    probability_path: str = ""
    overlap: float = DEFAULT_OVERLAP
    concurrency: int = DEFAULT_CONCURRENCY
    scale: Optional[float] = None  # None: detected
    offset: Optional[float] = None
    location_mode: str = "tile"  # "raster": the raster's centre for every tile, as the IOProcessor does
    retry_wait: float = 0.0  # seconds to wait for a server that went away before a tile is sent again
    area: Optional[Area] = None  # the part mapped; None = the whole raster
    tags: dict[str, str] = field(default_factory=dict)  # the maps' provenance metadata (provenance.py)
    # what `input` was made from (a product, band files: `input` is then a temporary stack), "" = `input` itself;
    # a run that stopped is known again by it (tensor/checkpoint.py)
    source: str = ""


@dataclass
class TensorRunStats:
    """What the tensor transport produced (Stats' figures) and how it was done."""

    stats: Stats
    output_path: str
    total_pixels: int
    tiles: int
    requests: int
    seconds: float
    encoding: str
    answer: str
    tile_size: int
    overlap: int
    concurrency: int
    scale: float
    offset: float
    probability_path: str = ""

    @property
    def water_pixels(self) -> int:
        return self.stats.water_pixels

    @property
    def valid_pixels(self) -> int:
        return self.stats.valid_pixels

    @property
    def water_fraction(self) -> float:
        return self.stats.water_fraction

    @property
    def water_area_km2(self) -> float:
        return self.stats.water_area_km2


@dataclass
class MapFloodsResult:
    output_path: str
    water_pixels: int
    valid_pixels: int
    water_fraction: float
    water_area_km2: float
    transport: str
    model: str
    server_version: str = ""
    probability_path: str = ""
    warnings: list[str] = field(default_factory=list)
    cloud_pixels: int = 0  # pixels of the area with data that the cloud mask left out
    cloud_fraction: float = 0.0  # their share of the area's pixels with data
    # flood extent: without a reference, all water is flood water and no pixel has a reference
    reference: str = ""  # what the water was compared with ("" = nothing)
    flood_pixels: Optional[int] = None
    flood_area_km2: Optional[float] = None
    permanent_water_pixels: int = 0
    permanent_water_area_km2: float = 0.0
    no_reference_pixels: Optional[int] = None

    def __post_init__(self) -> None:
        if self.flood_pixels is None:
            self.flood_pixels = self.water_pixels
        if self.flood_area_km2 is None:
            self.flood_area_km2 = self.water_area_km2
        if self.no_reference_pixels is None:
            self.no_reference_pixels = self.valid_pixels
