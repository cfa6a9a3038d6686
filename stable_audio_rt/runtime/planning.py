"""From resolved requests to what the region runs on: their `RequestShape` (which keys the
buffers and the CUDA graph) and their host part written into the buffers (tokens, number values,
the seeded draws in the reference's order, and the sampler's schedule).

Requests of one `batch_key` run as one batch: their rows stacked in order, each writing its own
prompts, negative prompt, numbers, CFG scale and its own seed's draws into its rows, so each row
gets what the request would get alone; what the key fixes (window, steps, guidance, schedule) is
shared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stable_audio_rt.errors import RequestError
from stable_audio_rt.runtime.backends.protocols import Components
from stable_audio_rt.runtime.region import RequestBuffers, RequestShape
from stable_audio_rt.runtime.requests import ResolvedRequest
from stable_audio_rt.runtime.sampling.noise import NoiseKind, RequestRandomness
from stable_audio_rt.runtime.sampling.sampler import Sampler

# The number conditions a request gives values for (reference-spec §6).
NUMBER_VALUES = ("seconds_start", "seconds_total")


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to run as one batch: their shape but for the batch, and the
    schedule the sampler writes once for all rows."""

    shape: RequestShape  # with batch 0
    noise: NoiseKind
    sigma_min: float
    start_level: float


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
        uses_cfg=request.uses_cfg,
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


def batch_key(resolved: ResolvedRequest, auto_decode_chunk: Callable[[], int | None]) -> BatchKey | None:
    """The key of the requests this one may share a batch with; None when it runs only alone
    (audio-to-audio and inpainting: their reference audio has one row per request shape)."""
    shape = request_shape(resolved, auto_decode_chunk)
    if shape.mode != "text":
        return None
    settings = resolved.request
    return BatchKey(
        dataclasses.replace(shape, batch=0), settings.noise, settings.sigma_min, resolved.start_level
    )


def batch_shape(
    resolved: Sequence[ResolvedRequest], auto_decode_chunk: Callable[[], int | None]
) -> RequestShape:
    """The shape of requests run as one batch: one request's, or, when they share a batch key,
    theirs with the rows of all. Requests that cannot share a batch are refused by name."""
    if not resolved:
        raise RequestError("a batch needs at least one request")
    first = request_shape(resolved[0], auto_decode_chunk)
    if len(resolved) == 1:
        return first
    keys = [batch_key(r, auto_decode_chunk) for r in resolved]
    if keys[0] is None or any(k != keys[0] for k in keys[1:]):
        raise RequestError(
            "these requests cannot run as one batch: they must all be text-to-audio with the same "
            "window, steps, CFG on or off, guidance, negative prompt given or not, noise kind, "
            "σ range and decode chunking (see planning.batch_key)"
        )
    return dataclasses.replace(first, batch=sum(r.batch for r in resolved))


def row_slices(resolved: Sequence[ResolvedRequest]) -> list[slice]:
    """Each request's rows in a batch of them, in order."""
    slices, start = [], 0
    for one in resolved:
        slices.append(slice(start, start + one.batch))
        start += one.batch
    return slices


def write_inputs(
    request: RequestBuffers, resolved: Sequence[ResolvedRequest], components: Components, sampler: Sampler
) -> None:
    """The host part of each request, copied into its rows of the buffers (fresh ones, or a
    captured graph's)."""
    for one, rows in zip(resolved, row_slices(resolved), strict=True):
        _write_request(request, one, rows, components, sampler)


def _write_request(
    request: RequestBuffers, resolved: ResolvedRequest, rows: slice, components: Components, sampler: Sampler
) -> None:
    """One request into its rows: tokens, number values, the CFG scale, the initial and
    posterior noise, then the sampler's schedule and draws, all from this request's seed (the
    reference's order of draws, see sampling/noise.py)."""
    settings, inputs, state = resolved.request, request.inputs, request.state
    tokenize = components.conditioner.tokenize
    prompts = [p for p in settings.prompts for _ in range(settings.num_outputs)]
    ids, mask = tokenize(prompts)
    inputs.input_ids[rows].copy_(ids)
    inputs.attention_mask[rows].copy_(mask)
    if inputs.negative_ids is not None:
        ids, mask = tokenize([settings.negative_prompt] * resolved.batch)
        inputs.negative_ids[rows].copy_(ids)
        inputs.negative_mask[rows].copy_(mask)
    values = {"seconds_start": settings.seconds_start, "seconds_total": resolved.seconds_total}
    for name, buffer in inputs.numbers.items():
        buffer[rows].fill_(float(values[name]))
    state.cfg_scale[rows].fill_(settings.cfg_scale)

    randomness = RequestRandomness(resolved.seed, components.device)
    inputs.noise[rows].copy_(randomness.randn(*inputs.noise[rows].shape))
    reference = resolved.init_audio if resolved.init_audio is not None else resolved.inpaint_audio
    if reference is not None:  # such a request runs alone (batch_key): all rows are its own
        inputs.reference_audio.copy_(reference[None])
        inputs.posterior_noise.copy_(randomness.randn(*inputs.posterior_noise.shape))
    sampler.write(request, resolved, randomness, rows)
