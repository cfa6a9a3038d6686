"""Chunked, streamable VAE decoding that equals the full decode.

The Oobleck decoder's audio for a latent frame depends only on the frames within its receptive
field (`decoder_receptive_frames`), so windows of `chunk_frames` frames that overlap by at least
twice that field, cut at the middle of each overlap, give exactly the full decode's samples.
Every window has the same shape (the last is anchored at the end), so a fixed-shape backend
decodes any length with one small buffer set; only a clip shorter than one window is decoded
in one call at its own length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise

import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.models.config import OobleckConfig
from stable_audio_rt.models.vae import decoder_receptive_frames

Decoder = Callable[[torch.Tensor], torch.Tensor]
# on_window(done, total): before the first window (0 done) and after each, for progress.
WindowCallback = Callable[[int, int], None]
# Decoder activations per latent frame, in units of (top width × ratio × dtype bytes): a few
# live activations plus Snake's fp32 temporaries. Used only to size `auto` chunks on a GPU.
ACTIVATIONS_PER_FRAME = 8
# Fraction of free GPU memory an `auto` chunk may use.
AUTO_MEMORY_FRACTION = 0.5


@dataclass(frozen=True)
class Window:
    start: int  # first latent frame given to the decoder
    keep_from: int  # first latent frame whose audio is kept
    keep_to: int  # one past the last


# A chunking that decodes more than this many frames per frame kept gets a warning: the overlaps
# would cost more than the chunks save.
WASTE_LIMIT = 2


def plan_windows(frames: int, chunk_frames: int, overlap_frames: int) -> list[Window]:
    """Windows of `chunk_frames` frames covering [0, frames), cut at the middle of each overlap."""
    if frames <= chunk_frames:
        return [Window(0, 0, frames)]
    stride = chunk_frames - 2 * overlap_frames
    starts = list(range(0, frames - chunk_frames, stride)) + [frames - chunk_frames]
    cuts = [(nxt + cur + chunk_frames) // 2 for cur, nxt in pairwise(starts)]
    bounds = [0, *cuts, frames]
    return [Window(s, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


def check_chunking(
    config: OobleckConfig,
    chunk_frames: int,
    overlap_frames: int,
    names: tuple[str, str] = ("chunk_frames", "overlap_frames"),
) -> None:
    """Refuse chunking that would not equal the full decode (`names`: the caller's for the two)."""
    chunk_name, overlap_name = names
    field = decoder_receptive_frames(config)
    if overlap_frames < field:
        raise ConfigError(
            f"{overlap_name}={overlap_frames} is below the decoder's receptive field of {field} latent "
            f"frames (computed from its strides and kernels); chunks would not equal the full decode: "
            f"use {overlap_name} ≥ {field}"
        )
    if chunk_frames <= 2 * overlap_frames:
        raise ConfigError(
            f"{chunk_name}={chunk_frames} must exceed twice the overlap ({2 * overlap_frames}) so that "
            f"each chunk adds new frames; use {chunk_name} ≥ {2 * overlap_frames + 1}, and "
            f"≥ {thrifty_chunk(overlap_frames)} to decode at most {WASTE_LIMIT}× the frames kept"
        )


def decode_waste(frames: int, chunk_frames: int, overlap_frames: int) -> float:
    """Frames the decoder runs per frame of a `frames` window kept, in chunks (`plan_windows`);
    over a long window it nears chunk / (chunk − 2·overlap), each chunk keeping what its
    overlaps do not."""
    return len(plan_windows(frames, chunk_frames, overlap_frames)) * min(chunk_frames, frames) / frames


def thrifty_chunk(overlap_frames: int) -> int:
    """The shortest chunk that decodes at most WASTE_LIMIT times the frames kept, whatever the
    window (at most the long-window limit chunk / (chunk − 2·overlap))."""
    return math.ceil(2 * overlap_frames * WASTE_LIMIT / (WASTE_LIMIT - 1))


def overlap_or_field(config: OobleckConfig, overlap_frames: int | None) -> int:
    """The chunks' overlap: as given, else the decoder's receptive field (the least that keeps
    chunks equal to one call)."""
    return decoder_receptive_frames(config) if overlap_frames is None else overlap_frames


def decode_chunks(
    decode: Decoder,
    latents: torch.Tensor,
    ratio: int,
    chunk_frames: int,
    overlap_frames: int,
) -> Iterator[torch.Tensor]:
    """Audio (B, channels, n) for consecutive stretches of the clip, in order, as decoded."""
    for window in plan_windows(latents.shape[-1], chunk_frames, overlap_frames):
        size = min(chunk_frames, latents.shape[-1])
        audio = decode(latents[..., window.start : window.start + size])
        lo, hi = (window.keep_from - window.start) * ratio, (window.keep_to - window.start) * ratio
        yield audio[..., lo:hi]


def decode_latents(
    decode: Decoder,
    latents: torch.Tensor,
    config: OobleckConfig,
    chunk_frames: int | None = None,
    overlap_frames: int | None = None,
    on_window: WindowCallback | None = None,
) -> torch.Tensor:
    """The full decode, in one call or in chunks (equal within float error); `on_window(done,
    total)` before the first window and after each (one window: one call)."""
    report = on_window if on_window is not None else no_report
    if chunk_frames is None:
        report(0, 1)
        audio = decode(latents)
        report(1, 1)
        return audio
    overlap = overlap_or_field(config, overlap_frames)
    check_chunking(config, chunk_frames, overlap)
    total = len(plan_windows(latents.shape[-1], chunk_frames, overlap))
    report(0, total)
    pieces = []
    for piece in decode_chunks(decode, latents, config.downsampling_ratio, chunk_frames, overlap):
        pieces.append(piece)
        report(len(pieces), total)
    return torch.cat(pieces, -1)


def one_clip_at_a_time(decode: Decoder, on_clip: Callable[[], None] | None = None) -> Decoder:
    """`decode` run on each clip (row) of its input in turn: a clip's audio depends only on its
    own latents, so a batch decodes to the same audio, and the decoder's memory is one clip's
    whatever the batch (the `auto` chunk is sized for one clip; at the full window one fp32 clip
    takes 5.7 GB on the CPU). Measured at no cost: a clip's products are large enough alone.
    `on_clip()` after each clip's call, for progress."""

    def each_clip(latents: torch.Tensor) -> torch.Tensor:
        pieces = []
        for row in range(latents.shape[0]):
            pieces.append(decode(latents[row : row + 1]))
            if on_clip is not None:
                on_clip()
        # One clip: its audio as decoded, without a copy by torch.cat.
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    return each_clip


def no_report(done: int, total: int) -> None:
    """No progress wanted."""


def auto_chunk_frames(config: OobleckConfig, device: torch.device, dtype: torch.dtype) -> int | None:
    """A chunk that fits in half the free GPU memory; None (one call) on the CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    top_width = config.channels
    bytes_per_frame = ACTIVATIONS_PER_FRAME * top_width * config.downsampling_ratio * max(4, dtype.itemsize)
    minimum = 2 * decoder_receptive_frames(config) + 1
    return max(minimum, int(free * AUTO_MEMORY_FRACTION // bytes_per_frame))
