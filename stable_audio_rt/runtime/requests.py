"""A generation request, and its checks: every bad input is refused here, before any model work.

`resolve_request` turns a request into concrete numbers (seed, clip length, window, reference
audio at the model's rate, the keep mask) using only the model's config, so the CLI can run it
before loading weights.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from stable_audio_rt.errors import ConfigError, RequestError
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.runtime.audio_io import length_at, read_audio, sample_at, to_model_audio
from stable_audio_rt.runtime.request_values import float_samples, whole_number, with_plain_values
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import (
    DEFAULT_SIGMA_MAX,
    DEFAULT_SIGMA_MIN,
)
from stable_audio_rt.runtime.sampling.guidance import (
    DEFAULT_APG_SCALE,
    DEFAULT_CFG_NORM_THRESHOLD,
    GUIDANCE_KINDS,
    Guidance,
    GuidanceKind,
)
from stable_audio_rt.runtime.sampling.noise import NOISE_KINDS, NoiseKind
from stable_audio_rt.runtime.sampling.objectives import sampler_for
from stable_audio_rt.runtime.vae_decode import (
    WASTE_LIMIT,
    check_chunking,
    decode_waste,
    overlap_or_field,
    thrifty_chunk,
)

Window = Literal["full", "trim"]
WINDOWS: tuple[Window, ...] = ("full", "trim")
# A file path, or (samples, sample_rate) with samples (channels, n) or (n,).
AudioInput = str | Path | tuple[np.ndarray | torch.Tensor, int]
# stable-audio-tools draws seeds in [0, 2**32 − 1).
SEED_HIGH = 2**32 - 1
# The seeds a request may give: [0, 2**63), what torch.Generator.manual_seed takes as given.
SEED_LIMIT = 2**63
# The loudest reference sample taken: 60 dB over full scale. A float file may pass ±1 a little;
# far past it the samples are not audio at that scale, and near 1e30 the encoder overflows.
REFERENCE_PEAK_LIMIT = 1000.0
# The most sampler steps a request may take: a hundred times SAO 1.0's default (reference-spec
# §3); each step's table row and noise are allocated with the request.
MAX_STEPS = 10_000
# The largest CFG scale: forty times the range of stable-audio-tools' web UI (0–25). Far past it
# guidance only amplifies noise until the audio overflows, which 1e30 did after the whole run.
MAX_CFG_SCALE = 1000.0


@dataclass(frozen=True)
class GenerationRequest:
    prompts: tuple[str, ...]
    negative_prompt: str | None = None
    seconds_total: float | None = None  # default: the reference audio's length, else the maximum
    seconds_start: float = 0.0
    # None: the model's default (SAO 1.0: 100 steps, CFG 7; SAO Small: 8 steps, no CFG).
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    num_outputs: int = 1
    init_audio: AudioInput | None = None
    init_noise_level: float | None = None  # audio-to-audio only; None: the sampler's default_init_noise_level
    inpaint_audio: AudioInput | None = None
    inpaint_mask: np.ndarray | torch.Tensor | None = None  # at the model rate, 1 = keep
    window: Window = "full"
    # An explicit window instead: latent frames, or samples as stable-audio-tools' sample_size.
    frames: int | None = None
    sample_size: int | None = None
    noise: NoiseKind = "gaussian"
    sigma_min: float = DEFAULT_SIGMA_MIN
    sigma_max: float = DEFAULT_SIGMA_MAX
    guidance: GuidanceKind = "cfg"
    apg_scale: float | None = None  # guidance "apg" only; None: DEFAULT_APG_SCALE
    cfg_norm_threshold: float = DEFAULT_CFG_NORM_THRESHOLD
    # VAE decode in chunks of this many latent frames (same audio, bounded memory): an int,
    # "auto" (sized from free GPU memory; one call on the CPU) or None (one call).
    vae_chunk: int | Literal["auto"] | None = "auto"
    vae_overlap: int | None = None  # default: the decoder's receptive field

    @property
    def guidance_settings(self) -> Guidance:
        apg_scale = DEFAULT_APG_SCALE if self.apg_scale is None else self.apg_scale
        return Guidance(self.guidance, apg_scale, self.cfg_norm_threshold)

    @property
    def uses_cfg(self) -> bool:
        """Whether the DiT also runs the unconditional rows (the scale is set: model defaults)."""
        return self.cfg_scale != 1.0


@dataclass(frozen=True)
class ResolvedRequest:
    request: GenerationRequest
    config: StableAudioConfig  # the model it was checked against: it runs on that model only
    seed: int
    batch: int
    seconds_total: float
    frames: int  # latent frames of the denoised window
    start_level: float  # the schedule's start: σmax (v) or first time t (rf); audio-to-audio: its level
    init_audio: torch.Tensor | None  # (audio channels, frames · ratio) at the model rate
    inpaint_audio: torch.Tensor | None  # (audio channels, frames · ratio)
    inpaint_keep: torch.Tensor | None  # (frames,) bool: latent frames kept from the reference
    # What it asks that runs, but likely not as meant (a negative prompt at CFG 1): each said
    # once as a UserWarning, and given to sa-serve's clients.
    warnings: tuple[str, ...] = ()

    def clip(self, sample_rate: int) -> slice:
        return clip_samples(self.request.seconds_start, self.seconds_total, sample_rate)


def clip_samples(seconds_start: float, seconds_total: float, sample_rate: int) -> slice:
    """The output's samples within the window: [start, total), each bound at its nearest sample
    (`sample_at`; diffusers truncates, so its 0.7 s clip is one sample short)."""
    return slice(sample_at(seconds_start, sample_rate), sample_at(seconds_total, sample_rate))


def _audio(value: AudioInput, what: str, config: StableAudioConfig) -> tuple[np.ndarray, int, int]:
    """Reference audio → (channels, samples) float32 (a file read only as far as the model's
    window reaches), its rate, and its whole length in samples."""
    if isinstance(value, (str, Path)):
        samples, rate, length = read_audio(value, (config.sample_size, config.sample_rate))
        what = f"{what} {value}"
    elif isinstance(value, tuple) and len(value) == 2:
        if np.ndim(value[0]) == 0 and np.ndim(value[1]) > 0:
            raise RequestError(
                f"{what} is (sample_rate, samples), stable-audio-tools' order: give (samples, sample_rate)"
            )
        rate = value[1]
        if isinstance(rate, torch.Tensor) and rate.ndim == 0:
            rate = rate.item()
        if isinstance(rate, (float, np.floating)) and float(rate).is_integer():  # 44100.0 is a rate
            rate = int(rate)
        samples, rate = float_samples(value[0], what), whole_number(rate, f"{what}'s sample rate")
        length = samples.shape[-1]
    else:
        raise RequestError(
            f"{what} must be a file path or (samples, sample_rate), got {type(value).__name__}"
        )
    samples = samples[None] if samples.ndim == 1 else samples
    if samples.ndim != 2 or samples.shape[-1] == 0:
        raise RequestError(f"{what} must be (channels, samples) or (samples,) with samples > 0")
    # More channels than samples is an array given as (samples, channels); a file's layout is
    # soundfile's, never transposed. Other channel counts are taken as the model takes them.
    array = not isinstance(value, (str, Path))
    if array and samples.shape[0] > max(2, samples.shape[1]):
        raise RequestError(
            f"{what} has shape {samples.shape}, which looks like (samples, channels): give its transpose, "
            "(channels, samples)"
        )
    if rate <= 0:
        raise RequestError(f"{what}'s sample rate must be a positive number of Hz, got {rate}")
    if not np.isfinite(samples).all():
        raise RequestError(f"{what} has NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > REFERENCE_PEAK_LIMIT:
        raise RequestError(
            f"{what}'s peak is {peak:.6g}: audio samples lie in [-1, 1] (float files may go a little "
            f"beyond), and past ±{REFERENCE_PEAK_LIMIT:g} the model's numbers overflow; scale it to "
            "[-1, 1] (integer PCM given as floats?)"
        )
    return samples, rate, length


def keep_mask_to_latent(keep: torch.Tensor, ratio: int) -> torch.Tensor:
    """(frames · ratio,) audio-rate keep mask → (frames,): a latent frame is kept only if every
    one of its samples is, so any frame touching a regenerated sample is regenerated."""
    return keep.view(-1, ratio).all(dim=1)


def with_model_defaults(request: GenerationRequest, config: StableAudioConfig) -> GenerationRequest:
    """Fill the steps and CFG scale the request left to the model's sampler, and an
    audio-to-audio request's starting noise level."""
    sampler = sampler_for(config)
    steps = request.steps if request.steps is not None else sampler.default_steps
    cfg = request.cfg_scale if request.cfg_scale is not None else sampler.default_cfg_scale
    level = request.init_noise_level
    if level is None and request.init_audio is not None:
        level = sampler.default_init_noise_level
    return dataclasses.replace(request, steps=steps, cfg_scale=cfg, init_noise_level=level)


