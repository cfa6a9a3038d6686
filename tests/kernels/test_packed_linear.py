"""bf16 linears with oneDNN-packed weights (the CPU fast path): the same product as `nn.Linear`,
swapped in only where they apply, and the DiT step they serve as accurate as the plain one."""

import copy

import pytest
import torch
from numerics import rel_error
from torch import nn

from stable_audio_rt.kernels.packed_linear import PackedLinear, pack_linears_, packing_available
from stable_audio_rt.models.config import TINY
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.io_spec import axis_sizes, component_specs, sample_inputs
from stable_audio_rt.models.random_init import randomize_
from stable_audio_rt.runtime.backends.torch_backend import TorchDiTStep
from stable_audio_rt.runtime.pipeline import StableAudio

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch/CPU has no packed bf16 linear")

BF16_HALF_ULP = 2.0**-8  # rounding the fp32 accumulator to bf16: half of bf16's 2^-7 spacing
FP32_EPS = 2.0**-23


def _product_bound(x: torch.Tensor, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact product of the bf16 operands (fp64) and what a bf16 linear may miss it by: the
    output's rounding plus the fp32 accumulation's error over K terms (K·eps·Σ|x·w|)."""
    x64, w64 = x.double(), linear.weight.detach().double()
    exact = x64 @ w64.T
    magnitude = x64.abs() @ w64.abs().T
    if linear.bias is not None:
        exact = exact + linear.bias.detach().double()
        magnitude = magnitude + linear.bias.detach().double().abs()
    return exact, BF16_HALF_ULP * exact.abs() + (x.shape[-1] + 1) * FP32_EPS * magnitude + 1e-30


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 96), (2, 33, 96), (130, 96)])
def test_packed_linear_is_a_bf16_linear(bias, shape):
    linear = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    x = torch.randn(shape, dtype=torch.bfloat16)
    with torch.inference_mode():
        ours, plain = PackedLinear(linear)(x), linear(x)
    exact, bound = _product_bound(x, linear)
    assert ours.dtype == torch.bfloat16 and ours.shape == plain.shape
    assert bool(((plain.double() - exact).abs() <= bound).all())  # the bound holds for nn.Linear
    assert bool(((ours.double() - exact).abs() <= bound).all())


def test_only_bf16_linears_are_packed():
    model = nn.Sequential(
        nn.Linear(8, 8).to(torch.bfloat16), nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16)), nn.Linear(8, 8)
    )
    fp32_weight = model[2].weight
    assert pack_linears_(model) == 2
    assert isinstance(model[0], PackedLinear) and isinstance(model[1][0], PackedLinear)
    assert type(model[2]) is nn.Linear and model[2].weight is fp32_weight
    assert pack_linears_(model) == 0  # nothing left to pack


@torch.inference_mode()
def test_packed_dit_step_is_as_accurate_as_the_plain_one():
    config = TINY
    seed = torch.randint(2**31, ()).item()
    reference = randomize_(DiT(config.dit), torch.Generator().manual_seed(seed)).eval()
    plain = copy.deepcopy(reference).to(torch.bfloat16)
    packed = copy.deepcopy(plain)
    assert pack_linears_(packed) == sum(type(m) is nn.Linear for m in plain.modules()) > 0
    spec = component_specs(config)["dit"]
    x, t, context, global_cond = sample_inputs(
        spec, axis_sizes(config, 2, 9), torch.float32, torch.Generator().manual_seed(seed), 2
    )
    outputs = []
    for dit in (reference, plain, packed):
        step = TorchDiTStep(dit, 1, 2, config.conditioning.context_tokens)
        step.bind(t[:1], context, global_cond)
        outputs.append(step(x.to(step.global_tokens.dtype), 0).float())
    fp32, bf16_plain, bf16_packed = outputs
    # The same maths in bf16: no further from fp32 than the plain bf16 step, within rounding's
    # spread (measured bit-equal on an AVX512-BF16 EPYC).
    assert rel_error(bf16_packed, fp32) <= 2 * rel_error(bf16_plain, fp32)


def test_the_cpu_fast_path_packs_the_bf16_dit_and_the_reference_path_does_not():
    load = dict(device="cpu", kernels="torch")
    fp32 = StableAudio.from_pretrained("tiny-random", dtype=torch.float32, **load)
    plain = StableAudio.from_pretrained("tiny-random", dtype=torch.bfloat16, **load)
    fast = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.bfloat16)
    assert not any(type(m) is nn.Linear for m in fast.components.model.dit.modules())
    assert not any(isinstance(m, PackedLinear) for m in plain.components.model.dit.modules())
    options = dict(seconds_total=0.5, steps=3, seed=torch.randint(2**31, ()).item())
    reference = fp32.generate("rain", **options).latents
    ours, theirs = fast.generate("rain", **options).latents, plain.generate("rain", **options).latents
    assert rel_error(ours, reference) <= 2 * rel_error(theirs, reference)
