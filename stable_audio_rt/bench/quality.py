"""Quality of a run against the fp32 torch reference on the same seed: no speed without it."""

from __future__ import annotations

import math

import torch


def cosine_distance(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """1 − cos(ours, reference), over the whole tensor, in float64."""
    a, b = ours.double().flatten(), reference.double().flatten()
    return 1.0 - (a @ b / (a.norm() * b.norm()).clamp_min(1e-300)).item()


def snr_db(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """10·log10(‖reference‖² / ‖ours − reference‖²); inf when they are equal."""
    noise = (ours.double() - reference.double()).pow(2).sum().item()
    signal = reference.double().pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def max_relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours − reference| / max |reference|: the worst element against the tensor's scale
    (element-wise ratios explode wherever the reference crosses zero)."""
    worst = (ours.double() - reference.double()).abs().max().item()
    scale = reference.double().abs().max().item()
    if scale == 0:
        return 0.0 if worst == 0 else math.inf
    return worst / scale