def _check_model_support(request: GenerationRequest, config: StableAudioConfig) -> None:
    """What this model's conditioning and sampler cannot do, refused by name."""
    numbers = {n.id for n in config.conditioning.numbers}
    if request.seconds_start and "seconds_start" not in numbers:
        raise RequestError("this model is not conditioned on a start time: leave seconds_start at 0")
    sampler_for(config).check(request)


def _check_ranges(request: GenerationRequest, max_seconds: float) -> None:
    if not request.prompts or any(not isinstance(p, str) for p in request.prompts):
        raise RequestError("give at least one text prompt")
    if not 1 <= request.steps <= MAX_STEPS:
        raise RequestError(f"steps must be in [1, {MAX_STEPS}], got {request.steps}")
    if not 0 <= request.cfg_scale <= MAX_CFG_SCALE:
        raise RequestError(
            f"cfg_scale must be in [0, {MAX_CFG_SCALE:g}] (stable-audio-tools' web UI offers 0–25; far past "
            f"that the audio overflows), got {request.cfg_scale:g}"
        )
    if request.num_outputs < 1:
        raise RequestError(f"num_outputs must be at least 1, got {request.num_outputs}")
    if request.init_noise_level is not None and request.init_audio is None:
        raise RequestError(
            "init_noise_level is the starting noise of audio-to-audio: give init_audio too, or leave it out"
        )
    if request.seed is not None and not 0 <= request.seed < SEED_LIMIT:
        raise RequestError(f"seed must be in [0, 2**63), got {request.seed}")
    if request.window not in WINDOWS:
        raise RequestError(f"window must be one of {WINDOWS}, got {request.window!r}")
    if request.noise not in NOISE_KINDS:
        raise RequestError(f"noise must be one of {NOISE_KINDS}, got {request.noise!r}")
    if request.guidance not in GUIDANCE_KINDS:
        raise RequestError(f"guidance must be one of {GUIDANCE_KINDS}, got {request.guidance!r}")
    if request.apg_scale is not None and request.guidance != "apg":
        raise RequestError(
            f"apg_scale applies to guidance='apg'; with guidance={request.guidance!r} it would do nothing: "
            "give guidance='apg' too, or leave apg_scale out"
        )
    if request.apg_scale is not None and not 0 <= request.apg_scale <= 1:
        raise RequestError(
            f"apg_scale must be in [0, 1] (0 = plain CFG, 1 = full APG), got {request.apg_scale}"
        )
    if request.cfg_norm_threshold < 0:
        raise RequestError(f"cfg_norm_threshold must be ≥ 0 (0 = off), got {request.cfg_norm_threshold}")
    explicit = [name for name in ("frames", "sample_size") if getattr(request, name) is not None]
    if len(explicit) > 1 or (explicit and request.window != "full"):
        given = [*(["window"] if request.window != "full" else []), *explicit]
        named = " and ".join(f"{name}={getattr(request, name)!r}" for name in given)
        raise RequestError(f"give one window, not several: got {named}")
    if request.seconds_start < 0:
        raise RequestError(f"seconds_start must be ≥ 0, got {request.seconds_start}")
    total = request.seconds_total
    if total is not None and not 0 < total <= max_seconds:
        raise RequestError(f"seconds_total must be in (0, {max_seconds:.2f}] for this model, got {total}")
    if total is not None and request.seconds_start >= total:
        raise RequestError(
            f"seconds_start ({request.seconds_start}) must be less than seconds_total ({total})"
        )
    if request.init_audio is not None and request.inpaint_audio is not None:
        raise RequestError("give init_audio (audio-to-audio) or inpaint_audio (inpainting), not both")
    if (request.inpaint_audio is None) != (request.inpaint_mask is None):
        raise RequestError("inpainting needs both inpaint_audio and inpaint_mask")


