"""Inpainting ranges → the keep mask `GenerationRequest.inpaint_mask` takes: sa-run's
--keep-range/--inpaint-range and sa-serve's keep_ranges/inpaint_ranges, checked by one code
path, each caller naming its own options in the messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stable_audio_rt.errors import RequestError

# (start, end) in seconds of the reference audio.
Range = tuple[float, float]


@dataclass(frozen=True)
class RangeNames:
    """How a caller's user spells the inpainting inputs."""

    audio: str
    keep: str
    inpaint: str


def inpaint_mask(
    reference: tuple[int, int] | None,
    keep_ranges: Sequence[Range] | None,
    inpaint_ranges: Sequence[Range] | None,
    model_rate: int,
    names: RangeNames,
    source: str,
) -> np.ndarray | None:
    """A keep mask (1 = keep) at `model_rate` over the reference audio, or None without one.

    `reference` is the reference's (sample count, sample rate), None when none was given;
    exactly one of the range lists must then be non-empty. `source` names the reference in
    messages (its path, or its upload field)."""
    if reference is None:
        if keep_ranges or inpaint_ranges:
            raise RequestError(f"{names.keep}/{names.inpaint} need {names.audio}")
        return None
    if bool(keep_ranges) == bool(inpaint_ranges):
        raise RequestError(f"inpainting needs either {names.keep} or {names.inpaint} (not both)")
    samples, rate = reference
    seconds = samples / rate
    length = round(samples * model_rate / rate)
    keep = bool(keep_ranges)
    mask = np.zeros(length) if keep else np.ones(length)
    for start, end in keep_ranges or inpaint_ranges:
        if not 0 <= start < end <= seconds:
            raise RequestError(f"range {start},{end} is outside {source} (0–{seconds:.2f} s) or empty")
        mask[int(start * model_rate) : int(end * model_rate)] = 1.0 if keep else 0.0
    return mask
