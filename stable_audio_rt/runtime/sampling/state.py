"""The sampler's static buffers: its state and everything the sampling loop reads.

The step function (`step.py`) only reads the tables and writes `x` and the denoised ring in
place, so the loop is part of the region a CUDA graph captures (`region.py`); on the CPU it runs
eagerly. Sampler state stays float32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stable_audio_rt.runtime.backends.protocols import StepModel
from stable_audio_rt.runtime.sampling.guidance import CFG, Guidance, dit_rows
from stable_audio_rt.runtime.sampling.table import Col

# D_i, D_{i−1}, D_{i−2}: the multistep history dpmpp-3m-sde needs.
HISTORY = 3


@dataclass
class RePaintState:
    """RePaint: after each step the kept region is reset to the reference re-noised to σ_{i+1}."""

    keep: torch.Tensor  # (1 or B, 1, T) bool, True = keep the reference
    reference: torch.Tensor  # (B, C, T) reference latents
    renoise: torch.Tensor  # (N, B, C, T) fresh noise per step


@dataclass
class SamplerState:
    x: torch.Tensor  # (B, C, T) sampler state, float32
    model_input: torch.Tensor  # (R, C, T) DiT input in the model dtype; R = 2B with CFG, else B
    denoised: torch.Tensor  # (HISTORY, B, C, T) ring of denoised estimates, float32
    scalars: torch.Tensor  # (N, len(Col)) per-step scalars, float32
    denoiser: StepModel  # the DiT bound to this request's conditioning and σ's
    step_noise: torch.Tensor  # (N, B, C, T)
    cfg_scale: torch.Tensor  # (B, 1, 1) float32: each row's own scale (rows of a batch may differ)
    uses_cfg: bool
    guidance: Guidance = CFG
    inpaint: RePaintState | None = None

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


def allocate_state(
    denoiser: StepModel,
    shape: tuple[int, int, int],
    steps: int,
    uses_cfg: bool,
    model_dtype: torch.dtype,
    device: torch.device,
    guidance: Guidance = CFG,
    inpaint: bool = False,
) -> SamplerState:
    """Empty buffers for N steps on a (B, C, T) state; the DiT sees 2B rows [cond; uncond] with
    CFG, else B."""
    batch, channels, frames = shape
    rows = dit_rows(batch, uses_cfg)
    f32 = dict(device=device, dtype=torch.float32)
    return SamplerState(
        x=torch.zeros(shape, **f32),
        model_input=torch.zeros((rows, channels, frames), device=device, dtype=model_dtype),
        denoised=torch.zeros((HISTORY, *shape), **f32),
        scalars=torch.zeros((steps, len(Col)), **f32),
        denoiser=denoiser,
        step_noise=torch.zeros((steps, *shape), **f32),
        cfg_scale=torch.zeros((batch, 1, 1), **f32),
        uses_cfg=uses_cfg,
        guidance=guidance,
        inpaint=RePaintState(
            keep=torch.zeros((1, 1, frames), device=device, dtype=torch.bool),
            reference=torch.zeros(shape, **f32),
            renoise=torch.zeros((steps, *shape), **f32),
        )
        if inpaint
        else None,
    )
