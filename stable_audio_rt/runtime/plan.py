"""A request planned into static buffers: everything the sampling loop reads, computed up front.

The step function (`sampler.py`) only reads these tensors and writes `x` and the denoised ring
in place, so on a GPU the whole loop can be captured as one CUDA graph; on the CPU it runs
eagerly. Sampler state stays float32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stable_audio_rt.runtime.components import StepModel
from stable_audio_rt.runtime.guidance import CFG, Guidance

# D_i, D_{i−1}, D_{i−2}: the multistep history dpmpp-3m-sde needs.
HISTORY = 3


@dataclass
class InpaintPlan:
    """RePaint: after each step the kept region is reset to the reference re-noised to σ_{i+1}."""

    keep: torch.Tensor  # (1 or B, 1, T) bool, True = keep the reference
    reference: torch.Tensor  # (B, C, T) reference latents
    renoise: torch.Tensor  # (N, B, C, T) fresh noise per step


@dataclass
class RequestPlan:
    x: torch.Tensor  # (B, C, T) sampler state, float32
    model_input: torch.Tensor  # (R, C, T) DiT input in the model dtype; R = 2B with CFG, else B
    denoised: torch.Tensor  # (HISTORY, B, C, T) ring of denoised estimates, float32
    scalars: torch.Tensor  # (N, len(Col)) per-step scalars, float32
    denoiser: StepModel  # the DiT bound to this request's conditioning and σ's
    step_noise: torch.Tensor  # (N, B, C, T)
    cfg_scale: torch.Tensor  # 0-d float32
    uses_cfg: bool
    guidance: Guidance = CFG
    inpaint: InpaintPlan | None = None

    @property
    def steps(self) -> int:
        return self.scalars.shape[0]

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor the loop touches (for checks that nothing is reallocated)."""
        tensors = [self.x, self.model_input, self.denoised, self.scalars, self.step_noise, self.cfg_scale]
        tensors += self.denoiser.buffers()
        if self.inpaint is not None:
            tensors += [self.inpaint.keep, self.inpaint.reference, self.inpaint.renoise]
        return tensors


def build_plan(
    denoiser: StepModel,
    x0: torch.Tensor,
    scalars: torch.Tensor,
    step_noise: torch.Tensor,
    cfg_scale: float,
    uses_cfg: bool,
    model_dtype: torch.dtype,
    guidance: Guidance = CFG,
    inpaint: InpaintPlan | None = None,
) -> RequestPlan:
    """Allocate and fill the buffers of one request. `x0` is the initial state (B, C, T) at σ_0
    on the run's device; the DiT sees 2B rows [cond; uncond] with CFG, else B."""
    device = x0.device
    rows = x0.shape[0] * (2 if uses_cfg else 1)
    return RequestPlan(
        x=x0.to(torch.float32).clone(),
        model_input=torch.zeros((rows, *x0.shape[1:]), device=device, dtype=model_dtype),
        denoised=torch.zeros((HISTORY, *x0.shape), device=device),
        scalars=scalars.to(device, torch.float32),
        denoiser=denoiser,
        step_noise=step_noise.to(device, torch.float32),
        cfg_scale=torch.tensor(cfg_scale, device=device, dtype=torch.float32),
        uses_cfg=uses_cfg,
        guidance=guidance,
        inpaint=inpaint,
    )
