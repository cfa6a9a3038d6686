"""The executed region of a request: device work only, over buffers allocated before it.

A request is split in two. The host part (tokenizing, seeded random draws, the σ table) writes
a `RequestBuffers`' inputs; the region below reads them and writes the sampler state and the
output audio in place: conditioning (T5, numbers, the negative half), the DiT step's bind,
the initial state (with the VAE encode for audio-to-audio and inpainting), every sampler step
with guidance and the RePaint blend, and the VAE decode. Nothing in it synchronises with the
host, and its op sequence depends only on the `RequestShape`, so on a CUDA device it is
captured once per shape as one graph and replayed; elsewhere it runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.vae import bottleneck_sample
from stable_audio_rt.runtime.backends.protocols import Components
from stable_audio_rt.runtime.sampling.guidance import Guidance, dit_rows
from stable_audio_rt.runtime.sampling.state import SamplerState, allocate_state
from stable_audio_rt.runtime.sampling.step import sampler_step
from stable_audio_rt.runtime.vae_decode import WindowCallback, decode_latents, no_report, one_clip_at_a_time

Mode = Literal["text", "audio", "inpaint"]
Stage = Callable[[str], AbstractContextManager[None]]


def no_stage(_: str) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass(frozen=True)
class RequestShape:
    """Everything that fixes the region's buffers and op sequence: the CUDA graph key."""

    batch: int
    frames: int
    steps: int
    mode: Mode
    uses_cfg: bool
    negative_prompt: bool
    guidance: Guidance
    decode_chunk: int | None
    decode_overlap: int | None

    @property
    def rows(self) -> int:
        """DiT rows: [cond; uncond] with CFG."""
        return dit_rows(self.batch, self.uses_cfg)


@dataclass
class RequestInputs:
    """What the host writes before the region runs (or a graph replays)."""

    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64
    negative_ids: torch.Tensor | None  # (B, L): the negative prompt, when given with CFG
    negative_mask: torch.Tensor | None
    numbers: dict[str, torch.Tensor]  # number condition id → (B,) float32
    times: torch.Tensor  # (N,) the DiT's time per step
    noise: torch.Tensor  # (B, C, T) initial noise
    start_scale: torch.Tensor  # 0-d: the initial noise's scale (σ_0, or t0 for rf)
    reference_audio: torch.Tensor | None  # (1, channels, samples): audio-to-audio and inpainting
    posterior_noise: torch.Tensor | None  # (1, C, T): the VAE posterior sample's noise
    reference_scale: torch.Tensor  # 0-d: the reference latents' weight in the initial state


@dataclass
class RequestBuffers:
    shape: RequestShape
    inputs: RequestInputs
    state: SamplerState  # sampler state and per-step tables; state.x ends as the latents
    audio: torch.Tensor  # (B, channels, samples) float32 output

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor allocated before the region (it may write only these, and its own
        temporaries)."""
        return [*self.input_buffers(), *self.state.buffers(), self.audio]

    def input_buffers(self) -> list[torch.Tensor]:
        """The tensors the host writes and the region only reads, so a replay finds them intact."""
        inputs, state = self.inputs, self.state
        optional = [inputs.negative_ids, inputs.negative_mask, inputs.reference_audio, inputs.posterior_noise]
        tables = [state.scalars, state.step_noise, state.cfg_scale]
        if state.inpaint is not None:
            tables += [state.inpaint.keep, state.inpaint.renoise]
        return [
            inputs.input_ids,
            inputs.attention_mask,
            *(t for t in optional if t is not None),
            *inputs.numbers.values(),
            inputs.times,
            inputs.noise,
            inputs.start_scale,
            inputs.reference_scale,
            *tables,
        ]


def allocate_request(shape: RequestShape, components: Components, number_ids: list[str]) -> RequestBuffers:
    """Empty buffers of one request shape on the components' device."""
    config: StableAudioConfig = components.config
    device = components.device
    latents = (shape.batch, config.dit.io_channels, shape.frames)
    tokens = (shape.batch, config.conditioning.t5_max_length)
    samples = shape.frames * config.vae.downsampling_ratio
    f32 = dict(device=device, dtype=torch.float32)
    negative = shape.uses_cfg and shape.negative_prompt
    encodes = shape.mode != "text"
    inputs = RequestInputs(
        input_ids=torch.zeros(tokens, device=device, dtype=torch.int64),
        attention_mask=torch.zeros(tokens, device=device, dtype=torch.int64),
        negative_ids=torch.zeros(tokens, device=device, dtype=torch.int64) if negative else None,
        negative_mask=torch.zeros(tokens, device=device, dtype=torch.int64) if negative else None,
        numbers={i: torch.zeros(shape.batch, **f32) for i in number_ids},
        times=torch.zeros(shape.steps, **f32),
        noise=torch.zeros(latents, **f32),
        start_scale=torch.zeros((), **f32),
        reference_audio=torch.zeros((1, config.vae.audio_channels, samples), **f32) if encodes else None,
        posterior_noise=torch.zeros((1, *latents[1:]), **f32) if encodes else None,
        reference_scale=torch.zeros((), **f32),
    )
    state = allocate_state(
        components.step_model(shape.steps, shape.rows),
        latents,
        shape.steps,
        shape.uses_cfg,
        components.dtype,
        device,
        shape.guidance,
        inpaint=shape.mode == "inpaint",
    )
    audio = torch.zeros((shape.batch, config.vae.audio_channels, samples), **f32)
    return RequestBuffers(shape, inputs, state, audio)


