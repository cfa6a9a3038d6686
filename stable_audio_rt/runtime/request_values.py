"""A request's values as the checks and the sampler expect them, or a refusal naming the field.

Python callers pass numpy and torch scalars, strings from config files, NaN from a failed
computation: each number becomes a plain int or a finite float here (numpy's and torch's whole
numbers too, a bool or 2.0 never as a count), and reference audio becomes float samples in
[−1, 1] as soundfile reads a file (integer PCM scaled, not taken as amplitudes in the thousands).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from stable_audio_rt.errors import RequestError

if TYPE_CHECKING:
    from stable_audio_rt.runtime.requests import GenerationRequest

# The request's counts and its real numbers (None is taken where it is the field's default).
WHOLE_FIELDS = ("steps", "seed", "num_outputs", "frames", "sample_size", "vae_overlap")
REAL_FIELDS = (
    "seconds_total",
    "seconds_start",
    "cfg_scale",
    "init_noise_level",
    "sigma_min",
    "sigma_max",
    "apg_scale",
    "cfg_norm_threshold",
)
# The sampler's tables hold the request's numbers in float32: a larger one overflows there.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Integer PCM as soundfile reads it: signed samples over 2^(bits−1); unsigned 8-bit (WAV's)
# centred on 128 first.
PCM_DTYPES = (np.int16, np.int32, np.uint8)


def _refuse(name: str, value: object, kind: str) -> RequestError:
    return RequestError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")


def whole_number(value: object, name: str) -> int:
    """An int from a Python, numpy or torch whole number; not a bool, float or string."""
    if isinstance(value, (bool, np.bool_, float, str, bytes)):
        raise _refuse(name, value, "a whole number")
    try:
        return operator.index(value)
    except (TypeError, ValueError, RuntimeError):
        raise _refuse(name, value, "a whole number") from None


def real_number(value: object, name: str) -> float:
    """A finite float from a Python, numpy or torch number; not a bool or string."""
    if isinstance(value, (bool, np.bool_, str, bytes, complex, np.complexfloating)):
        raise _refuse(name, value, "a number")
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise _refuse(name, value, "a number") from None
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise _refuse(name, value, f"a finite number within ±{FLOAT32_MAX:.1e}")
    return number


def prompts_of(prompt: str | Sequence[str]) -> tuple[str, ...]:
    """The API's `prompt` (one string, or several for a batch) as the request's tuple."""
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, Sequence) and all(isinstance(p, str) for p in prompt):
        return tuple(prompt)
    raise RequestError(f"the prompt must be a string or a list of strings, got {prompt!r}")


def with_plain_values(request: GenerationRequest) -> GenerationRequest:
    """`request` with every number a plain int or finite float and the strings checked."""
    values: dict[str, object] = {"prompts": prompts_of(request.prompts)}  # one string is one prompt
    left_to_defaults = {field.name for field in dataclasses.fields(request) if field.default is None}
    for names, plain in ((WHOLE_FIELDS, whole_number), (REAL_FIELDS, real_number)):
        for name in names:
            value = getattr(request, name)
            values[name] = None if value is None and name in left_to_defaults else plain(value, name)
    if not (request.vae_chunk is None or isinstance(request.vae_chunk, str)):  # a str: "auto" or refused
        values["vae_chunk"] = whole_number(request.vae_chunk, "vae_chunk")
    negative = request.negative_prompt
    if negative is not None and not isinstance(negative, str):
        raise RequestError(
            "negative_prompt must be one string (it applies to every prompt of the request), "
            f"got {negative!r}"
        )
    return dataclasses.replace(request, **values)


def float_samples(samples: np.ndarray | torch.Tensor | Sequence[float], what: str) -> np.ndarray:
    """Reference audio given as an array → float32 samples, integer PCM scaled to [−1, 1]."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu()
        samples = samples.float() if samples.is_floating_point() else samples
    array = np.asarray(samples)
    if array.dtype in PCM_DTYPES:
        info = np.iinfo(array.dtype)
        unsigned = info.min == 0
        full_scale = info.max // 2 + 1 if unsigned else -info.min  # 128, 32768, 2**31
        centre = full_scale if unsigned else 0
        return ((array.astype(np.float64) - centre) / full_scale).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise RequestError(
            f"{what}'s samples are {array.dtype}: give floats in [-1, 1], or int16, int32 or uint8 PCM"
        )
    return array.astype(np.float32)
