"""Sampler plans built from given values and run eagerly: how the sampler tests drive the step
the pipeline's region runs, without a pipeline around it."""

import torch

from stable_audio_rt.runtime.components import StepModel
from stable_audio_rt.runtime.guidance import CFG, Guidance
from stable_audio_rt.runtime.plan import RequestPlan, allocate_plan
from stable_audio_rt.runtime.sampler import sampler_step


def build_plan(
    denoiser: StepModel,
    x0: torch.Tensor,
    scalars: torch.Tensor,
    step_noise: torch.Tensor,
    cfg_scale: float,
    uses_cfg: bool,
    model_dtype: torch.dtype,
    guidance: Guidance = CFG,
) -> RequestPlan:
    """A plan filled from given values: `x0` is the initial state (B, C, T) at σ_0 on the run's
    device, `scalars` the step table, `step_noise` (N, B, C, T)."""
    plan = allocate_plan(
        denoiser, tuple(x0.shape), scalars.shape[0], uses_cfg, model_dtype, x0.device, guidance
    )
    plan.x.copy_(x0)
    plan.scalars.copy_(scalars)
    plan.step_noise.copy_(step_noise)
    plan.cfg_scale.fill_(cfg_scale)
    return plan


def run_plan(plan: RequestPlan) -> torch.Tensor:
    """All steps, eagerly; returns the final latents (plan.x)."""
    with torch.no_grad():
        for i in range(plan.steps):
            sampler_step(plan, i)
    return plan.x
