"""Which attention pair a CPU DiT runs: SDPA in the model's dtype, or `models.attention.FP32_SDPA`.

The choice follows from the dtype and the features torch reports of the CPU, never from a
timing: the two pairs round differently, so a choice made by a probe at load (as it once was)
gave one seed different audio in two processes on one machine, as the load and malloc's policy
moved the timings.

In fp32 the pair is SDPA's maths without the repeat of K and V, so it is always taken. In bf16,
on a 2-core AVX512-BF16 AMD EPYC (torch 2.13), torch's bf16 flash kernel is no faster than its
fp32 one at the DiT's lengths: the fp32 pair (q and k kept fp32 from RoPE, each KV head's query
heads folded instead of K and V repeated) took a 64-frame CFG step's attention from 72 to 57 ms
and the step 2-3 % faster, with the same SNR, where freed memory is kept for reuse (the CLIs'
default, `runtime/cpu_memory.py`; under malloc's defaults the two ran alike). With AMX tiles,
torch's bf16 kernel multiplies on them, several times its fp32 rate (not measured here), so
SDPA is kept there; fp16 keeps it too.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from stable_audio_rt.models.attention import FP32_SDPA, SDPA, AttentionFunctions
from stable_audio_rt.precision import AMX_FEATURE, cpu_capabilities


def cpu_attention(dtype: torch.dtype, capabilities: Mapping[str, object] | None = None) -> AttentionFunctions:
    """The attention pair for a CPU DiT in `dtype`: `FP32_SDPA` in fp32, and in bf16 on a CPU
    without AMX tiles; SDPA otherwise. `capabilities` defaults to `cpu_capabilities()`."""
    if dtype == torch.float32:
        return FP32_SDPA
    capabilities = cpu_capabilities() if capabilities is None else capabilities
    return FP32_SDPA if dtype == torch.bfloat16 and not capabilities.get(AMX_FEATURE) else SDPA
