"""A request planned into static buffers: everything the sampling loop reads, computed up front.

The step function (`sampler.py`) only reads these tensors and writes `x` and the denoised ring
in place, so on a GPU the whole loop can be captured as one CUDA graph; on the CPU it runs
eagerly. Sampler state stays float32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stable_audio_rt.models.dit import DiT
from stable_audio_rt.runtime.guidance import CFG, Guidance
from stable_audio_rt.runtime.schedule import sigma_to_t

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
    global_tokens: torch.Tensor  # (N, R, 1, D) prepended DiT token per step
    context_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block, constant over steps
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
        tensors = [self.x, self.model_input, self.denoised, self.scalars, self.global_tokens]
        tensors += [self.step_noise, self.cfg_scale]
        tensors += [t for kv in self.context_kv for t in kv]
        if self.inpaint is not None:
            tensors += [self.inpaint.keep, self.inpaint.reference, self.inpaint.renoise]
        return tensors


def build_plan(
    dit: DiT,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    scalars: torch.Tensor,
    context: torch.Tensor,
    global_cond: torch.Tensor,
    step_noise: torch.Tensor,
    cfg_scale: float,
    guidance: Guidance = CFG,
    inpaint: InpaintPlan | None = None,
) -> RequestPlan:
    """Allocate and fill the buffers of one request.

    `context`/`global_cond` hold R rows: [cond; uncond] (2B) with CFG, else B. `x0` is the
    initial state (B, C, T) at σ_0.
    """
    param = next(dit.parameters())
    device, dtype = param.device, param.dtype
    rows = context.shape[0]
    batch = x0.shape[0]
    uses_cfg = rows == 2 * batch
    if not uses_cfg and rows != batch:
        raise ValueError(f"context has {rows} rows for a batch of {batch}: expected {batch} or {2 * batch}")
    steps = scalars.shape[0]
    with torch.no_grad():
        t = sigma_to_t(sigmas[:-1].double()).float().to(device)
        # (N·R,) time × (N·R, G) global → (N, R, 1, D): the token depends only on σ and the condition.
        tokens = dit.global_token(
            t.repeat_interleave(rows).to(dtype), global_cond.to(device, dtype).repeat(steps, 1)
        )
        global_tokens = tokens.view(steps, rows, 1, -1).contiguous()
        context_kv = [(k.contiguous(), v.contiguous()) for k, v in dit.context_kv(context.to(device, dtype))]
    return RequestPlan(
        x=x0.to(device, torch.float32).clone(),
        model_input=torch.zeros((rows, *x0.shape[1:]), device=device, dtype=dtype),
        denoised=torch.zeros((HISTORY, *x0.shape), device=device),
        scalars=scalars.to(device, torch.float32),
        global_tokens=global_tokens,
        context_kv=context_kv,
        step_noise=step_noise.to(device, torch.float32),
        cfg_scale=torch.tensor(cfg_scale, device=device, dtype=torch.float32),
        uses_cfg=uses_cfg,
        guidance=guidance,
        inpaint=inpaint,
    )
