"""Which transport a job takes, and so how the local engine runs: the one place that decides it.

One server, one transport: a server started with the TerraTorch IOProcessor plugin does image-to-image only,
one without it tensor-to-tensor only. Image-to-image needs the server to reach the raster (image_source.py),
a raster below the size one request may carry, and a server in float16 (the IOProcessor sends nothing else).
The local engine is started to suit the job: the IOProcessor and float16 where that is fast, else the tensor
transport in the fastest dtype of this computer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .cpu import DtypeChoice, fastest_dtype
from .errors import EngineError, InputError, ModelSpecError, TransportUnsupported
from .image_source import ServerReach, check_reach
from .jobs import TRANSPORT_IMAGE, TRANSPORT_TENSOR, MapFloodsRequest
from .model_spec import normalise_dtype
from .raster import RasterInfo
from .settings import Settings

FLOAT16_NAMES = ("auto", "float16", "half", "fp16")
IMAGE_DTYPE_REASON = "the TerraTorch IOProcessor (image-to-image) sends float16 tiles"


def image_too_large(info: RasterInfo, max_megapixels: float) -> bool:
    """True when the raster is above the image-to-image limit (<= 0: no limit)."""
    return max_megapixels > 0 and info.width * info.height > max_megapixels * 1e6


def check_forced_image(request: MapFloodsRequest, info: RasterInfo, reach: ServerReach, copy_why: str = "") -> None:
    """A forced image transport the server could not take fails here, before any request.

    `info` is the raster as mapped (an area's size); `copy_why` says why the server would get a copy of it.
    """
    check_reach(info, reach, copy_why)  # a layer (or a copy) the server cannot reach
    if image_too_large(info, request.image_max_megapixels):
        raise InputError(
            f"The raster is {info.size_text}, larger than image-to-image takes ({request.image_max_megapixels:g} "
            "MP): it would go to the server as one request, read into its memory whole, with no progress "
            "and no way to resume.",
            "Use the tensor transport (TRANSPORT=tensor or auto, with a server started without "
            "'--io-processor-plugin'; the local engine switches by itself), clip the raster to the area of "
            "interest, or raise the image-mode limit in the Flood Mapper options.",
        )
    check_image_dtype(request.server_dtype)


def check_image_dtype(server_dtype: str) -> None:
    """The IOProcessor sends float16 tiles: to a server that runs another dtype they stop its engine."""
    if (server_dtype or "auto").strip().lower() not in FLOAT16_NAMES:
        raise TransportUnsupported(
            f"The server runs {server_dtype} (SERVER_DTYPE), and image-to-image sends float16 tiles (the "
            "TerraTorch IOProcessor casts every tile to float16): the first tile would stop the server's engine.",
            "Use a server started with --dtype float16 for image-to-image, or the tensor transport (a server "
            "without '--io-processor-plugin'), or set SERVER_DTYPE to what the server really runs.",
        )


def choose_transport(asked: str, kind: str, info: RasterInfo, request: MapFloodsRequest,
                     reach: ServerReach, copy_why: str = "") -> str:
    """The transport for this server (`kind`: "image" or "tensor") and raster (as mapped: an area's size); a
    forced one must agree. `copy_why`: why image-to-image would send the server a copy of the input."""
    if asked == TRANSPORT_IMAGE:
        if kind != "image":
            raise TransportUnsupported(
                f"The server at {reach.server_url} was started without the TerraTorch IOProcessor plugin, "
                "so it cannot do image-to-image.",
                "Choose the tensor transport (or auto), or start the server with "
                "'--io-processor-plugin terratorch_segmentation'.",
            )
        return TRANSPORT_IMAGE  # everything else was checked before any request (check_forced_image)
    if asked == TRANSPORT_TENSOR:
        if kind == "image":
            raise TransportUnsupported(
                f"The server at {reach.server_url} runs the TerraTorch IOProcessor plugin, so it cannot "
                "answer tensor-to-tensor requests.",
                "Choose the image transport (or auto), or start a server without '--io-processor-plugin' "
                "for the tensor transport.",
            )
        return TRANSPORT_TENSOR
    if kind != "image":
        return TRANSPORT_TENSOR
    if image_too_large(info, request.image_max_megapixels):
        raise TransportUnsupported(
            f"The raster is {info.size_text}, larger than image-to-image takes "
            f"({request.image_max_megapixels:g} MP), and the server at {reach.server_url} runs the "
            "TerraTorch IOProcessor plugin, so it cannot take tiles (tensor transport) either.",
            "Use a vLLM server started without '--io-processor-plugin' (the tensor transport tiles any "
            "size, with progress and cancel), clip the raster to the area of interest, or raise the "
            "image-mode limit in the Flood Mapper options.",
        )
    try:
        check_reach(info, reach, copy_why)
    except TransportUnsupported as exc:
        raise TransportUnsupported(
            exc.message + " The server runs the IOProcessor plugin, so the tensor transport cannot be "
            "used with it either.",
            "Set a path mapping, put the raster at an http(s) URL the server can reach, or use a server "
            "started without '--io-processor-plugin' (tensor transport).",
        ) from None
    check_image_dtype(request.server_dtype)
    return TRANSPORT_IMAGE


# ------------------------------------------------------------------------------------------- local engine
@dataclass(frozen=True)
class EnginePlan:
    """How the local engine runs for one job: its --dtype, and whether it loads the IOProcessor plugin."""

    dtype: str
    io_processor: bool
    reason: str


def engine_dtype(settings: Settings, device: str) -> DtypeChoice:
    """The dtype the engine runs in when nothing forces float16: the setting, or the fastest for the device."""
    requested = (settings.dtype or "auto").strip().lower()
    if requested != "auto":
        try:
            return DtypeChoice(normalise_dtype(requested), "the engine's dtype setting")
        except ModelSpecError as exc:
            raise EngineError(f"The engine's dtype setting '{settings.dtype}' is not a dtype.",
                              "Choose auto, float16, float32 or bfloat16 in the Flood Mapper options.") from exc
    if device == "gpu":
        return DtypeChoice("float16", "float16 is what GPUs run fastest")
    return fastest_dtype()


def plan_local_engine(settings: Settings, asked: str, info: Optional[RasterInfo], max_megapixels: float,
                      device: str) -> EnginePlan:
    """The engine's dtype and transport for a job: image-to-image only in float16 (the IOProcessor sends
    nothing else), so a CPU that runs float16 slowly gets the tensor transport in its fastest dtype."""
    if asked == TRANSPORT_IMAGE:
        if (settings.dtype or "auto").lower() not in FLOAT16_NAMES:
            raise EngineError(
                f"Image-to-image needs the engine in float16 ({IMAGE_DTYPE_REASON}), and its dtype is set to "
                f"{settings.dtype}.",
                "Use the tensor transport (or auto), or set the engine's dtype to auto or float16 in the "
                "Flood Mapper options.")
        return EnginePlan("float16", True, IMAGE_DTYPE_REASON)
    choice = engine_dtype(settings, device)
    if asked == TRANSPORT_TENSOR:
        return EnginePlan(choice.dtype, False, f"tensor transport as asked; {choice.dtype}: {choice.reason}")
    if choice.dtype != "float16":
        return EnginePlan(choice.dtype, False, f"{choice.dtype} ({choice.reason}), which only the tensor "
                          "transport can send (the IOProcessor sends float16)")
    if info is not None and image_too_large(info, max_megapixels):
        return EnginePlan("float16", False, f"float16; the raster is {info.size_text}, above the "
                          f"image-to-image limit of {max_megapixels:g} MP, so it goes in tiles (tensor transport)")
    return EnginePlan("float16", True, f"float16 ({choice.reason}), image-to-image")
