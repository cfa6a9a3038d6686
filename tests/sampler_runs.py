"""Sampler states built from given values and run eagerly: how the sampler tests drive the step
the pipeline's region runs, without a pipeline around it."""

import torch

from stable_audio_rt.runtime.backends.protocols import StepModel
from stable_audio_rt.runtime.sampling.guidance import CFG, Guidance
from stable_audio_rt.runtime.sampling.state import SamplerState, allocate_state
from stable_audio_rt.runtime.sampling.step import sampler_step


def build_state(
    denoiser: StepModel,
    x0: torch.Tensor,
    scalars: torch.Tensor,
    step_noise: torch.Tensor,
    cfg_scale: float,
    uses_cfg: bool,
    model_dtype: torch.dtype,
    guidance: Guidance = CFG,
) -> SamplerState:
    """A state filled from given values: `x0` is the initial state (B, C, T) at σ_0 on the run's
    device, `scalars` the step table, `step_noise` (N, B, C, T)."""
    state = allocate_state(
        denoiser, tuple(x0.shape), scalars.shape[0], uses_cfg, model_dtype, x0.device, guidance
    )
    state.x.copy_(x0)
    state.scalars.copy_(scalars)
    state.step_noise.copy_(step_noise)
    state.cfg_scale.fill_(cfg_scale)
    return state


def run_state(state: SamplerState) -> torch.Tensor:
    """All steps, eagerly; returns the final latents (state.x)."""
    with torch.no_grad():
        for i in range(state.steps):
            sampler_step(state, i)
    return state.x
