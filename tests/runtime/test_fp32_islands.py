"""Every fp32 computation of a bf16 request is one of the named islands (precision.FP32_ISLANDS),
each kept by a measurement: a new fp32 computation anywhere else fails here until it is named."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stable_audio_rt.kernels import cpu_attention
from stable_audio_rt.models.attention import (
    FP32_SDPA,
    SDPA,
    AttentionFunctions,
    fp32_cross_attention,
    fp32_self_attention,
    partial_rope_fp32,
    rope_tables,
)
from stable_audio_rt.models.conditioners import T5TextEncoder
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.vae import Snake
from stable_audio_rt.precision import AMX_FEATURE, FP32_ISLANDS
from stable_audio_rt.runtime import region
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import DpmPP3MSDE
from stable_audio_rt.runtime.sampling.step import sampler_step

# Ops that only move or convert data: an island is where fp32 arithmetic happens.
MOVES = {"_to_copy", "copy_", "clone", "empty", "empty_like", "zeros", "zeros_like", "ones_like", "full",
         "fill_", "view", "_unsafe_view", "reshape", "expand", "slice", "select", "unsqueeze", "squeeze",
         "permute", "transpose", "t", "cat", "stack", "detach", "alias", "lift_fresh", "index", "split",
         "split_with_sizes", "chunk", "unbind", "as_strided", "contiguous", "new_empty", "arange",
         "linspace", "scalar_tensor", "_local_scalar_dense", "masked_fill", "where", "randn",
         "normal_", "repeat", "repeat_interleave", "narrow", "resize_", "set_", "empty_strided",
         "new_zeros", "index_select", "eq", "ne", "le", "ge", "lt", "gt", "bitwise_not", "logical_not",
         "any", "all", "isnan", "isfinite", "sort", "argsort"}  # fmt: skip


class Fp32Arithmetic(TorchDispatchMode):
    """Records which island (by the innermost owner running) each fp32 arithmetic op belongs to."""

    def __init__(self, owner: list[str]) -> None:
        super().__init__()
        self.owner, self.found = owner, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        # The first output is the result (attention's second, its log-sum-exp, is always fp32).
        result = out[0] if isinstance(out, tuple | list) else out
        if name not in MOVES and isinstance(result, torch.Tensor) and result.dtype == torch.float32:
            self.found.setdefault(self.owner[-1], set()).add(name)
        return out


@pytest.mark.parametrize("kernels", ["torch", "compiled"])
def test_a_bf16_request_computes_in_fp32_only_in_named_islands(monkeypatch, kernels):
    # The compiled path as on a CPU without AMX tiles (fp32 attention, its island); the torch maths
    # keep SDPA.
    monkeypatch.setattr(cpu_attention, "cpu_capabilities", lambda: {AMX_FEATURE: False})
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.bfloat16, kernels=kernels)
    dit = pipe.components.model.dit
    assert dit.attention is (FP32_SDPA if kernels == "compiled" else SDPA)
    owner = ["unnamed"]  # fp32 arithmetic here is in no island

    def owned(island, function):
        def run(*args, **kwargs):
            owner.append(island)
            try:
                return function(*args, **kwargs)
            finally:
                owner.pop()

        return run

    monkeypatch.setattr(T5TextEncoder, "forward", owned("t5", T5TextEncoder.forward))
    monkeypatch.setattr(Snake, "forward", owned("snake", Snake.forward))
    monkeypatch.setattr(DiT, "timestep_features", owned("timestep", DiT.timestep_features))
    monkeypatch.setattr(DiT, "forward_with_context_kv", owned("dit", DiT.forward_with_context_kv))
    monkeypatch.setattr(DiT, "global_token", owned("dit", DiT.global_token))
    monkeypatch.setattr(DiT, "context_kv", owned("dit", DiT.context_kv))
    monkeypatch.setattr(
        "stable_audio_rt.models.attention.partial_rope_fp32", owned("rope", partial_rope_fp32)
    )
    if kernels == "compiled":
        dit.set_attention(
            AttentionFunctions(
                owned("attention", fp32_self_attention), owned("attention", fp32_cross_attention)
            )
        )
    monkeypatch.setattr("stable_audio_rt.models.dit.rope_tables", owned("rope", rope_tables))
    monkeypatch.setattr(region, "sampler_step", owned("sampler", sampler_step))
    monkeypatch.setattr(region, "start", owned("sampler", region.start))  # the initial state
    monkeypatch.setattr(DpmPP3MSDE, "write", owned("sampler", DpmPP3MSDE.write))  # the schedule
    recorder = Fp32Arithmetic(owner)
    with recorder:
        pipe.generate("rain", seconds_total=0.5, steps=3, seed=torch.randint(2**31, ()).item())
    assert set(recorder.found) <= set(FP32_ISLANDS), recorder.found
    # Each island is real: it does compute in fp32 in this request (an unused name would be stale).
    # (Compiled, Snake runs as one Inductor kernel, which dispatches no aten op to record.)
    expected = {"t5", "timestep", "rope", "sampler"} | ({"attention"} if kernels == "compiled" else {"snake"})
    assert expected <= set(recorder.found), recorder.found
