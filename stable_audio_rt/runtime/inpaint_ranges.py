"""Inpainting ranges → the keep mask `GenerationRequest.inpaint_mask` takes: sa-run's
--keep-range/--inpaint-range and sa-serve's keep_ranges/inpaint_ranges, checked by one code
path, each caller naming its own options in the messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stable_audio_rt.errors import RequestError
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.runtime.audio_io import length_at, sample_at

# (start, end) in seconds of the reference audio.
Range = tuple[float, float]
# An end this far past the reference's (or the window's) end is taken as its end: the bound in a
# refusal is printed to 10 ms, and "to the end" is written as that printed figure.
END_TOLERANCE_S = 0.005


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
    config: StableAudioConfig,
    names: RangeNames,
    source: str,
) -> np.ndarray | None:
    """A keep mask (True = keep) at the model's rate over the reference audio as far as the
    model's window covers it, or None without one.

    `reference` is the reference's (sample count, sample rate), None when none was given;
    exactly one of the range lists must then be non-empty, each range within the reference and
    the model's window (what lies past it is never generated). `source` names the reference in
    messages (its path, or its upload field)."""
    model_rate, window_seconds = config.sample_rate, config.max_seconds
    if reference is None:
        if keep_ranges or inpaint_ranges:
            raise RequestError(f"{names.keep}/{names.inpaint} need {names.audio}")
        return None
    if keep_ranges and inpaint_ranges:
        raise RequestError(f"give {names.keep} or {names.inpaint}, not both")
    if not keep_ranges and not inpaint_ranges:
        raise RequestError(
            f"inpainting needs either {names.keep} (what of {names.audio} to keep) or {names.inpaint} "
            "(what to regenerate)"
        )
    samples, rate = reference
    seconds = samples / rate
    # As much of the reference as the model's window covers: no range reaches past it.
    length = min(length_at(samples, rate, model_rate), config.sample_size)
    keep = bool(keep_ranges)
    mask = np.zeros(length, dtype=bool) if keep else np.ones(length, dtype=bool)
    # A reference as long as the window may be an upload decoded only that far (sa-serve).
    if seconds < window_seconds:
        usable, where = seconds, f"{source} (0–{seconds:.2f} s)"
    else:
        usable, where = window_seconds, f"the model's window (0–{window_seconds:.2f} s)"
    option = names.keep if keep else names.inpaint
    for start, end in keep_ranges or inpaint_ranges:
        if not 0 <= start < end <= usable + END_TOLERANCE_S:
            raise RequestError(f"{option}: {start},{end} is outside {where} or empty")
        end = min(end, usable)
        mask[sample_at(start, model_rate) : sample_at(end, model_rate)] = keep  # as the clip's bounds
    return mask