def condition(request: RequestBuffers, components: Components) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, S, D) context and (R, G) global: rows [cond; uncond] when CFG is on."""
    inputs, conditioner = request.inputs, components.conditioner
    if inputs.negative_ids is not None:
        # Prompt and negative prompt in one encoder call, rows [prompt; negative]: T5's rows are
        # independent, and one call of 2B rows runs its products faster than two of B.
        context, global_both = conditioner.encode(
            torch.cat((inputs.input_ids, inputs.negative_ids)),
            torch.cat((inputs.attention_mask, inputs.negative_mask)),
            {name: value.repeat(2) for name, value in inputs.numbers.items()},
        )
        global_cond = global_both[: request.shape.batch]
    else:
        context, global_cond = conditioner.encode(inputs.input_ids, inputs.attention_mask, inputs.numbers)
        if not request.shape.uses_cfg:
            return context, global_cond
        context = torch.cat((context, torch.zeros_like(context)))
    # The global condition is the positive one in both halves (reference-spec §3).
    return context, torch.cat((global_cond, global_cond))


def start(request: RequestBuffers, components: Components) -> None:
    """Conditioning into the DiT step's buffers, and the initial state (with the reference's
    latents for audio-to-audio, or as the RePaint reference for inpainting)."""
    inputs, state = request.inputs, request.state
    state.denoiser.bind(inputs.times, *condition(request, components))
    state.x.copy_(inputs.noise * inputs.start_scale)
    # The first steps weigh the ring's unwritten slots by zero, and 0·NaN is NaN: a replay must
    # not inherit a non-finite value from the request before it.
    state.denoised.zero_()
    if inputs.reference_audio is None:
        return
    mean, std = components.encode_moments(inputs.reference_audio)
    reference = bottleneck_sample(mean, std, inputs.posterior_noise)
    if state.inpaint is not None:
        state.inpaint.reference.copy_(reference.expand_as(state.inpaint.reference))
    else:
        state.x.add_(reference * inputs.reference_scale)


def sample(
    request: RequestBuffers,
    components: Components,
    stage: Stage = no_stage,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Conditioning, initial state and every step: `request.state.x` ends as the latents."""
    with torch.no_grad():
        with stage("conditioning"):
            start(request, components)
        with stage("sampling"):
            for i in range(request.state.steps):
                sampler_step(request.state, i)
                if on_step is not None:
                    on_step(i)


def decode(
    request: RequestBuffers,
    components: Components,
    stage: Stage = no_stage,
    on_call: WindowCallback | None = None,
) -> None:
    """The latents' audio into `request.audio` (float32), in one call or in chunks, each window
    one clip at a time (`one_clip_at_a_time`); `on_call(done, total)` counts the decoder's calls
    (windows × clips) before the first and after each, for progress."""
    shape = request.shape
    clips = request.state.x.shape[0]
    report = on_call if on_call is not None else no_report
    calls = {"done": 0, "total": clips}

    def windows_planned(done: int, total: int) -> None:
        if done == 0:
            calls["total"] = total * clips
            report(0, calls["total"])

    def clip_decoded() -> None:
        calls["done"] += 1
        report(calls["done"], calls["total"])

    with torch.no_grad(), stage("decode"):
        audio = decode_latents(
            one_clip_at_a_time(components.decode, clip_decoded),
            request.state.x,
            components.config.vae,
            shape.decode_chunk,
            shape.decode_overlap,
            windows_planned,
        )
        request.audio.copy_(audio)


def run_region(request: RequestBuffers, components: Components, stage: Stage = no_stage) -> None:
    """The whole region: what a CUDA graph captures."""
    sample(request, components, stage)
    decode(request, components, stage)
