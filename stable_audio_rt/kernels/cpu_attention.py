"""Which attention pair a CPU DiT runs: SDPA in the model's dtype, or `models.attention.FP32_SDPA`
where a probe at load measures it faster.

On a 2-core AVX512-BF16 AMD EPYC (torch 2.13), torch's bf16 flash kernel is no faster than its
fp32 one at the DiT's lengths: the fp32 pair (q and k kept fp32 from RoPE, each KV head's query
heads folded instead of K and V repeated) took a 64-frame CFG step's attention from 72 to 57 ms
and the step 2-3 % faster, with the same SNR. There the probe reads the fp32 pair 1.34-1.5x
faster when freed memory is kept for reuse (the CLIs' default, `runtime/cpu_memory.py`), and as
fast or slower under malloc's defaults, where each fp32 copy faults its pages in: SDPA is kept
then. A CPU whose bf16 kernel runs faster (AMX tiles, not measured here) keeps SDPA too. In fp32
the pair is SDPA's maths without the repeat, so it is taken without a probe.
"""

from __future__ import annotations

from functools import cache, partial

import torch

from stable_audio_rt.models.attention import FP32_SDPA, SDPA, AttentionFunctions, rope_tables
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.runtime.timing import best_seconds

# The fp32 pair is taken when it runs at least this much faster than SDPA in the model's dtype:
# a margin over timing noise, so that a CPU where both run alike keeps the reference's SDPA.
FP32_ATTENTION_MIN_SPEEDUP = 1.1
# The probe: one 64-frame CFG step's attention (2 rows × (64 frames + the global token)), best of a few.
PROBE_ROWS, PROBE_TOKENS = 2, 65
PROBE_REPEATS = 5


def cpu_attention(config: StableAudioConfig, dtype: torch.dtype) -> AttentionFunctions:
    """The attention pair for a CPU DiT of `config` in `dtype`: `FP32_SDPA` where it pays, else SDPA."""
    dit = config.dit
    geometry = (dit.num_heads, dit.num_kv_heads, dit.head_dim, dit.rotary_dim, dit.rope_base)
    return FP32_SDPA if fp32_attention_pays(dtype, *geometry, config.conditioning.context_tokens) else SDPA


@cache  # a property of this CPU, torch and geometry: measured once per process, one answer after
def fp32_attention_pays(
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    head_dim: int,
    rotary_dim: int,
    rope_base: float,
    context_tokens: int,
) -> bool:
    """Whether `FP32_SDPA` runs this geometry's self- and cross-attention FP32_ATTENTION_MIN_SPEEDUP
    faster than SDPA in `dtype` on this CPU (always in fp32: the same maths, without the repeat)."""
    if dtype == torch.float32:
        return True
    with torch.inference_mode():
        q, k, v = (torch.randn(PROBE_ROWS, heads, PROBE_TOKENS, head_dim, dtype=dtype) for _ in range(3))
        context = [torch.randn(PROBE_ROWS, kv_heads, context_tokens, head_dim, dtype=dtype) for _ in range(2)]
        cos, sin = rope_tables(PROBE_TOKENS, rotary_dim, rope_base)

        def attend(pair: AttentionFunctions) -> None:
            pair.self_attention(q, k, v, cos, sin)
            pair.cross_attention(q, *context)

        sdpa_s = best_seconds(partial(attend, SDPA), PROBE_REPEATS)
        return sdpa_s >= FP32_ATTENTION_MIN_SPEEDUP * best_seconds(partial(attend, FP32_SDPA), PROBE_REPEATS)