def _resolve_mask(
    mask: np.ndarray | torch.Tensor,
    length: int,
    window_samples: int,
    model_samples: int,
    rate: int,
    what: str,
) -> torch.Tensor:
    """The keep mask over the request's window: one value per sample of the reference at the
    model rate, or of as much of it as the model's window covers (what sa-run and sa-serve
    build); refused where it would lose what it marks past the request's window. Checked as
    given, with no copy of a long reference's mask."""
    keep = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    covered = min(length, model_samples)
    if keep.ndim != 1 or keep.shape[0] not in (length, covered):
        or_covered = f" (or the first {covered})" if covered < length else ""
        raise RequestError(
            f"inpaint_mask must be 1-D with {length} values{or_covered}, one per sample of {what} at the "
            f"model's rate ({rate} Hz), got shape {tuple(keep.shape)}"
        )
    if not ((keep == 0) | (keep == 1)).all():
        raise RequestError("inpaint_mask values must be 0 (regenerate) or 1 (keep)")
    past = keep[window_samples:]
    if past.size and not (past == past[0]).all():  # a range's edge lies past the window
        raise RequestError(
            f"inpaint_mask marks parts of {what} past the window this request generates "
            f"(0–{window_samples / rate:.2f} s), which would be dropped: keep the ranges within it, "
            "or ask for a longer clip"
        )
    out = torch.zeros(window_samples, dtype=torch.bool)
    n = min(keep.shape[0], window_samples)
    out[:n] = torch.from_numpy(keep[:n] != 0)
    return out


