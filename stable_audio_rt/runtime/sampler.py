"""The executed part of a request: one dpmpp-3m-sde step over a `RequestPlan`'s buffers.

A step reads the plan and writes only `plan.x` and one slot of the denoised ring, in place,
with no host synchronisation: every scalar is a 0-d device tensor from the plan's table.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from stable_audio_rt.models.dit import DiT
from stable_audio_rt.runtime.plan import HISTORY, RequestPlan
from stable_audio_rt.runtime.schedule import Col


def guided_v(v: torch.Tensor, batch: int, plan: RequestPlan) -> torch.Tensor:
    """CFG on the model output: v_u + s·(v_c − v_u), rows ordered [cond; uncond]."""
    if not plan.uses_cfg:
        return v.float()
    return torch.lerp(v[batch:].float(), v[:batch].float(), plan.cfg_scale)


def sampler_step(dit: DiT, plan: RequestPlan, i: int) -> None:
    """Step i: denoise x at σ_i with CFG, then the linear dpmpp-3m-sde update (and RePaint)."""
    s = plan.scalars[i]
    x = plan.x
    batch = x.shape[0]
    inp = plan.model_input
    inp[:batch].copy_(x * s[Col.C_IN])
    if plan.uses_cfg:
        inp[batch:].copy_(inp[:batch])
    v = dit.forward_with_context_kv(inp, plan.global_tokens[i], plan.context_kv)

    denoised = plan.denoised[i % HISTORY]
    prev, prev2 = plan.denoised[(i - 1) % HISTORY], plan.denoised[(i - 2) % HISTORY]
    torch.add(x * s[Col.C_SKIP], guided_v(v, batch, plan) * s[Col.C_OUT], out=denoised)

    # x ← a·x + b·D_i + A·(D_i − D_{i−1}) + B·(D_{i−1} − D_{i−2}) + g·z_i
    update = denoised * s[Col.B] + (denoised - prev) * s[Col.D1] + (prev - prev2) * s[Col.D2]
    x.mul_(s[Col.A]).add_(update).add_(plan.step_noise[i] * s[Col.NOISE])

    if plan.inpaint is not None:
        # RePaint: the state entering step i+1 takes the reference re-noised to σ_{i+1} where
        # kept (exactly the reference after the last step, where σ_{i+1} = 0).
        ip = plan.inpaint
        kept = ip.reference + ip.renoise[i] * s[Col.SIGMA_NEXT]
        torch.where(ip.keep, kept, x, out=x)


def run_plan(dit: DiT, plan: RequestPlan, on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """All steps, eagerly; returns the final latents (plan.x)."""
    with torch.no_grad():
        for i in range(plan.steps):
            sampler_step(dit, plan, i)
            if on_step is not None:
                on_step(i)
    return plan.x
