"""Linears with oneDNN-packed weights (the CPU fast path): the same product as `nn.Linear`,
swapped in per dtype as decided (bf16 and fp32 wherever oneDNN runs them), and the DiT step
they serve as accurate as the plain one."""

import copy

import pytest
import torch
from numerics import FP32_REL_TOL, rel_error
from torch import nn

from stable_audio_rt.kernels import packed_linear
from stable_audio_rt.kernels.packed_linear import PackedLinear, pack_linears_, packing_available, packs
from stable_audio_rt.models.config import TINY
from stable_audio_rt.models.dit import DiT, plus_linear
from stable_audio_rt.models.io_spec import axis_sizes, component_specs, sample_inputs
from stable_audio_rt.models.random_init import randomize_
from stable_audio_rt.runtime.backends.torch_backend import TorchDiTStep
from stable_audio_rt.runtime.pipeline import StableAudio

DTYPES = [
    pytest.param(
        dtype,
        marks=pytest.mark.skipif(not packing_available(dtype), reason=f"no packed oneDNN linear in {dtype}"),
    )
    for dtype in (torch.bfloat16, torch.float32)
]
BF16 = pytest.mark.skipif(not packing_available(torch.bfloat16), reason="no packed oneDNN linear in bf16")

# Rounding the fp32 accumulator to the output: half of the dtype's spacing (2^-7 bf16, 2^-23 fp32).
HALF_ULP = {torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
FP32_EPS = 2.0**-23


def _product_bound(
    x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact product of the operands (fp64), plus `residual` if given, and what a linear in
    their dtype may miss it by: one rounding of the output plus the fp32 accumulation's error
    over its terms (K products, the bias and the residual: terms·eps·Σ|term|)."""
    x64, w64 = x.double(), linear.weight.detach().double()
    exact = x64 @ w64.T
    magnitude = x64.abs() @ w64.abs().T
    if linear.bias is not None:
        exact = exact + linear.bias.detach().double()
        magnitude = magnitude + linear.bias.detach().double().abs()
    terms = x.shape[-1] + 1
    if residual is not None:
        exact = exact + residual.double()
        magnitude = magnitude + residual.double().abs()
        terms += 1
    return exact, HALF_ULP[x.dtype] * exact.abs() + terms * FP32_EPS * magnitude + 1e-30


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 96), (2, 33, 96), (130, 96)])
def test_packed_linear_is_a_linear(dtype, bias, shape, generator):
    linear = randomize_(nn.Linear(96, 160, bias=bias), generator).to(dtype)
    x = torch.randn(shape, generator=generator).to(dtype)
    with torch.inference_mode():
        ours, plain = PackedLinear(linear)(x), linear(x)
    exact, bound = _product_bound(x, linear)
    assert ours.dtype == dtype and ours.shape == plain.shape
    assert bool(((plain.double() - exact).abs() <= bound).all())  # the bound holds for nn.Linear
    assert bool(((ours.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_plus_is_the_residual_plus_the_product_rounded_once(dtype, bias, generator):
    linear = randomize_(nn.Linear(96, 160, bias=bias), generator).to(dtype)
    x = torch.randn(2, 33, 96, generator=generator).to(dtype)
    residual = (4 * torch.randn(2, 33, 160, generator=generator)).to(dtype)
    with torch.inference_mode():
        ours = PackedLinear(linear).forward_plus(x, residual)
        plain = plus_linear(residual, linear, x)  # a plain linear: the sum after the product
    exact, bound = _product_bound(x, linear, residual)  # one rounding, after the sum
    assert ours.dtype == dtype and ours.shape == residual.shape
    assert torch.equal(plain, residual + linear(x))
    assert bool(((ours.double() - exact).abs() <= bound).all())
    if dtype == torch.bfloat16:  # the bound is tight enough to see the plain sum's two roundings
        assert not bool(((plain.double() - exact).abs() <= bound).all())


@BF16
def test_each_dtype_is_packed_as_decided():
    def model():
        return nn.Sequential(
            nn.Linear(8, 8).to(torch.bfloat16),
            nn.Sequential(nn.Linear(8, 24).to(torch.bfloat16)),
            nn.Linear(8, 8),
            nn.Linear(16, 8),
        )

    asked = []

    def only_bf16(dtype):
        asked.append(dtype)
        return dtype == torch.bfloat16

    unpacked = model()
    fp32_weight = unpacked[2].weight
    assert pack_linears_(unpacked, only_bf16) == 2
    assert sorted(asked, key=str) == sorted([torch.bfloat16] * 2 + [torch.float32] * 2, key=str)
    assert isinstance(unpacked[0], PackedLinear) and isinstance(unpacked[1][0], PackedLinear)
    assert type(unpacked[2]) is nn.Linear and unpacked[2].weight is fp32_weight
    assert pack_linears_(unpacked, only_bf16) == 0  # nothing left that may be packed
    everything = model()
    assert pack_linears_(everything, lambda dtype: True) == 4
    assert not any(type(m) is nn.Linear for m in everything.modules())


@BF16
def test_bf16_and_fp32_are_packed_by_what_onednn_runs_never_by_a_timing(monkeypatch):
    # One seed, one audio in every process: no probe whose answer could move with the load.
    monkeypatch.setattr(packed_linear, "packing_available", lambda dtype: True)
    assert packs(torch.bfloat16) and packs(torch.float32) and not packs(torch.float16)
    monkeypatch.setattr(packed_linear, "packing_available", lambda dtype: dtype == torch.bfloat16)
    assert packs(torch.bfloat16) and not packs(torch.float32)


@torch.inference_mode()
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_dit_step_is_as_accurate_as_the_plain_one(dtype):
    config = TINY
    seed = torch.randint(2**31, ()).item()
    reference = randomize_(DiT(config.dit), torch.Generator().manual_seed(seed)).eval()
    plain = copy.deepcopy(reference).to(dtype)
    packed = copy.deepcopy(plain)
    assert pack_linears_(packed, lambda dtype: True) == sum(type(m) is nn.Linear for m in plain.modules()) > 0
    spec = component_specs(config)["dit"]
    x, t, context, global_cond = sample_inputs(
        spec, axis_sizes(config, 2, 9), torch.float32, torch.Generator().manual_seed(seed), 2
    )
    outputs = []
    for dit in (reference, plain, packed):
        step = TorchDiTStep(dit, 1, 2, config.conditioning.context_tokens)
        step.bind(t[:1], context, global_cond)
        outputs.append(step(x.to(step.global_tokens.dtype), 0).float())
    fp32, ours_plain, ours_packed = outputs
    if dtype == torch.float32:
        assert rel_error(ours_packed, fp32) <= FP32_REL_TOL  # the same sums in another order
    else:
        # The same maths in bf16: no further from fp32 than the plain bf16 step, within
        # rounding's spread (measured bit-equal on an AVX512-BF16 EPYC).
        assert rel_error(ours_packed, fp32) <= 2 * rel_error(ours_plain, fp32)


@BF16
def test_the_cpu_fast_path_packs_the_bf16_dit_and_the_reference_path_does_not():
    load = dict(device="cpu", kernels="torch")
    fp32 = StableAudio.from_pretrained("tiny-random", dtype=torch.float32, **load)
    plain = StableAudio.from_pretrained("tiny-random", dtype=torch.bfloat16, **load)
    fast = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.bfloat16)
    assert not any(type(m) is nn.Linear for m in fast.components.model.dit.modules())
    assert not any(isinstance(m, PackedLinear) for m in plain.components.model.dit.modules())
    # Four clips, whose errors are compared together: two bf16 errors (3-9 % each after 3 CFG
    # steps) of one clip have a volatile ratio (up to 1.99 over 1700 seeds); over four clips the
    # same seeds gave 0.74-1.45 where one clip gave 0.65-1.99 (seeds 1570-1589).
    options = dict(seconds_total=0.5, steps=3, seed=torch.randint(2**31, ()).item(), num_outputs=4)
    reference = fp32.generate("rain", **options).latents
    ours, theirs = fast.generate("rain", **options).latents, plain.generate("rain", **options).latents
    assert rel_error(ours, reference) <= 2 * rel_error(theirs, reference)


@pytest.mark.skipif(not packing_available(torch.float32), reason="no packed oneDNN linear in fp32")
def test_the_cpu_fast_path_packs_t5_skips_its_padding_and_conditions_as_the_reference_path():
    reference = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.float32, kernels="torch")
    fast = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.float32)
    t5 = fast.components.conditioner.text_encoder
    assert not any(type(m) is nn.Linear for m in t5.modules())
    assert sum(isinstance(m, PackedLinear) for m in t5.modules()) > 0
    assert t5.skips_padding and not reference.components.conditioner.text_encoder.skips_padding
    # A negative prompt: both prompts go through the packed T5 in one call.
    options = dict(negative_prompt="noise", seconds_total=0.5, steps=2, seed=torch.randint(2**31, ()).item())
    ours, theirs = fast.generate("rain", **options).latents, reference.generate("rain", **options).latents
    assert rel_error(ours, theirs) <= FP32_REL_TOL
