"""The Python API: `StableAudio.from_pretrained(...)` and `generate(...)` (torch backend).

A request is resolved (checked, made concrete), conditioned, planned into static buffers,
sampled by the step function, decoded and cropped. Text-to-audio, audio-to-audio and RePaint
inpainting share that path; they differ only in the plan.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.kernels.switch import KernelChoice, resolve_kernels, use_kernels
from stable_audio_rt.models.checkpoint import DEFAULT_REPO, Layout
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.loading import load_stable_audio
from stable_audio_rt.models.random_init import RANDOM_MODELS, random_model
from stable_audio_rt.models.vae import bottleneck_sample, decoder_receptive_frames
from stable_audio_rt.runtime.audio_io import SampleFormat, check_output_path, write_audio
from stable_audio_rt.runtime.components import Components, StepModel, TorchComponents
from stable_audio_rt.runtime.noise import (
    RequestRandomness,
    brownian_step_noise,
    gaussian_step_noise,
    pingpong_step_noise,
)
from stable_audio_rt.runtime.plan import InpaintPlan, RequestPlan, build_plan
from stable_audio_rt.runtime.requests import GenerationRequest, ResolvedRequest, resolve_request
from stable_audio_rt.runtime.sampler import run_plan
from stable_audio_rt.runtime.schedule import (
    logsnr_shifted_times,
    pingpong_table,
    polyexponential_sigmas,
    sigma_to_t,
    step_table,
)
from stable_audio_rt.runtime.vae_decode import (
    auto_chunk_frames,
    check_chunking,
    decode_chunks,
    decode_latents,
)

# Streaming needs pieces even where one decode call would fit: about 3 s of audio each.
DEFAULT_STREAM_CHUNK_FRAMES = 64

Backend = Literal["torch"]
EngineBackend = Literal["onnxruntime"]


@dataclass
class GenerationResult:
    audio: torch.Tensor  # (B, channels, samples) float32 on the CPU
    sample_rate: int
    seed: int
    latents: torch.Tensor  # (B, C, frames) float32: the denoised window before decoding
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def paths(self, path: str | Path) -> list[Path]:
        """Where `save(path)` writes: `path` itself for one clip, else name_0, name_1, …"""
        path = Path(path)
        if self.audio.shape[0] == 1:
            return [path]
        return [path.with_name(f"{path.stem}_{k}{path.suffix}") for k in range(self.audio.shape[0])]

    def save(
        self,
        path: str | Path,
        sample_format: SampleFormat = "pcm16",
        clip: bool = True,
        normalize: bool = False,
    ) -> list[Path]:
        check_output_path(path)
        return [
            write_audio(p, clip_audio, self.sample_rate, sample_format, clip, normalize)
            for p, clip_audio in zip(self.paths(path), self.audio, strict=True)
        ]


@contextmanager
def _stage(timings: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Seconds of a stage: CUDA events around it on a GPU (device time from its first queued
    kernel to its last), perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        end.synchronize()
        timings[name] = start.elapsed_time(end) / 1e3
        return
    began = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - began


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to run on (default: CUDA when available), refused clearly if unusable."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine; use device 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device} is not supported; use cpu or cuda")
    return device


class StableAudio:
    """A loaded model (through any backend's components) and the pipeline that samples it."""

    def __init__(self, components: Components) -> None:
        self.components = components
        self.device, self.dtype = components.device, components.dtype

    @property
    def config(self) -> StableAudioConfig:
        return self.components.config

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_REPO,
        backend: Backend = "torch",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        t5_dtype: torch.dtype = torch.float32,
        token: str | None = None,
        layout: Layout = "auto",
        kernels: KernelChoice = "auto",
    ) -> StableAudio:
        """Load from a Hub repo id, a local folder, or "tiny-random" / "tiny-random-small" (seeded
        random weights of SAO 1.0's or Small's structure).

        T5 runs in fp32 by default whatever `dtype` is; `t5_dtype=torch.float16` casts it as
        stable-audio-tools does, to reproduce its conditioning exactly. `kernels` picks the
        DiT attention and VAE Snake maths: "auto" (Triton on CUDA, torch elsewhere), "triton",
        "compiled" (Snake fused by torch.compile) or "torch".
        """
        if backend != "torch":
            raise ConfigError(
                f"backend {backend!r} runs exported engines: use "
                f"StableAudio.from_engines(folder, backend={backend!r})"
            )
        device = resolve_device(device)
        chosen = resolve_kernels(kernels, device)
        if str(model) in RANDOM_MODELS:
            loaded = random_model(RANDOM_MODELS[str(model)], dtype=dtype, device=device, t5_dtype=t5_dtype)
        else:
            loaded = load_stable_audio(
                model, layout=layout, dtype=dtype, device=device, t5_dtype=t5_dtype, token=token
            )
        use_kernels(chosen, loaded.dit, loaded.vae)
        return cls(TorchComponents(loaded))

    @classmethod
    def from_engines(
        cls,
        folder: str | Path,
        backend: EngineBackend = "onnxruntime",
        device: torch.device | str | None = "cpu",
        model: str | Path | None = None,
    ) -> StableAudio:
        """Run an engine folder written by sa-export. With `model`, the folder must have been
        built from that checkpoint's weights (checked by fingerprint)."""
        if backend != "onnxruntime":
            raise ConfigError(f"engine backend {backend!r} is not available yet; use 'onnxruntime'")
        from stable_audio_rt.runtime.onnxruntime_backend import OrtComponents

        return cls(OrtComponents(Path(folder), resolve_device(device), model))

    def generate(self, prompt: str | Sequence[str], *, progress: bool = False, **options) -> GenerationResult:
        """Generate audio; options are the fields of `GenerationRequest` (seconds_total, steps,
        cfg_scale, seed, negative_prompt, num_outputs, init_audio, inpaint_audio, ...)."""
        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        return self.run(GenerationRequest(prompts=prompts, **options), progress=progress)

    def run(self, request: GenerationRequest, progress: bool = False) -> GenerationResult:
        return self.run_resolved(resolve_request(request, self.config), progress)

    def run_resolved(self, resolved: ResolvedRequest, progress: bool = False) -> GenerationResult:
        """Run a request already checked against this model's config (see `resolve_request`)."""
        timings: dict[str, float] = {}
        chunk, overlap = self._vae_chunking(resolved)
        self._check(resolved, chunk)
        latents = self._sample(resolved, timings, progress)
        with torch.no_grad(), _stage(timings, "decode", self.device):
            audio = decode_latents(self._decode, latents, self.config.vae, chunk, overlap)
        with _stage(timings, "postprocess", self.device):
            audio = audio[:, :, resolved.clip(self.config.sample_rate)].float().cpu()
        return GenerationResult(audio, self.config.sample_rate, resolved.seed, latents.float().cpu(), timings)

    def generate_stream(self, prompt: str | Sequence[str], **options) -> Iterator[torch.Tensor]:
        """Like `generate`, but yields the clip's audio (B, channels, n) float32 on the CPU in
        consecutive pieces as the VAE decodes them, so playback can start before the decode ends.
        The pieces concatenate to `generate(...).audio` (within float error)."""
        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        resolved = resolve_request(GenerationRequest(prompts=prompts, **options), self.config)
        chunk, overlap = self._vae_chunking(resolved)
        chunk = chunk if chunk is not None else DEFAULT_STREAM_CHUNK_FRAMES
        overlap = overlap if overlap is not None else decoder_receptive_frames(self.config.vae)
        check_chunking(self.config.vae, chunk, overlap)
        self._check(resolved, chunk)
        latents = self._sample(resolved, {}, progress=False)
        clip = resolved.clip(self.config.sample_rate)
        position = 0
        with torch.no_grad():
            for piece in decode_chunks(
                self._decode, latents, self.config.vae.downsampling_ratio, chunk, overlap
            ):
                lo, hi = max(clip.start, position), min(clip.stop, position + piece.shape[-1])
                if lo < hi:
                    yield piece[..., lo - position : hi - position].float().cpu()
                position += piece.shape[-1]

    def _sample(self, resolved: ResolvedRequest, timings: dict[str, float], progress: bool) -> torch.Tensor:
        """Conditioning, plan and sampling: the request's final latents (B, C, frames)."""
        with torch.no_grad():
            with _stage(timings, "conditioning", self.device):
                context, global_cond = self._condition(resolved)
            with _stage(timings, "plan", self.device):
                plan = self._plan(resolved, context, global_cond)
            with _stage(timings, "sampling", self.device):
                bar = tqdm(total=plan.steps, desc="sampling", unit="step", disable=not progress)
                latents = run_plan(plan, on_step=lambda _: bar.update())
                bar.close()
        return latents

    def _check(self, resolved: ResolvedRequest, chunk: int | None) -> None:
        request = resolved.request
        self.components.check_request(
            batch=resolved.batch,
            uses_cfg=request.cfg_scale != 1.0,
            frames=resolved.frames,
            decode_frames=min(chunk or resolved.frames, resolved.frames),
            encodes=request.init_audio is not None or request.inpaint_audio is not None,
        )

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.components.decode(latents)

    def _vae_chunking(self, resolved: ResolvedRequest) -> tuple[int | None, int | None]:
        chunk = resolved.request.vae_chunk
        if chunk == "auto":
            chunk = auto_chunk_frames(self.config.vae, self.device, self.dtype)
        return chunk, resolved.request.vae_overlap

    def _condition(self, resolved: ResolvedRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, S, D) context and (R, G) global: rows [cond; uncond] when CFG is on."""
        request, batch = resolved.request, resolved.batch
        prompts = [p for p in request.prompts for _ in range(request.num_outputs)]
        values = {
            "seconds_start": torch.full((batch,), float(request.seconds_start)),
            "seconds_total": torch.full((batch,), float(resolved.seconds_total)),
        }
        conditioner = self.components.conditioner
        context, global_cond = conditioner(prompts, values)
        if request.cfg_scale == 1.0:
            return context, global_cond
        if request.negative_prompt is not None:
            negative, _ = conditioner([request.negative_prompt] * batch, values)
        else:
            negative = torch.zeros_like(context)
        # The global condition is the positive one in both halves (reference-spec §3).
        return torch.cat((context, negative)), torch.cat((global_cond, global_cond))

    def _encode_reference(self, audio: torch.Tensor, randomness: RequestRandomness) -> torch.Tensor:
        """One posterior sample of the reference's latents (1, C, frames), noise drawn next."""
        mean, std = self.components.encode_moments(audio[None])
        return bottleneck_sample(mean, std, randomness.randn(*mean.shape))

    def _plan(
        self, resolved: ResolvedRequest, context: torch.Tensor, global_cond: torch.Tensor
    ) -> RequestPlan:
        request = resolved.request
        shape = (resolved.batch, self.config.dit.io_channels, resolved.frames)
        randomness = RequestRandomness(resolved.seed, self.device)
        if self.config.objective == "rf_denoiser":
            return self._plan_rf(resolved, context, global_cond, shape, randomness)
        sigmas = polyexponential_sigmas(
            request.steps, request.sigma_min, resolved.sigma_max, device=self.device
        )

        x0 = randomness.randn(*shape) * sigmas[0]
        reference = None
        if resolved.init_audio is not None:
            x0 = x0 + self._encode_reference(resolved.init_audio, randomness).expand(shape)
        elif resolved.inpaint_audio is not None:
            reference = self._encode_reference(resolved.inpaint_audio, randomness).expand(shape).contiguous()

        if request.noise == "brownian":
            step_noise = brownian_step_noise(sigmas, shape, randomness.brownian_seed(), self.device)
        else:
            step_noise = gaussian_step_noise(randomness, request.steps, shape)

        inpaint = None
        if reference is not None:
            inpaint = InpaintPlan(
                keep=resolved.inpaint_keep.to(self.device).view(1, 1, -1),
                reference=reference,
                renoise=randomness.randn(request.steps, *shape),
            )
        denoiser = self.components.step_model(sigma_to_t(sigmas[:-1]), context, global_cond)
        return self._build(resolved, denoiser, x0, step_table(sigmas), step_noise, context, inpaint)

    def _plan_rf(
        self,
        resolved: ResolvedRequest,
        context: torch.Tensor,
        global_cond: torch.Tensor,
        shape: tuple[int, int, int],
        randomness: RequestRandomness,
    ) -> RequestPlan:
        """Pingpong on the rf objective: the DiT sees the raw time t; audio-to-audio starts from
        (1 − t0)·z_ref + t0·ε as stable-audio-tools mixes it."""
        steps, t0 = resolved.request.steps, resolved.sigma_max
        times = logsnr_shifted_times(steps, t0, device=self.device)
        x0 = randomness.randn(*shape)
        if resolved.init_audio is not None:
            reference = self._encode_reference(resolved.init_audio, randomness).expand(shape)
            x0 = reference * (1 - t0) + x0 * t0
        step_noise = pingpong_step_noise(randomness, steps, shape)
        denoiser = self.components.step_model(times[:-1], context, global_cond)
        return self._build(resolved, denoiser, x0, pingpong_table(times), step_noise, context, None)

    def _build(
        self,
        resolved: ResolvedRequest,
        denoiser: StepModel,
        x0: torch.Tensor,
        table: torch.Tensor,
        step_noise: torch.Tensor,
        context: torch.Tensor,
        inpaint: InpaintPlan | None,
    ) -> RequestPlan:
        request = resolved.request
        uses_cfg = context.shape[0] == 2 * resolved.batch
        return build_plan(
            denoiser,
            x0,
            table,
            step_noise,
            request.cfg_scale,
            uses_cfg,
            self.dtype,
            request.guidance_settings,
            inpaint,
        )
