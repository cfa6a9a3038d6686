"""The residual unit's last convolution and add as one in-place oneDNN call (the CPU fast path):
`x + conv(h)` within the rounding of one exact product, written into x, and a VAE using it as
accurate as one without."""

import copy

import pytest
import torch
from numerics import FP32_REL_TOL, rel_error
from torch import nn

from stable_audio_rt.kernels.conv_add import conv_add_, conv_add_available
from stable_audio_rt.kernels.switch import use_onednn_vae_
from stable_audio_rt.models.vae import ResidualUnit, conv_as_2d, residual_add
from stable_audio_rt.runtime.pipeline import StableAudio

DTYPES = [
    pytest.param(
        dtype,
        marks=pytest.mark.skipif(not conv_add_available(dtype), reason=f"no fused oneDNN conv in {dtype}"),
    )
    for dtype in (torch.bfloat16, torch.float32)
]
# Rounding the fp32 accumulator to the output: half of the dtype's spacing (2^-7 bf16, 2^-23 fp32).
HALF_ULP = {torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
FP32_EPS = 2.0**-23


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES)
@torch.no_grad()
def test_conv_add_is_x_plus_the_convolution_written_into_x(dtype):
    channels, length = 48, 301
    conv = conv_as_2d(nn.Conv1d(channels, channels, 1)).to(dtype)
    x = _channels_last(torch.randn(2, channels, 1, length).to(dtype))
    h = _channels_last(torch.randn(2, channels, 1, length).to(dtype))
    w, b = conv.weight.double()[:, :, 0, 0], conv.bias.double()[:, None]
    exact = x.double() + torch.einsum("ck,bkt->bct", w, h.double()[:, :, 0]).unsqueeze(2) + b[:, :, None]
    magnitude = (
        x.double().abs()
        + torch.einsum("ck,bkt->bct", w.abs(), h.double()[:, :, 0].abs()).unsqueeze(2)
        + b.abs()[:, :, None]
    )
    target = x.clone()
    out = conv_add_(target, conv, h)
    assert out.data_ptr() == target.data_ptr()  # written in place
    # One rounding of an fp32 accumulation over channels + 2 terms, as an exact sum may miss it.
    bound = HALF_ULP[dtype] * exact.abs() + (channels + 2) * FP32_EPS * magnitude + 1e-30
    assert ((out.double() - exact).abs() <= bound).all()
    if dtype == torch.float32:
        assert rel_error(out, residual_add(x, conv, h)) <= FP32_REL_TOL


@pytest.mark.parametrize("dtype", DTYPES)
@torch.no_grad()
def test_a_vae_with_fused_residual_adds_decodes_and_encodes_as_without(tiny_model, dtype):
    reference = tiny_model.vae  # fp32, (B, C, T), residual adds apart
    apart = copy.deepcopy(reference).to(dtype).use_channels_last_()
    fused = copy.deepcopy(reference).to(dtype)
    use_onednn_vae_(fused, dtype)
    units = [m for m in fused.modules() if isinstance(m, ResidualUnit)]
    assert units and all(m.residual_add is conv_add_ for m in units)
    latents = torch.randn(2, reference.config.latent_dim, 7)
    audio = torch.randn(2, reference.config.audio_channels, 7 * reference.config.downsampling_ratio)
    calls = [
        lambda vae, dtype: vae.decode(latents.to(dtype)).float(),
        lambda vae, dtype: vae.encode_moments(audio.to(dtype))[0].float(),
    ]
    for call in calls:
        exact, ours, theirs = call(reference, torch.float32), call(fused, dtype), call(apart, dtype)
        if dtype == torch.float32:
            assert rel_error(ours, exact) <= FP32_REL_TOL
        else:  # one rounding per add instead of two: no further from fp32 than the unfused bf16
            assert rel_error(ours, exact) <= 2 * rel_error(theirs, exact)


def test_the_cpu_fast_path_fuses_the_vae_residual_adds_and_the_reference_path_does_not():
    fast = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.float32)
    plain = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.float32, kernels="torch")
    for pipe, expected in ((fast, conv_add_ if conv_add_available(torch.float32) else residual_add),
                           (plain, residual_add)):  # fmt: skip
        units = [m for m in pipe.components.model.vae.modules() if isinstance(m, ResidualUnit)]
        assert units and all(m.residual_add is expected for m in units)
