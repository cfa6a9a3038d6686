"""Guidance on the denoised estimates of the [cond; uncond] batch (reference-spec §3, §3b).

Both kinds work in x0 space, as stable-audio-tools 0.0.20 does:
    diff = D_c − D_u, optionally clipped to a per-sample L2 norm (cfg_norm_threshold);
    cfg:  D = D_c + (s − 1)·diff                      (classifier-free guidance)
    apg:  D = D_c + (s − 1)·(a·diff⊥ + (1 − a)·diff)  (adaptive projected guidance)
where diff⊥ is diff minus its projection on D_c, per sample over channels × frames, in float64.
apg_scale a = 0 is exactly cfg. Every operation is a device tensor op: no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

GuidanceKind = Literal["cfg", "apg"]
GUIDANCE_KINDS: tuple[GuidanceKind, ...] = ("cfg", "apg")
# stable-audio-tools 0.0.20's generate_diffusion_cond defaults.
DEFAULT_APG_SCALE = 1.0
DEFAULT_CFG_NORM_THRESHOLD = 0.0


def dit_rows(batch: int, uses_cfg: bool) -> int:
    """Rows of each DiT call: the batch's clips, doubled by CFG into [cond; uncond]."""
    return batch * (2 if uses_cfg else 1)


@dataclass(frozen=True)
class Guidance:
    kind: GuidanceKind = "cfg"
    apg_scale: float = DEFAULT_APG_SCALE
    norm_threshold: float = DEFAULT_CFG_NORM_THRESHOLD

    @property
    def projection_weight(self) -> float:
        """The weight of the orthogonal part: 0 for cfg."""
        return self.apg_scale if self.kind == "apg" else 0.0


def split_along(v: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v's parts parallel and orthogonal to `direction`, per sample over (C, T), in float64."""
    v64, unit = v.double(), F.normalize(direction.double(), dim=[-1, -2])
    parallel = (v64 * unit).sum(dim=[-1, -2], keepdim=True) * unit
    return parallel.to(v.dtype), (v64 - parallel).to(v.dtype)


def guide(
    denoised_cond: torch.Tensor, denoised_uncond: torch.Tensor, scale: torch.Tensor, guidance: Guidance
) -> torch.Tensor:
    """The guided denoised estimate from the two halves' estimates; `scale` is a 0-d tensor, or
    (B, 1, 1) with each row's own scale (a batch of requests)."""
    diff = denoised_cond - denoised_uncond
    if guidance.norm_threshold > 0:
        norm = diff.norm(p=2, dim=[-1, -2], keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), guidance.norm_threshold / norm)
    weight = guidance.projection_weight
    if weight == 0.0:
        cfg_diff = diff
    else:
        orthogonal = split_along(diff, denoised_cond)[1]
        cfg_diff = orthogonal if weight == 1.0 else weight * orthogonal + (1 - weight) * diff
    return denoised_cond + (scale - 1) * cfg_diff


CFG = Guidance()
