"""From a resolved request to what the region runs on: its `RequestShape` (which keys its
buffers and its CUDA graph) and its host part written into the buffers (tokens, number values,
the seeded draws in the reference's order, and the sampler's schedule).
"""

from __future__ import annotations

from collections.abc import Callable

from stable_audio_rt.runtime.backends.protocols import Components
from stable_audio_rt.runtime.region import RequestBuffers, RequestShape
from stable_audio_rt.runtime.requests import ResolvedRequest
from stable_audio_rt.runtime.sampling.noise import RequestRandomness
from stable_audio_rt.runtime.sampling.sampler import Sampler

# The number conditions a request gives values for (reference-spec §6).
NUMBER_VALUES = ("seconds_start", "seconds_total")


def request_shape(resolved: ResolvedRequest, auto_decode_chunk: Callable[[], int | None]) -> RequestShape:
    """What fixes this request's buffers and executed ops. `auto_decode_chunk` says what
    vae_chunk="auto" means on this pipeline (asked only when a request uses it)."""
    request = resolved.request
    chunk, overlap = decode_chunking(resolved, auto_decode_chunk)
    if resolved.init_audio is not None:
        mode = "audio"
    elif resolved.inpaint_audio is not None:
        mode = "inpaint"
    else:
        mode = "text"
    return RequestShape(
        batch=resolved.batch,
        frames=resolved.frames,
        steps=request.steps,
        mode=mode,
        uses_cfg=request.cfg_scale != 1.0,
        negative_prompt=request.negative_prompt is not None,
        guidance=request.guidance_settings,
        decode_chunk=chunk,
        decode_overlap=overlap,
    )


def decode_chunking(
    resolved: ResolvedRequest, auto_decode_chunk: Callable[[], int | None]
) -> tuple[int | None, int | None]:
    """The decode's (chunk, overlap) in latent frames, both None when one call covers the
    request: they are part of the graph key, so nothing request-independent may vary them."""
    chunk = resolved.request.vae_chunk
    if chunk == "auto":
        chunk = auto_decode_chunk()
    if chunk is None or chunk >= resolved.frames:
        return None, None
    return chunk, resolved.request.vae_overlap


def number_ids(components: Components) -> list[str]:
    """The model's number conditions that a request sets."""
    return [i for i in components.conditioner.numbers if i in NUMBER_VALUES]


def write_inputs(
    request: RequestBuffers, resolved: ResolvedRequest, components: Components, sampler: Sampler
) -> None:
    """The host part of a request, copied into its buffers (fresh ones, or a captured graph's):
    tokens, number values, the initial and posterior noise, then the sampler's schedule and
    draws (the reference's order of draws, see sampling/noise.py)."""
    settings, inputs, state = resolved.request, request.inputs, request.state
    tokenize = components.conditioner.tokenize
    prompts = [p for p in settings.prompts for _ in range(settings.num_outputs)]
    ids, mask = tokenize(prompts)
    inputs.input_ids.copy_(ids)
    inputs.attention_mask.copy_(mask)
    if inputs.negative_ids is not None:
        ids, mask = tokenize([settings.negative_prompt] * resolved.batch)
        inputs.negative_ids.copy_(ids)
        inputs.negative_mask.copy_(mask)
    values = {"seconds_start": settings.seconds_start, "seconds_total": resolved.seconds_total}
    for name, buffer in inputs.numbers.items():
        buffer.fill_(float(values[name]))
    state.cfg_scale.fill_(settings.cfg_scale)

    randomness = RequestRandomness(resolved.seed, components.device)
    inputs.noise.copy_(randomness.randn(*inputs.noise.shape))
    reference = resolved.init_audio if resolved.init_audio is not None else resolved.inpaint_audio
    if reference is not None:
        inputs.reference_audio.copy_(reference[None])
        inputs.posterior_noise.copy_(randomness.randn(*inputs.posterior_noise.shape))
    sampler.write(request, resolved, randomness)
