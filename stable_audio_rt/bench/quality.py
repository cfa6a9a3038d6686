"""Quality of a run against the fp32 torch reference on the same seed: no speed without it."""

from __future__ import annotations

import math

import torch


def cosine_distance(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """1 − cos(ours, reference), over the whole tensor, in float64, within its range [0, 2].

    Computed as ‖â − b̂‖² / 2 over the unit vectors: the same quantity without 1 − cos's
    cancellation, so equal tensors give exactly 0 (1 − cos gave ±4e-16, printed as -2.2e-16).
    """
    a, b = ours.double().flatten(), reference.double().flatten()
    a_unit, b_unit = a / a.norm().clamp_min(1e-300), b / b.norm().clamp_min(1e-300)
    return min((a_unit - b_unit).pow(2).sum().item() / 2, 2.0)


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
