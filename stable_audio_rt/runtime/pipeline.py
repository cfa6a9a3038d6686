"""The Python API: `StableAudio.load(...)` (any backend; `load.py` decides which and reads the
config first), then `generate(...)`.

A request is resolved (checked, made concrete) and given static buffers of its `RequestShape`;
its host part (tokens, seeded draws, the σ table) is written into them, then the executed region
(`region.py`: conditioning, every step, the decode) runs: eagerly, or on a CUDA device as one
captured CUDA graph per shape, replayed for every later request of that shape. The audio is
cropped on the host. Text-to-audio, audio-to-audio and RePaint inpainting share that path.
Text-to-audio requests of one `batch_key` can run as one batch (`run_batch`), each row getting
exactly what its request gets alone.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from stable_audio_rt.errors import ConfigError, RequestError
from stable_audio_rt.kernels.switch import KernelChoice
from stable_audio_rt.models.checkpoint import DEFAULT_REPO, Layout
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.precision import DtypeRequest
from stable_audio_rt.runtime import planning, region
from stable_audio_rt.runtime.audio_io import SampleFormat, clip_paths, write_clips
from stable_audio_rt.runtime.backends.protocols import Components
from stable_audio_rt.runtime.cuda_graph import CAPTURE_GATE, GraphCache, capture_request, default_memory_cap
from stable_audio_rt.runtime.device_context import on_device
from stable_audio_rt.runtime.load import Backend, LoadPlan, WeightOptions, plan_load
from stable_audio_rt.runtime.planning import BatchKey
from stable_audio_rt.runtime.region import RequestBuffers, RequestShape, allocate_request
from stable_audio_rt.runtime.request_values import prompts_of
from stable_audio_rt.runtime.requests import GenerationRequest, ResolvedRequest, resolve_request
from stable_audio_rt.runtime.sampling.objectives import sampler_for
from stable_audio_rt.runtime.timing import stopwatch
from stable_audio_rt.runtime.vae_decode import (
    auto_chunk_frames,
    decode_chunks,
    one_clip_at_a_time,
    overlap_or_field,
    plan_windows,
)

# What torch's CPU allocator says when an allocation fails (it raises a plain RuntimeError).
CPU_ALLOCATOR_FAILED = "DefaultCPUAllocator"
# How a failed capture's warning begins (benchmarks/gpu_check_measure.py says each row's own).
CAPTURE_FAILED = "CUDA graph capture failed"
# Streaming needs pieces even where one decode call would fit: about 3 s of audio each.
DEFAULT_STREAM_CHUNK_FRAMES = 64

EngineBackend = Literal["onnxruntime", "tensorrt"]
# Called with (steps done, steps in all) as sampling goes (`run_resolved`'s on_step).
StepCallback = Callable[[int, int], None]


@dataclass
class GenerationResult:
    audio: torch.Tensor  # (B, channels, samples) float32 on the CPU
    sample_rate: int
    seed: int
    latents: torch.Tensor  # (B, C, frames) float32: the denoised window before decoding
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def paths(self, path: str | Path) -> list[Path]:
        """Where `save(path)` writes (`audio_io.clip_paths`)."""
        return clip_paths(path, self.audio.shape[0])

    def save(
        self,
        path: str | Path,
        sample_format: SampleFormat = "pcm16",
        clip: bool = True,
        normalize: bool = False,
    ) -> list[Path]:
        """Write each clip to WAV or FLAC by the extension (`paths` says where), as 16-bit PCM
        or float ("float": 32-bit in WAV, 24-bit in FLAC); `normalize` scales each clip's peak to
        full scale, `clip` then limits samples to [-1, 1] (False: a float WAV only). Every path is
        checked before any work, and the clips are written all or none (`audio_io.write_clips`)."""
        return write_clips(
            self.paths(path), list(self.audio), self.sample_rate, sample_format, clip, normalize
        )


class AudioStream(Iterator[torch.Tensor]):
    """`generate_stream`'s pieces of audio, in order, with the request's `seed` (drawn at the
    call when none was given: the same seed makes the same clip again) and `sample_rate`."""

    def __init__(self, pieces: Generator[torch.Tensor, None, None], seed: int, sample_rate: int) -> None:
        self.pieces, self.seed, self.sample_rate = pieces, seed, sample_rate

    def __next__(self) -> torch.Tensor:
        return next(self.pieces)

    def close(self) -> None:
        """Stop early: the rest is neither sampled nor decoded."""
        self.pieces.close()


@contextmanager
def _stage(timings: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Seconds of a stage, recorded in `timings` under `name` (see stopwatch for how)."""
    with stopwatch(device) as elapsed:
        yield
    timings[name] = elapsed.seconds


