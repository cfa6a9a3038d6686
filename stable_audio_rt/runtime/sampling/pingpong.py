"""Stable Audio Open Small's sampler ("rf_denoiser" objective): pingpong, D = x − t·v then
x = (1 − t')·D + t'·z, on stable-audio-tools' LogSNR-shifted time schedule (reference-spec §4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from stable_audio_rt.errors import RequestError
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import DEFAULT_SIGMA_MAX, DEFAULT_SIGMA_MIN
from stable_audio_rt.runtime.sampling.noise import RequestRandomness
from stable_audio_rt.runtime.sampling.sampler import Sampler
from stable_audio_rt.runtime.sampling.table import Col

if TYPE_CHECKING:
    from stable_audio_rt.runtime.region import RequestBuffers
    from stable_audio_rt.runtime.requests import GenerationRequest, ResolvedRequest

# Stable Audio Open Small's model card: 8 pingpong steps, no CFG.
RF_DEFAULT_STEPS = 8
RF_DEFAULT_CFG_SCALE = 1.0
# Audio-to-audio's starting time t0: stable-audio-tools' web UI default for rf models
# (interfaces/diffusion_cond.py, "roughly halfway style transfer"). generate_diffusion_cond's own
# default of 1 starts from pure noise, the reference weighed (1 − t0) = 0: it would be ignored.
RF_DEFAULT_INIT_NOISE_LEVEL = 0.9
# stable-audio-tools 0.0.20 ConditionedDiffusionModelWrapper: with no sampling shift in the
# config it falls back to LogSNRShift(rate=0, anchor_logsnr=-6.2, logsnr_end=2.0), i.e. times
# spaced uniformly in log-SNR from 2.0 down to −6.2, whatever the sequence length.
LOGSNR_START = -6.2
LOGSNR_END = 2.0


class Pingpong(Sampler):
    objective, name = "rf_denoiser", "pingpong"
    default_steps, default_cfg_scale = RF_DEFAULT_STEPS, RF_DEFAULT_CFG_SCALE
    default_init_noise_level = RF_DEFAULT_INIT_NOISE_LEVEL

    def check(self, request: GenerationRequest) -> None:
        if request.noise != "gaussian":
            raise RequestError(
                "this model's pingpong sampler draws fresh Gaussian noise each step: use noise='gaussian'"
            )
        if request.inpaint_audio is not None:
            raise RequestError(
                "inpainting is not supported for this model (stable-audio-tools inpaints only models "
                "trained with inpainting conditioning); audio-to-audio (init_audio) is"
            )
        if (request.sigma_min, request.sigma_max) != (DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX):
            raise RequestError(
                "sigma_min and sigma_max shape the v-objective's noise schedule; this model's pingpong "
                "sampler runs on times t in (0, 1] and takes neither: leave them out"
            )
        if request.init_audio is not None and not 0 < request.init_noise_level <= 1:
            level = request.init_noise_level
            raise RequestError(
                f"init_noise_level is the starting time t in (0, 1] for this model, got {level}"
            )

    def warnings(self, request: GenerationRequest) -> list[str]:
        if request.init_audio is None or request.init_noise_level != 1:
            return []
        return [
            "init_audio has no effect at init_noise_level 1 on this model: its start (1 − t)·reference "
            "+ t·noise is pure noise there; give a level below 1 (default "
            f"{RF_DEFAULT_INIT_NOISE_LEVEL:g}) to keep some of the reference"
        ]

    def start_level(self, request: GenerationRequest) -> float:
        """The first time t (1 = pure noise; audio-to-audio starts at its init_noise_level)."""
        return request.init_noise_level if request.init_audio is not None else 1.0

    def write(
        self,
        request: RequestBuffers,
        resolved: ResolvedRequest,
        randomness: RequestRandomness,
        rows: slice = slice(None),
    ) -> None:
        """The DiT sees the raw time t; audio-to-audio starts from (1 − t0)·z_ref + t0·ε as
        stable-audio-tools mixes it."""
        inputs, state = request.inputs, request.state
        steps, t0 = resolved.request.steps, resolved.start_level
        times = logsnr_shifted_times(steps, t0, device=randomness.device)
        inputs.start_scale.fill_(t0)  # 1 (pure noise) unless audio-to-audio starts later
        inputs.reference_scale.fill_(1 - t0)
        latents = tuple(inputs.noise[rows].shape)
        state.step_noise[:, rows].copy_(pingpong_step_noise(randomness, steps, latents))
        inputs.times.copy_(times[:-1])
        state.scalars.copy_(pingpong_table(times))


def logsnr_shifted_times(steps: int, t_max: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """N + 1 times of the rf schedule: t = linspace(t_max, 0, N+1) mapped to sigmoid(−logsnr),
    logsnr = LOGSNR_END − t·(LOGSNR_END − LOGSNR_START), with 0 kept at 0 and the first time
    set back to t_max (so for t_max < 1 the second time is the larger, as in the reference).
    float32 on `device` in stable-audio-tools' operation order (its build_schedule +
    LogSNRShift.shift), so the times equal the reference's on that device."""
    t = torch.linspace(t_max, 0, steps + 1, device=device)
    shifted = torch.sigmoid(-(LOGSNR_END - t * (LOGSNR_END - LOGSNR_START)))
    shifted = torch.where(t <= 0, torch.zeros_like(shifted), shifted)
    shifted = torch.where(t >= 1, torch.ones_like(shifted), shifted)
    shifted[0] = t_max
    return shifted


def pingpong_table(times: torch.Tensor) -> torch.Tensor:
    """(N, len(Col)) float32 table of the pingpong sampler on `times` (N + 1 values):
    D = x − t_i·v (c_in 1, c_skip 1, c_out −t_i), then x = (1 − t_{i+1})·D + t_{i+1}·z."""
    t = times.double().cpu()
    table = torch.zeros(len(t) - 1, len(Col), dtype=torch.float64)
    table[:, Col.C_IN] = 1.0
    table[:, Col.C_SKIP] = 1.0
    table[:, Col.C_OUT] = -t[:-1]
    table[:, Col.B] = 1 - t[1:]
    table[:, Col.NOISE] = t[1:]
    table[:, Col.SIGMA_NEXT] = t[1:]
    return table.float()


def pingpong_step_noise(randomness: RequestRandomness, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape): one draw per step, made one step at a time as the reference makes them (a
    single (N, ...) draw would not give the same numbers on CUDA)."""
    return torch.stack([randomness.randn(*shape) for _ in range(steps)])