def _check_vae_chunking(request: GenerationRequest, config: StableAudioConfig) -> None:
    chunk, overlap = request.vae_chunk, request.vae_overlap
    if chunk is None or chunk == "auto":
        if overlap is None:
            return
        chunk = 2 * overlap + 1  # the overlap alone: the smallest chunk it allows
    elif not isinstance(chunk, int):
        raise RequestError(f"vae_chunk must be a number of latent frames, 'auto' or None, got {chunk!r}")
    overlap = overlap_or_field(config.vae, overlap)
    try:
        check_chunking(config.vae, chunk, overlap, names=("vae_chunk", "vae_overlap"))
    except ConfigError as e:
        raise RequestError(str(e)) from e


def _unused_settings(request: GenerationRequest) -> list[str]:
    """What a CFG scale of 1 leaves unused: no unconditional pass runs."""
    unused = [
        what
        for what, given in (
            ("the negative prompt", request.negative_prompt is not None),
            ("guidance='apg'", request.guidance == "apg"),
        )
        if given and not request.uses_cfg
    ]
    if not unused:
        return []
    return [
        f"{' and '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect at a CFG scale "
        "of 1 (no unconditional pass runs); give a CFG scale above 1 to use "
        f"{'it' if len(unused) == 1 else 'them'}"
    ]