@contextmanager
def _out_of_memory_refused(shape: RequestShape, device: torch.device) -> Iterator[None]:
    """Running out of memory is the request's size, not a bug: a RequestError naming what
    shrinks it, not torch's allocator traceback."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and CPU_ALLOCATOR_FAILED not in str(e):
            raise
        raise RequestError(
            f"out of memory on {device}: {shape.batch} clip(s) of {shape.frames} latent frames over "
            f"{shape.steps} steps need more than it has; ask for fewer clips or steps, a shorter clip "
            "with the window trimmed, or decode in chunks (vae_chunk)"
        ) from e


class StableAudio:
    """A loaded model (through any backend's components) and the pipeline that samples it.

    On a CUDA device with a capturable backend (torch, tensorrt) each request shape is captured
    once as one CUDA graph and replayed after (`cuda_graph=False` runs eagerly, e.g. to debug);
    if a capture fails, that shape runs eagerly and one warning says why.
    """

    def __init__(self, components: Components, cuda_graph: bool = True) -> None:
        self.components = components
        self.device, self.dtype = components.device, components.dtype
        self.cuda_graph = cuda_graph
        self.sampler = sampler_for(components.config)
        self.graphs = GraphCache(max_bytes=default_memory_cap(self.device) if self.uses_graphs else None)
        # A captured graph's buffers are shared by every request of its shape: calls from several
        # threads capture and replay one at a time (eager calls each have buffers of their own).
        # Re-entrant: a request's `on_step` runs while it holds the lock, but never while it uses
        # a graph's buffers (an eager run's are fresh; a replay's outputs are copied out first), so
        # a request that the callback runs on this pipeline goes on (a plain lock: hung for ever).
        self.replaying = threading.RLock()

    @property
    def config(self) -> StableAudioConfig:
        return self.components.config

    @property
    def uses_graphs(self) -> bool:
        return self.cuda_graph and self.device.type == "cuda" and self.components.capturable

    @property
    def meets_captures(self) -> bool:
        """Whether its device work is CUDA's, which another thread's graph capture must not meet
        (`cuda_graph.CaptureGate`); a CPU pipeline's requests never wait for a capture."""
        return self.device.type == "cuda"

    def _work(self) -> AbstractContextManager:
        return CAPTURE_GATE.working() if self.meets_captures else nullcontext()

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        engines: str | Path | None = None,
        backend: Backend = "auto",
        device: torch.device | str | None = None,
        dtype: DtypeRequest = "auto",
        t5_dtype: torch.dtype | None = None,
        kernels: KernelChoice = "auto",
        cuda_graph: bool = True,
        layout: Layout = "auto",
        token: str | None = None,
    ) -> StableAudio:
        """Load a model: the one entry point (sa-run, sa-bench and the server call it too).

        `model`: a Hub repo id (default: SAO 1.0), a local folder, or a seeded random model
        (`tiny-random`, `tiny-random-small`, `random-stable-audio-open-1.0`, `-small`).
        `engines`: an engine folder from sa-export; `model` then names the weights it must have
        been built from (checked), or the checkpoint torch loads when no engine backend can run.
        `backend`: "auto" (with engines: tensorrt when the folder has plans for this GPU, else
        onnxruntime; without: torch), "torch", "onnxruntime" or "tensorrt". `device`: default
        CUDA when available (onnxruntime: the CPU). `dtype`, `t5_dtype` and `kernels` apply to
        torch: `dtype` "auto" (default) is bf16 on a CPU with bf16 matrix units and fp32
        elsewhere (`precision.choose_dtype`); T5 runs in fp32 unless `t5_dtype=torch.float16`
        (as stable-audio-tools casts it) or bfloat16; `kernels` picks the DiT attention and VAE
        Snake maths: "auto" (Triton on CUDA, compiled on the CPU), "triton", "compiled" or
        "torch"; `layout` the checkpoint's: "auto", "diffusers" or "single_file". With engines,
        leave kernels and layout as they are and dtype, t5_dtype out (or the folder's own).
        """
        options = WeightOptions(dtype, t5_dtype, kernels, layout, token)
        plan = plan_load(model, engines, backend, device, options)
        return cls.from_plan(plan, cuda_graph=cuda_graph)

    @classmethod
    def from_plan(cls, plan: LoadPlan, cuda_graph: bool = True) -> StableAudio:
        """Load what `load.plan_load` decided (the CLIs plan first, to check before loading)."""
        # Weights allocated and copied onto a GPU (engines deserialised there) are device work
        # that another thread's capture must not meet: a capture waits for a load under way.
        with CAPTURE_GATE.working() if plan.device.type == "cuda" else nullcontext():
            return cls(plan.components(), cuda_graph)

    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_REPO, **options) -> StableAudio:
        """`load(model, backend="torch", ...)`, the name Hugging Face users reach for."""
        return cls.load(model, backend="torch", **options)

    @classmethod
    def from_engines(
        cls,
        folder: str | Path,
        backend: EngineBackend = "onnxruntime",
        device: torch.device | str | None = None,
        model: str | Path | None = None,
        cuda_graph: bool = True,
    ) -> StableAudio:
        """`load(model, engines=folder, backend=...)`: an engine folder through onnxruntime
        (default; on the CPU unless `device` says) or TensorRT (on the GPU)."""
        if backend not in ("onnxruntime", "tensorrt"):
            raise ConfigError(f"unknown engine backend {backend!r}: use 'onnxruntime' or 'tensorrt'")
        return cls.load(model, engines=folder, backend=backend, device=device, cuda_graph=cuda_graph)

    def generate(self, prompt: str | Sequence[str], *, progress: bool = False, **options) -> GenerationResult:
        """Generate audio; options are the fields of `GenerationRequest` (seconds_total, steps,
        cfg_scale, seed, negative_prompt, num_outputs, init_audio, inpaint_audio, ...)."""
        return self._run(GenerationRequest(prompts=prompts_of(prompt), **options), progress)

    def run(self, request: GenerationRequest, progress: bool = False) -> GenerationResult:
        return self._run(request, progress)

    def _run(self, request: GenerationRequest, progress: bool) -> GenerationResult:
        # Warnings point at the line that called generate or run: two frames above this one.
        resolved = resolve_request(request, self.config, stacklevel=3)
        return self._run_batch([resolved], None, progress, stacklevel=3)[0]

    def run_resolved(
        self, resolved: ResolvedRequest, progress: bool = False, on_step: StepCallback | None = None
    ) -> GenerationResult:
        """Run a request already checked against this model's config (see `resolve_request`).

        `on_step(done, total)` is called after each sampler step when the request runs eagerly;
        replayed as a CUDA graph, the whole request is one call, so it is called once, with
        (total, total), after the replay. An exception it raises stops the request there (at a
        step boundary) and propagates."""
        return self._run_batch([resolved], on_step, progress, stacklevel=2)[0]

    def run_batch(
        self,
        resolved: Sequence[ResolvedRequest],
        on_step: StepCallback | None = None,
        progress: bool = False,
    ) -> list[GenerationResult]:
        """Run requests of one `batch_key` as one batch: one result per request, each equal to
        what `run_resolved` gives it alone (its own prompts, seed, CFG scale, numbers and clip);
        the timings are the batch's. Requests that cannot share a batch are refused
        (RequestError). `on_step` as in `run_resolved`, for the whole batch."""
        return self._run_batch(resolved, on_step, progress, stacklevel=2)

    def _run_batch(
        self,
        resolved: Sequence[ResolvedRequest],
        on_step: StepCallback | None,
        progress: bool,
        stacklevel: int,
    ) -> list[GenerationResult]:
        """`run_batch`, with its prompts' warnings pointing `stacklevel` frames up from this
        call's caller (as `warnings.warn` counts): the user's line, not the tokenizer's."""
        if any(r.config != self.config for r in resolved):
            raise RequestError(
                "a request resolved for another model: resolve it against this one's "
                "(resolve_request(request, pipe.config)), or call generate"
            )
        for text in dict.fromkeys(text for one in resolved for text in self.prompt_warnings(one)):
            warnings.warn(text, UserWarning, stacklevel=stacklevel + 1)
        timings: dict[str, float] = {}
        shape = planning.batch_shape(resolved, lambda: self._auto_decode_chunk)
        self._check(shape, shape.decode_chunk)
        with on_device(self.device), _out_of_memory_refused(shape, self.device):
            if self.uses_graphs:
                with self.replaying:
                    audio, latents = self._run_graph(resolved, shape, timings, on_step)
            else:
                audio, latents = self._run_eager(resolved, shape, timings, progress, on_step)
        self._refuse_non_finite(audio)
        rate, clips = self.config.sample_rate, []
        with _stage(timings, "postprocess", audio.device):
            for one, rows in zip(resolved, planning.row_slices(resolved), strict=True):
                # Copies: a view would keep (and pickle) the whole batch's audio and latents.
                own = audio[rows, :, one.clip(rate)].clone(memory_format=torch.contiguous_format)
                clips.append((own, one.seed, latents[rows].clone()))
        # Each result its own copy of the batch's timings, postprocess included.
        return [GenerationResult(clip, rate, seed, rows, dict(timings)) for clip, seed, rows in clips]

    def _refuse_non_finite(self, audio: torch.Tensor) -> None:
        """Never a file of NaN, nor a silent WAV of them (isfinite would compute an fp32 abs)."""
        if audio.isnan().any() or audio.isinf().any():
            raise RequestError(
                f"the audio came out NaN or infinite in {self.dtype}: a value of the request overflowed "
                "(a guidance scale far above the usual 1–15?), or the weights hold such values"
            )

    def prompt_warnings(self, resolved: ResolvedRequest) -> list[str]:
        """What of the request's prompts (and negative prompt) the model will not read: those over
        T5's length, which run truncated (a server tells its client before the request runs)."""
        settings = resolved.request
        prompts = [*settings.prompts, *([settings.negative_prompt] if settings.negative_prompt else [])]
        return self.components.conditioner.prompt_warnings(list(dict.fromkeys(prompts)))

    def batch_key(self, resolved: ResolvedRequest) -> BatchKey | None:
        """Requests with equal keys can run as one batch (`run_batch`); None: only alone."""
        return planning.batch_key(resolved, lambda: self._auto_decode_chunk)

    def generate_stream(
        self, prompt: str | Sequence[str], *, progress: bool = False, **options
    ) -> AudioStream:
        """Like `generate`, but yields the clip's audio (B, channels, n) float32 on the CPU in
        consecutive pieces as the VAE decodes them, so playback can start before the decode ends.
        The pieces concatenate to `generate(...).audio` (within float error). Runs eagerly. The
        request is checked here, at the call, and its seed is the stream's `seed`; sampling
        starts at the first piece asked for."""
        request = GenerationRequest(prompts=prompts_of(prompt), **options)
        resolved = resolve_request(request, self.config, stacklevel=2)  # warned at the caller's line
        for text in self.prompt_warnings(resolved):
            warnings.warn(text, UserWarning, stacklevel=2)
        shape = self.request_shape(resolved)
        overlap = overlap_or_field(self.config.vae, resolved.request.vae_overlap)
        # The request's chunk (checked with it), else pieces of the stream's size that its overlap
        # and the decoder's profile fit.
        least = max(2 * overlap + 1, self.components.least_decode_frames())
        chunk = shape.decode_chunk or max(DEFAULT_STREAM_CHUNK_FRAMES, least)
        self._check(shape, chunk)
        pieces = self._stream(resolved, shape, chunk, overlap, progress)
        return AudioStream(pieces, resolved.seed, self.config.sample_rate)

    def _stream(
        self, resolved: ResolvedRequest, shape: RequestShape, chunk: int, overlap: int, progress: bool
    ) -> Generator[torch.Tensor, None, None]:
        with self._work(), on_device(self.device), _out_of_memory_refused(shape, self.device):
            request = self._fresh(shape, [resolved])
            self._sample(request, progress=progress)
        clip = resolved.clip(self.config.sample_rate)
        ratio = self.config.vae.downsampling_ratio
        decode = one_clip_at_a_time(self.components.decode)  # as region.decode
        pieces = decode_chunks(decode, request.state.x, ratio, chunk, overlap)
        windows = len(plan_windows(request.state.x.shape[-1], chunk, overlap))
        position = 0
        # The decode's bar, as generate's: a step per piece; closed however the stream ends.
        with tqdm(desc="decoding", unit="piece", total=windows, disable=not progress) as decoding:
            while True:
                # Each piece decoded on the device, without grad; between pieces the caller has the thread.
                with (
                    self._work(),
                    torch.no_grad(),
                    on_device(self.device),
                    _out_of_memory_refused(shape, self.device),
                ):
                    piece = next(pieces, None)
                    if piece is None:
                        return
                    piece = piece.float().cpu()  # the device's last use by this piece
                decoding.update()
                self._refuse_non_finite(piece)
                lo, hi = max(clip.start, position), min(clip.stop, position + piece.shape[-1])
                if lo < hi:
                    yield piece[..., lo - position : hi - position]
                position += piece.shape[-1]

    def request_shape(self, resolved: ResolvedRequest) -> RequestShape:
        """What fixes this request's buffers and executed ops (its CUDA graph's key)."""
        return planning.request_shape(resolved, lambda: self._auto_decode_chunk)

    def prepare(self, resolved: ResolvedRequest) -> RequestBuffers:
        """Fresh buffers for the request, its inputs written: ready for `region.run_region`."""
        shape = self.request_shape(resolved)
        with self._work():  # buffers allocated and written: device work, gated as generate's is
            return self._fresh(shape, [resolved])

    def _fresh(self, shape: RequestShape, resolved: Sequence[ResolvedRequest]) -> RequestBuffers:
        request = allocate_request(shape, self.components, planning.number_ids(self.components))
        self.write_inputs(request, resolved)
        return request

    def _run_eager(
        self,
        resolved: Sequence[ResolvedRequest],
        shape: RequestShape,
        timings: dict[str, float],
        progress: bool,
        on_step: StepCallback | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._work():
            with _stage(timings, "prepare", self.device):
                request = self._fresh(shape, resolved)
            return self._eager_region(request, timings, progress, on_step)

    def _eager_region(
        self,
        request: RequestBuffers,
        timings: dict[str, float],
        progress: bool = False,
        on_step: StepCallback | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def stage(name: str):
            return _stage(timings, name, self.device)

        self._sample(request, stage, progress, on_step)
        # The decode's own bar, a step per decoder call (window × clip): on a CPU the decode
        # takes seconds to minutes after the last step. Closed whatever ends it (Ctrl-C too).
        with tqdm(desc="decoding", unit="call", disable=not progress) as decoding:

            def decoded(done: int, total: int) -> None:
                decoding.total = total
                decoding.update(done - decoding.n)

            region.decode(request, self.components, stage, on_call=decoded)
        return request.audio.cpu(), request.state.x.cpu()

    def _sample(
        self,
        request: RequestBuffers,
        stage: region.Stage = region.no_stage,
        progress: bool = False,
        on_step: StepCallback | None = None,
    ) -> None:
        """`region.sample` with a bar for its steps, reporting each to `on_step`."""
        steps = request.state.steps
        with tqdm(total=steps, desc="sampling", unit="step", disable=not progress) as bar:

            def stepped(i: int) -> None:
                bar.update()
                if on_step is not None:
                    on_step(i + 1, steps)

            region.sample(request, self.components, stage, on_step=stepped)

    def _run_graph(
        self,
        resolved: Sequence[ResolvedRequest],
        shape: RequestShape,
        timings: dict[str, float],
        on_step: StepCallback | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.graphs.get(shape)
        with self._work(), _stage(timings, "prepare", self.device):
            if entry is not None:
                request = entry.request
                self.write_inputs(request, resolved)
            else:
                request = self._fresh(shape, resolved)
        if entry is None:
            # Failed before, or called from a request's own work (an on_step), where a capture would
            # wait for that request: eagerly (the latter captured when called outside it).
            if shape in self.graphs.failed or CAPTURE_GATE.inside_work():
                with self._work():
                    return self._eager_region(request, timings, on_step=on_step)
            try:
                with CAPTURE_GATE.capturing(), _stage(timings, "capture", self.device):
                    entry = capture_request(request, lambda r: region.run_region(r, self.components))
            except Exception as e:  # whatever broke the capture, the eager run raises it for real
                self.graphs.failed[shape] = f"{type(e).__name__}: {e}"
                if len(self.graphs.failed) == 1:  # the first only: the others' are in graphs.failed
                    warnings.warn(
                        f"{CAPTURE_FAILED} ({self.graphs.failed[shape]}); running this request "
                        f"shape eagerly. cuda_graph=False (sa-run --no-cuda-graph) skips capturing.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                # Its inputs are intact: only read.
                with self._work():
                    return self._eager_region(request, timings, on_step=on_step)
            with self._work():  # the graphs it evicts are reset: device work, as any
                self.graphs.add(shape, entry)
        with self._work(), _stage(timings, "replay", self.device):
            outputs = entry.replay()
        if on_step is not None:
            on_step(shape.steps, shape.steps)
        return outputs

    def write_inputs(
        self, request: RequestBuffers, resolved: ResolvedRequest | Sequence[ResolvedRequest]
    ) -> None:
        """The host part of a request (or of a batch's requests, in row order) into its buffers
        (fresh ones, or a captured graph's)."""
        batch = [resolved] if isinstance(resolved, ResolvedRequest) else resolved
        # Copies from pageable host memory, which another thread's capture must not meet: gated
        # when called alone (inside a request's own work, it goes on at once).
        with self._work():
            planning.write_inputs(request, batch, self.components, self.sampler)

    def check(self, resolved: ResolvedRequest) -> None:
        """Refuse, before any work, a request this pipeline's engines cannot run (their batch and
        frame profiles, the VAE encoder); the torch backend runs any resolved request."""
        shape = self.request_shape(resolved)
        self._check(shape, shape.decode_chunk)

    def _check(self, shape: RequestShape, chunk: int | None) -> None:
        self.components.check_request(
            batch=shape.batch,
            uses_cfg=shape.uses_cfg,
            frames=shape.frames,
            decode_frames=min(chunk or shape.frames, shape.frames),
            encodes=shape.mode != "text",
        )

    @cached_property
    def _auto_decode_chunk(self) -> int | None:
        """`vae_chunk="auto"` resolved once for this pipeline: free GPU memory changes with every
        capture, and a chunk read from it per request would make each request a new graph key.
        Read inside the gate: cudaMemGetInfo during another thread's capture breaks that capture
        (its first reader may be a request's check, `request_shape` or `batch_key`, outside work)."""
        with self._work():
            return auto_chunk_frames(self.config.vae, self.device, self.dtype)
