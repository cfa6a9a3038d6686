"""Precision names: the one table from "fp32", "fp16", "bf16" (CLIs, manifests, kernels) to torch
dtypes, and what "auto" picks on a device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from stable_audio_rt.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Same order as DTYPES: the kernels iterate it to name their variants.
NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
DTYPE_CHOICES: tuple[str, ...] = (*DTYPES, "auto")
DtypeRequest = torch.dtype | Literal["auto"]
# CPU features that multiply bf16 matrices in hardware, by torch.cpu.get_capabilities' names:
# Intel AMX, AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and later), Arm's BF16 and SVE
# BF16 extensions. Without them oneDNN emulates bf16 and it is no faster than fp32.
AMX_FEATURE = "amx_bf16"
BF16_MATRIX_FEATURES = (AMX_FEATURE, "avx512_bf16", "bf16", "sve_bf16")


def dtype_request(name: str) -> DtypeRequest:
    """A CLI precision name (DTYPE_CHOICES) as the dtype argument of `StableAudio.load`."""
    return "auto" if name == "auto" else DTYPES[name]


@dataclass(frozen=True)
class DtypeChoice:
    """The model dtype to load and why (the CLIs print `line()`)."""

    dtype: torch.dtype
    reason: str

    def line(self) -> str:
        return f"dtype {NAMES[self.dtype]}: {self.reason}"


def cpu_capabilities() -> Mapping[str, object]:
    """What torch reports of this CPU (cpuinfo's reading; torch ≥ 2.13 publishes all of it)."""
    if hasattr(torch.cpu, "get_capabilities"):
        return torch.cpu.get_capabilities()
    return {
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        AMX_FEATURE: torch.cpu._is_amx_tile_supported(),
    }


def choose_dtype(
    requested: DtypeRequest, device: torch.device, capabilities: Mapping[str, object] | None = None
) -> DtypeChoice:
    """`requested` itself, or for "auto": bf16 on a CPU with bf16 matrix units, fp32 elsewhere
    (on CUDA fp32 stays the default until the GPU results say otherwise). `capabilities`
    defaults to `cpu_capabilities()`."""
    if isinstance(requested, torch.dtype):
        if requested not in NAMES:
            raise ConfigError(f"dtype must be one of {', '.join(map(str, NAMES))} or 'auto', got {requested}")
        return DtypeChoice(requested, "asked for")
    if requested != "auto":
        raise ConfigError(f"dtype must be a torch dtype or 'auto', got {requested!r}")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"auto on {device.type} keeps fp32")
    capabilities = cpu_capabilities() if capabilities is None else capabilities
    units = [name for name in BF16_MATRIX_FEATURES if capabilities.get(name)]
    cpu = capabilities.get("cpu_name") or "this CPU"
    if units:
        return DtypeChoice(torch.bfloat16, f"auto: {cpu} multiplies bf16 in hardware ({', '.join(units)})")
    return DtypeChoice(
        torch.float32, f"auto: {cpu} has no bf16 matrix units ({', '.join(BF16_MATRIX_FEATURES)}: none)"
    )


# Where a bf16 (or fp16) model still computes in fp32, and the measurement that keeps each one.
# tests/runtime/test_fp32_islands.py fails on an fp32 computation found anywhere else.
FP32_ISLANDS: dict[str, str] = {
    "t5": "T5 stays fp32 (t5_dtype): one call of a t5-base-geometry encoder in bf16 is 14.5 dB "
    "from fp32 (benchmarks/results/t5_precision_cpu.json), for 0.15 s of a CPU request",
    "snake": "Snake's sin² in fp32 (reference-spec §5: fp16's 1e-9 underflows): eager, bf16 maths "
    "raises its error 1.7x (1.65e-3 to 2.82e-3 rms); compiled, a full-window bf16 decode has the "
    "same SNR with and without it (20.4 and 19.6 s, one run each: "
    "benchmarks/results/vae_layout_cpu.json)",
    "rope": "rotary embedding applied in fp32, as stable-audio-tools' apply_rotary_pos_emb does",
    "attention": "the DiT's attention in fp32 on a CPU without AMX tiles (kernels/cpu_attention.py): "
    "a bf16 step 2-3 % faster than bf16 SDPA on a 2-core AVX512-BF16 EPYC (64 and 512 frames, "
    "interleaved), the same SNR",
    "timestep": "the timestep features, a σ-dependent quantity, in fp32 (reference-spec §3)",
    "sampler": "the sampler's state and update in fp32: bf16 would round x at every step",
}
