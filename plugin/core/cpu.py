"""The CPU the local engine runs on: which dtype it runs a model fastest in, and which cores vLLM may use.

Why the dtype matters so much: PyTorch on a CPU has fast float16 kernels only where the CPU has AVX512-FP16
or AMX-FP16, and fast bfloat16 only with AVX512-BF16 or AMX-BF16. Elsewhere (most workstations and laptops:
AVX2) float16 falls back to generic code that is one to two orders of magnitude slower than float32
(benchmarks/README.md has the figures). The flags come from /proc/cpuinfo; `ONEDNN_MAX_CPU_ISA`, which
holds oneDNN (and so PyTorch's fast kernels) to a lower instruction set, is honoured the same way.

Fast is not enough: a dtype must also give the water float32 gives. On a CPU with AMX-BF16 (Intel Xeon since
Sapphire Rapids), oneDNN runs bfloat16 on AMX, and there a Prithvi ViT + UperNet water model (the demo model)
agreed with its float32 water mask on only 75 % of the pixels: most of the water was lost. The same model in
bfloat16 with oneDNN held below AMX (AVX512-BF16 alone) agreed on 99.98 %, and in float16 on 99.999 %, both as
fast as float32 there. So bfloat16 is chosen only where it does not run on AMX.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

# oneDNN's ISA names, lowest first, and the CPU flags each one makes available on top of the previous one
_ISA_LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("SSE41", frozenset()),
    ("AVX", frozenset()),
    ("AVX2", frozenset()),
    ("AVX2_VNNI", frozenset()),
    ("AVX2_VNNI_2", frozenset()),
    ("AVX512_CORE", frozenset({"avx512f"})),
    ("AVX512_CORE_VNNI", frozenset()),
    ("AVX512_CORE_BF16", frozenset({"avx512_bf16"})),
    ("AVX10_1_512", frozenset({"avx512_fp16"})),
    ("AVX512_CORE_FP16", frozenset({"avx512_fp16"})),
    ("AVX10_1_512_AMX", frozenset({"amx_tile", "amx_bf16", "amx_int8"})),
    ("AVX512_CORE_AMX", frozenset({"amx_tile", "amx_bf16", "amx_int8"})),
    ("AVX10_1_512_AMX_FP16", frozenset({"amx_fp16"})),
    ("AVX512_CORE_AMX_FP16", frozenset({"amx_fp16"})),
)
_LIMITED_FLAGS = frozenset().union(*(flags for _, flags in _ISA_LEVELS))

FAST_BFLOAT16 = frozenset({"amx_bf16", "avx512_bf16"})
FAST_FLOAT16 = frozenset({"amx_fp16", "avx512_fp16"})
WRONG_BFLOAT16 = frozenset({"amx_bf16"})  # bfloat16 runs on AMX there, and changes a water model's masks


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # float16 | bfloat16 | float32
    reason: str


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first CPU ("" where the system does not list them)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def usable_flags(flags: frozenset[str], environ: Optional[dict[str, str]] = None) -> frozenset[str]:
    """`flags` minus what ONEDNN_MAX_CPU_ISA forbids oneDNN to use."""
    env = os.environ if environ is None else environ
    limit = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    names = [name for name, _ in _ISA_LEVELS]
    if not limit or limit == "ALL" or limit not in names:
        return flags
    allowed = frozenset().union(*(f for _, f in _ISA_LEVELS[: names.index(limit) + 1]))
    return frozenset(f for f in flags if f not in _LIMITED_FLAGS or f in allowed)


def fastest_dtype(flags: Optional[frozenset[str]] = None, environ: Optional[dict[str, str]] = None,
                  bfloat16_ok: bool = True) -> DtypeChoice:
    """The dtype this CPU runs a model fastest in, among those whose water masks agree with float32.

    `bfloat16_ok` is False for a model whose bfloat16 masks do not agree well enough with float32's.
    """
    usable = usable_flags(cpu_flags() if flags is None else flags, environ)
    bf16 = sorted(usable & FAST_BFLOAT16)
    fp16 = sorted(usable & FAST_FLOAT16)
    on_amx = sorted(usable & WRONG_BFLOAT16)
    if bf16 and bfloat16_ok and not on_amx:
        return DtypeChoice("bfloat16", f"this CPU has {', '.join(bf16)}: bfloat16 is its fastest dtype")
    not_bf16 = (f"; not bfloat16, which runs on this CPU's {', '.join(on_amx)} and there changes a water model's "
                "mask against float32 (set ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 to run bfloat16 without AMX)"
                if on_amx and bfloat16_ok else "")
    if fp16:
        return DtypeChoice("float16", f"this CPU has {', '.join(fp16)}: float16 runs at full speed{not_bf16}")
    if not_bf16:
        return DtypeChoice("float32", f"this CPU has no AVX512-FP16/AMX-FP16 for float16{not_bf16}")
    return DtypeChoice(
        "float32", "this CPU has neither AVX512-FP16/AMX-FP16 nor AVX512-BF16/AMX-BF16, where float16 and "
        "bfloat16 run one to two orders of magnitude slower than float32")


def vllm_cpu_binding(environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """vLLM's CPU binding for a small machine: every allowed core for torch, none kept for its scheduler.

    vLLM keeps one CPU for its scheduler and runs torch on the rest: on 2 cores that is 1 thread and half the
    speed. Above 4 cores vLLM's own default is better. The caller's own values win.
    """
    env = os.environ if environ is None else environ
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cpus) > 4:
        return {}
    return {
        "VLLM_CPU_OMP_THREADS_BIND": env.get("VLLM_CPU_OMP_THREADS_BIND") or ",".join(map(str, cpus)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": env.get("VLLM_CPU_NUM_OF_RESERVED_CPU") or "0",
    }
