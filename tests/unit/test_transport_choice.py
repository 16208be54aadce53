"""How a job's transport is chosen, and how the local engine runs for it: the CPU's fast dtypes, the engine's
dtype and IOProcessor, image-to-image only in float16 and below the size limit."""

from __future__ import annotations

import pytest
from affine import Affine

from plugin.core.cpu import fastest_dtype, usable_flags
from plugin.core.errors import EngineError
from plugin.core.raster import RasterInfo
from plugin.core.settings import Settings
from plugin.core.transport_choice import plan_local_engine

RASTER = RasterInfo("scene.tif", 300, 250, 6, ("uint16",) * 6, None, Affine.identity(), (None,) * 6, (None,) * 6,
                    False, True)  # 0.075 MP

AVX2 = frozenset({"fma", "avx", "f16c", "avx2"})
SAPPHIRE_RAPIDS = AVX2 | {"avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize("flags, environ, expected", [
    (AVX2, {}, "float32"),
    (SAPPHIRE_RAPIDS, {}, "float16"),  # its bfloat16 runs on AMX, which changes the water masks
    (SAPPHIRE_RAPIDS - {"avx512_fp16"}, {}, "float32"),
    (AVX2 | {"avx512f", "avx512_bf16"}, {}, "bfloat16"),  # AVX512-BF16 without AMX (AMD Zen 4): masks kept
    (AVX2 | {"avx512f", "avx512_fp16"}, {}, "float16"),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32"),  # oneDNN held to AVX2: its fast kernels are off
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_FP16"}, "bfloat16"),  # held below AMX: bfloat16 is safe
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "bfloat16"),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "float32"),
    (frozenset(), {}, "float32"),  # flags unknown: the safe choice
])
def test_the_cpu_dtype_follows_the_instruction_set(flags, environ, expected):
    choice = fastest_dtype(flags, environ)
    assert choice.dtype == expected and choice.reason


def test_bfloat16_is_not_chosen_for_a_model_whose_masks_it_changes():
    assert fastest_dtype(AVX2 | {"avx512f", "avx512_bf16", "avx512_fp16"}, {}, bfloat16_ok=False).dtype == "float16"


def test_bfloat16_on_amx_is_left_out_and_the_reason_says_how_to_have_it_without_amx():
    choice = fastest_dtype(SAPPHIRE_RAPIDS, {})
    assert choice.dtype == "float16"
    assert "not bfloat16, which runs on this CPU's amx_bf16" in choice.reason
    assert "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in choice.reason
    plain = fastest_dtype(SAPPHIRE_RAPIDS - {"avx512_fp16"}, {})
    assert plain.dtype == "float32" and "amx_bf16" in plain.reason


@pytest.mark.parametrize("dtype, transport, too_large, device, expected", [
    ("auto", "auto", False, "gpu", ("float16", True)),
    ("auto", "auto", True, "gpu", ("float16", False)),  # too large for one image request: tiles
    ("auto", "tensor", False, "gpu", ("float16", False)),
    ("float32", "auto", False, "gpu", ("float32", False)),  # only the tensor transport sends float32
    ("auto", "image", False, "gpu", ("float16", True)),
    ("bfloat16", "tensor", False, "cpu", ("bfloat16", False)),
])
def test_the_local_engine_plan(dtype, transport, too_large, device, expected):
    plan = plan_local_engine(Settings(dtype=dtype), transport, RASTER, 0.05 if too_large else 25.0, device)
    assert (plan.dtype, plan.io_processor) == expected and plan.reason


def test_the_local_engine_on_a_plain_cpu_goes_tensor_in_float32(monkeypatch):
    from plugin.core import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda *a: AVX2)
    plan = plan_local_engine(Settings(dtype="auto"), "auto", RASTER, 25.0, "cpu")
    assert (plan.dtype, plan.io_processor) == ("float32", False)
    assert "float16 and bfloat16 run one to two orders of magnitude slower" in plan.reason
    with pytest.raises(EngineError, match="needs the engine in float16"):
        plan_local_engine(Settings(dtype="float32"), "image", RASTER, 25.0, "cpu")
    with pytest.raises(EngineError, match="not a dtype"):
        plan_local_engine(Settings(dtype="float64"), "tensor", RASTER, 25.0, "cpu")


def test_a_cpu_held_to_avx2_has_no_avx512_flags():
    assert usable_flags(SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "avx2"}) == AVX2
    assert usable_flags(SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "ALL"}) == SAPPHIRE_RAPIDS