def _wasteful_chunks(request: GenerationRequest, frames: int, config: StableAudioConfig) -> list[str]:
    """A chunk barely longer than its overlaps decodes the window many times over (vae_chunk=21
    with the overlap of 10: 21 frames decoded per frame kept)."""
    chunk = request.vae_chunk
    if not isinstance(chunk, int) or chunk >= frames:
        return []
    overlap = overlap_or_field(config.vae, request.vae_overlap)
    waste = decode_waste(frames, chunk, overlap)
    if waste <= WASTE_LIMIT:
        return []
    thrifty = min(thrifty_chunk(overlap), frames)
    return [
        f"vae_chunk={chunk} with overlaps of {overlap} frames decodes {waste:.1f}× the {frames} frames "
        f"it keeps ({chunk - 2 * overlap} new a chunk); a chunk of {thrifty} or more decodes at most "
        f"{WASTE_LIMIT}×"
    ]


def window_frames(request: GenerationRequest, seconds_total: float, config: StableAudioConfig) -> int:
    """The latent frames the request denoises: its explicit window, else the model's (full) or
    the clip's (trim)."""
    ratio = config.vae.downsampling_ratio
    if request.sample_size is not None:
        frames = request.sample_size // ratio  # stable-audio-tools rounds down
        if frames < 1:
            raise RequestError(f"sample_size must be at least {ratio} samples (one latent frame)")
        return frames
    if request.frames is not None:
        if request.frames < 1:
            raise RequestError(f"frames must be at least 1, got {request.frames}")
        return request.frames
    if request.window == "full":
        return config.latent_frames
    return math.ceil(seconds_total * config.sample_rate / ratio)


def resolve_request_as(
    request: GenerationRequest, config: StableAudioConfig, names: Mapping[str, str]
) -> ResolvedRequest:
    """`resolve_request`, its refusals and warnings naming the request's fields as the caller's
    interface names them (`names`: GenerationRequest field → sa-run option or sa-serve body field)."""
    try:
        resolved = _resolved(request, config)
    except RequestError as e:
        raise type(e)(worded_as(str(e), names)) from e  # an AudioFileError stays one
    worded = tuple(worded_as(text, names) for text in resolved.warnings)
    resolved = dataclasses.replace(resolved, warnings=worded)
    _warn(resolved.warnings)
    return resolved


def worded_as(text: str, names: Mapping[str, str]) -> str:
    """A refusal's or warning's `text` with the request's fields named as `names` names them: a
    field's name standing alone, not part of a path or file name ("/clips/init_audio.wav"); one
    that is also a word ("steps") only as a refusal's subject, not in its prose."""
    never = "(?!)"  # an empty alternative would match everywhere
    named = "|".join(map(re.escape, (n for n in names if "_" in n))) or never
    words = "|".join(map(re.escape, (n for n in names if "_" not in n))) or never
    field = re.compile(rf"(?<![\w./-])({named})(?![\w/-]|\.\w)|(?<![\w./-])({words})(?= must| \(|=)")
    return field.sub(lambda found: names[found.group(1) or found.group(2)], text)


def resolve_request(
    request: GenerationRequest, config: StableAudioConfig, *, stacklevel: int = 1
) -> ResolvedRequest:
    """Check `request` against the model's limits and make every quantity concrete; what it asks
    that runs but likely not as meant is warned of (UserWarning, pointing `stacklevel` frames up
    from this call's caller, as `warnings.warn` counts) and kept in its `warnings`."""
    resolved = _resolved(request, config)
    _warn(resolved.warnings, stacklevel)
    return resolved


def _warn(texts: Sequence[str], stacklevel: int = 1) -> None:
    for text in texts:
        # Past this function and resolve_request(_as): their caller's line, or further up.
        warnings.warn(text, UserWarning, stacklevel=stacklevel + 2)


