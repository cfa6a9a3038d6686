"""The CPU's choice of attention pair, made from the dtype and the CPU's reported features (never
a timing): fp32 always; bf16 without AMX tiles; SDPA otherwise; and what a load then runs."""

import pytest
import torch

from stable_audio_rt.kernels import cpu_attention
from stable_audio_rt.models.attention import FP32_SDPA, SDPA
from stable_audio_rt.precision import AMX_FEATURE
from stable_audio_rt.runtime.pipeline import StableAudio

AVX512_BF16 = {"avx512_bf16": True, AMX_FEATURE: False}
AMX = {"avx512_bf16": True, AMX_FEATURE: True}


@pytest.mark.parametrize(
    "dtype,capabilities,pair",
    [
        (torch.float32, AVX512_BF16, FP32_SDPA),
        (torch.float32, AMX, FP32_SDPA),  # SDPA's maths without the repeat, wherever
        (torch.bfloat16, AVX512_BF16, FP32_SDPA),
        (torch.bfloat16, {}, FP32_SDPA),
        (torch.bfloat16, AMX, SDPA),
        (torch.float16, AVX512_BF16, SDPA),
    ],
)
def test_the_pair_follows_from_the_dtype_and_the_cpus_features(dtype, capabilities, pair):
    assert cpu_attention.cpu_attention(dtype, capabilities) is pair


@pytest.mark.parametrize("amx", [False, True])
def test_a_cpu_load_runs_the_pair_for_its_cpu_and_the_torch_maths_keep_sdpa(monkeypatch, amx):
    monkeypatch.setattr(cpu_attention, "cpu_capabilities", lambda: {**AVX512_BF16, AMX_FEATURE: amx})
    compiled = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.bfloat16, kernels="auto")
    assert compiled.components.model.dit.attention is (SDPA if amx else FP32_SDPA)
    reference = StableAudio.from_pretrained(
        "tiny-random", device="cpu", dtype=torch.bfloat16, kernels="torch"
    )
    assert reference.components.model.dit.attention is SDPA
