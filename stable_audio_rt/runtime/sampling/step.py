"""The executed part of a request: one sampler step over a `SamplerState`'s buffers, in the
linear form both samplers share (dpmpp-3m-sde's table, and pingpong's with its history terms
zero: `pingpong.pingpong_table`).

A step reads the state and writes only `state.x` and one slot of the denoised ring, in place,
with no host synchronisation: every scalar is a 0-d device tensor from the state's table.
"""

from __future__ import annotations

import torch

from stable_audio_rt.runtime.sampling.guidance import guide
from stable_audio_rt.runtime.sampling.state import HISTORY, SamplerState
from stable_audio_rt.runtime.sampling.table import Col


def sampler_step(state: SamplerState, i: int) -> None:
    """Step i: denoise x at σ_i with guidance, then the linear update of the state's table (and
    RePaint)."""
    s = state.scalars[i]
    x = state.x
    batch = x.shape[0]
    inp = state.model_input
    inp[:batch].copy_(x * s[Col.C_IN])
    if state.uses_cfg:
        inp[batch:].copy_(inp[:batch])
    v = state.denoiser(inp, i)

    denoised = state.denoised[i % HISTORY]
    prev, prev2 = state.denoised[(i - 1) % HISTORY], state.denoised[(i - 2) % HISTORY]
    # D = c_skip·x + c_out·v, per half of the [cond; uncond] batch (v and rf_denoiser objectives).
    if state.uses_cfg:
        d_cond = x * s[Col.C_SKIP] + v[:batch].float() * s[Col.C_OUT]
        d_uncond = x * s[Col.C_SKIP] + v[batch:].float() * s[Col.C_OUT]
        denoised.copy_(guide(d_cond, d_uncond, state.cfg_scale, state.guidance))
    else:
        torch.add(x * s[Col.C_SKIP], v.float() * s[Col.C_OUT], out=denoised)

    # x ← a·x + b·D_i + A·(D_i − D_{i−1}) + B·(D_{i−1} − D_{i−2}) + g·z_i
    update = denoised * s[Col.B] + (denoised - prev) * s[Col.D1] + (prev - prev2) * s[Col.D2]
    x.mul_(s[Col.A]).add_(update).add_(state.step_noise[i] * s[Col.NOISE])

    if state.inpaint is not None:
        # RePaint: the state entering step i+1 takes the reference re-noised to σ_{i+1} where
        # kept (exactly the reference after the last step, where σ_{i+1} = 0).
        ip = state.inpaint
        kept = ip.reference + ip.renoise[i] * s[Col.SIGMA_NEXT]
        torch.where(ip.keep, kept, x, out=x)