def _resolved(request: GenerationRequest, config: StableAudioConfig) -> ResolvedRequest:
    rate, ratio = config.sample_rate, config.vae.downsampling_ratio
    max_seconds = config.max_seconds
    request = with_model_defaults(with_plain_values(request), config)
    _check_ranges(request, max_seconds)
    _check_model_support(request, config)
    _check_vae_chunking(request, config)

    reference, reference_seconds = None, None
    source = request.init_audio if request.init_audio is not None else request.inpaint_audio
    if source is not None:
        what = "init_audio" if request.init_audio is not None else "inpaint_audio"
        samples, in_rate, in_length = _audio(source, what, config)
        reference = (samples, in_rate)
        reference_seconds = in_length / in_rate

    total, total_from = request.seconds_total, ""
    if total is None:  # the reference's length, or the model's window: said with a refusal
        total = min(reference_seconds, max_seconds) if reference_seconds else max_seconds
        total_from = f", {what}'s length" if total == reference_seconds else ", the model's window"
        if request.seconds_start >= total:
            raise RequestError(
                f"seconds_start ({request.seconds_start}) must be less than the clip ({total:.2f} s)"
            )
    clip = clip_samples(request.seconds_start, total, rate)
    if clip.stop <= clip.start:
        raise RequestError(
            f"the clip from seconds_start ({request.seconds_start}) to seconds_total ({total}) holds no "
            f"sample at {rate} Hz: make it at least 1/{rate} s long"
        )
    frames = window_frames(request, total, config)
    if frames > config.latent_frames:
        raise RequestError(
            f"a window of {frames} latent frames is longer than the model's ({config.latent_frames}, "
            f"{max_seconds:.2f} s): no clip is longer than that, so more frames only add work"
        )
    window_samples = frames * ratio
    if total * rate > window_samples:
        raise RequestError(
            f"the window of {frames} latent frames ({window_samples / rate:.2f} s) is shorter than the "
            f"clip ({total:.2f} s{total_from}): give more frames or fewer seconds (seconds_total)"
        )

    init_audio = inpaint_audio = inpaint_keep = None
    if reference is not None:
        audio = to_model_audio(*reference, rate, window_samples, config.vae.audio_channels)
        if request.init_audio is not None:
            init_audio = audio
        else:
            inpaint_audio = audio
            length = length_at(in_length, in_rate, rate)
            kept = _resolve_mask(request.inpaint_mask, length, window_samples, config.sample_size, rate, what)
            inpaint_keep = keep_mask_to_latent(kept, ratio)
            if not kept.any():  # a mistake, not a request: the reference would be ignored
                raise RequestError(
                    f"inpaint_mask keeps nothing of {what}: it would be ignored, the whole clip made from "
                    "the prompt alone; keep part of it, or leave the inpainting reference out"
                )
            if not inpaint_keep.any():  # a mistake, not a request: it would keep nothing
                raise RequestError(
                    f"inpaint_mask keeps no whole latent frame ({ratio} samples, "
                    f"{1000 * ratio / rate:.0f} ms, each aligned to a multiple of it), so nothing of "
                    f"{what} would be kept: widen the kept parts"
                )

    sampler = sampler_for(config)
    return ResolvedRequest(
        request=request,
        config=config,
        seed=request.seed if request.seed is not None else secrets.randbelow(SEED_HIGH),
        batch=len(request.prompts) * request.num_outputs,
        seconds_total=total,
        frames=frames,
        start_level=sampler.start_level(request),
        init_audio=init_audio,
        inpaint_audio=inpaint_audio,
        inpaint_keep=inpaint_keep,
        # Said once the request stands: not before a refusal of something else.
        warnings=(
            *sampler.warnings(request),
            *_unused_settings(request),
            *_wasteful_chunks(request, frames, config),
        ),
    )
