"""The CPU's choice of attention pair: fp32 where a probe at load measures it faster than SDPA in
the model's dtype, by the margin; always in fp32; and what a load then runs."""

import pytest
import torch

from stable_audio_rt.kernels import cpu_attention
from stable_audio_rt.models.attention import FP32_SDPA, SDPA
from stable_audio_rt.runtime.pipeline import StableAudio

# SAO 1.0's geometry: 24 heads over 12 KV heads of 64 dims, RoPE on 32, 130 context tokens.
GEOMETRY = (24, 12, 64, 32, 10000.0, 130)


@pytest.fixture(autouse=True)
def fresh_probe():
    cpu_attention.fp32_attention_pays.cache_clear()
    yield
    cpu_attention.fp32_attention_pays.cache_clear()


def timed_pairs(monkeypatch, seconds):
    """`best_seconds` answering `seconds[pair]` for the pair the probe times, recording each."""
    timed = []

    def best_seconds(call, repeats):
        pair = call.args[0]
        call()  # the probe's shapes run for real
        timed.append(pair)
        return seconds[pair]

    monkeypatch.setattr(cpu_attention, "best_seconds", best_seconds)
    return timed


@pytest.mark.parametrize(
    "fp32_seconds,pays",
    [(1.0 / (cpu_attention.FP32_ATTENTION_MIN_SPEEDUP + 0.05), True), (0.95, False), (1.2, False)],
)
def test_bf16_takes_fp32_attention_only_when_the_probe_finds_it_faster_by_the_margin(
    monkeypatch, fp32_seconds, pays
):
    timed = timed_pairs(monkeypatch, {SDPA: 1.0, FP32_SDPA: fp32_seconds})
    assert cpu_attention.fp32_attention_pays(torch.bfloat16, *GEOMETRY) is pays
    assert timed == [SDPA, FP32_SDPA]
    # Measured once: the answer is kept for the process.
    assert cpu_attention.fp32_attention_pays(torch.bfloat16, *GEOMETRY) is pays
    assert len(timed) == 2


def test_fp32_takes_it_without_a_probe(monkeypatch):
    timed = timed_pairs(monkeypatch, {})
    assert cpu_attention.fp32_attention_pays(torch.float32, *GEOMETRY)
    assert timed == []


@pytest.mark.parametrize("pays", [True, False])
def test_a_cpu_load_runs_the_probes_answer_and_the_torch_maths_keep_sdpa(monkeypatch, pays):
    asked = []

    def probe(*geometry):
        asked.append(geometry)
        return pays

    monkeypatch.setattr(cpu_attention, "fp32_attention_pays", probe)
    compiled = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.bfloat16, kernels="auto")
    assert compiled.components.model.dit.attention is (FP32_SDPA if pays else SDPA)
    dit = compiled.config.dit
    assert asked == [
        (torch.bfloat16, dit.num_heads, dit.num_kv_heads, dit.head_dim, dit.rotary_dim, dit.rope_base,
         compiled.config.conditioning.context_tokens)
    ]  # fmt: skip
    reference = StableAudio.from_pretrained(
        "tiny-random", device="cpu", dtype=torch.bfloat16, kernels="torch"
    )
    assert reference.components.model.dit.attention is SDPA
    assert len(asked) == 1
