"""Noise schedules, denoiser scalings and per-step sampler coefficients (reference-spec §3, §4).

Because the noise levels are fixed before sampling, every step of either sampler is linear with
scalars known up front:

    D_i = c_skip·x + c_out·model(c_in·x, t_i)
    x_{i+1} = a_i x + b_i D_i + A_i (D_i − D_{i−1}) + B_i (D_{i−1} − D_{i−2}) + g_i z_i

so the whole loop runs on device tensors with no host work per step (and can be graph-captured).

- Stable Audio Open 1.0 ("v"): dpmpp-3m-sde on the polyexponential σ schedule.
- Stable Audio Open Small ("rf_denoiser"): pingpong, D = x − t·v then x = (1 − t')·D + t'·z,
  on stable-audio-tools' LogSNR-shifted time schedule.

Scalars are derived in float64 and stored as float32.
"""

from __future__ import annotations

import math
from enum import IntEnum

import torch

# reference-spec §3 defaults of Stable Audio Open 1.0.
DEFAULT_STEPS = 100
DEFAULT_CFG_SCALE = 7.0
DEFAULT_SIGMA_MIN = 0.3
DEFAULT_SIGMA_MAX = 500.0
# Audio-to-audio: init_noise_level is σmax (stable-audio-tools' default).
DEFAULT_INIT_NOISE_LEVEL = 1.0
# Stable Audio Open Small's model card: 8 pingpong steps, no CFG.
RF_DEFAULT_STEPS = 8
RF_DEFAULT_CFG_SCALE = 1.0
# stable-audio-tools 0.0.20 ConditionedDiffusionModelWrapper: with no sampling shift in the
# config it falls back to LogSNRShift(rate=0, anchor_logsnr=-6.2, logsnr_end=2.0), i.e. times
# spaced uniformly in log-SNR from 2.0 down to −6.2, whatever the sequence length.
LOGSNR_START = -6.2
LOGSNR_END = 2.0


def polyexponential_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """N + 1 σ's: exp(ramp·(ln σmax − ln σmin) + ln σmin), ramp = linspace(1, 0, N)^ρ, then 0.

    Computed in float32 on `device` exactly as k-diffusion's get_sigmas_polyexponential does
    there, so the schedule is bit-identical to the reference's on the same device.
    """
    ramp = torch.linspace(1, 0, steps, device=device) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return torch.cat((sigmas, sigmas.new_zeros(1)))


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


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """The DiT's time input for a v-model: t = atan(σ)·2/π, in k-diffusion's operation order."""
    return sigma.atan() / math.pi * 2


class Col(IntEnum):
    """Columns of the per-step scalar table."""

    C_IN = 0  # model input scale 1/√(σ²+1)
    C_SKIP = 1  # 1/(σ²+1)
    C_OUT = 2  # −σ/√(σ²+1)
    A = 3  # coefficient of x
    B = 4  # coefficient of D_i
    D1 = 5  # coefficient of (D_i − D_{i−1})
    D2 = 6  # coefficient of (D_{i−1} − D_{i−2})
    NOISE = 7  # coefficient of z_i
    SIGMA_NEXT = 8  # σ_{i+1}, for re-noising kept regions (inpainting)


def step_table(sigmas: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """(N, len(Col)) float32 table of every per-step scalar for dpmpp-3m-sde on `sigmas`."""
    s = sigmas.double().cpu()
    n = len(s) - 1
    table = torch.zeros(n, len(Col), dtype=torch.float64)
    table[:, Col.C_IN] = 1 / (s[:-1] ** 2 + 1).sqrt()
    table[:, Col.C_SKIP] = 1 / (s[:-1] ** 2 + 1)
    table[:, Col.C_OUT] = -s[:-1] / (s[:-1] ** 2 + 1).sqrt()
    table[:, Col.SIGMA_NEXT] = s[1:]
    h_prev: list[float] = []
    for i in range(n):
        if s[i + 1] == 0:  # last step: x ← D
            table[i, Col.B] = 1.0
            continue
        h = math.log(s[i] / s[i + 1])
        h_eta = h * (eta + 1)
        table[i, Col.A] = math.exp(-h_eta)
        table[i, Col.B] = -math.expm1(-h_eta)
        phi2 = math.expm1(-h_eta) / h_eta + 1
        if len(h_prev) >= 2:
            # φ2·d1 − φ3·d2 with d1, d2 from k-diffusion, expanded into the two differences.
            r0, r1 = h_prev[-1] / h, h_prev[-2] / h
            phi3 = phi2 / h_eta - 0.5
            c = (phi2 * r0 - phi3) / (r0 + r1)
            table[i, Col.D1] = (phi2 + c) / r0
            table[i, Col.D2] = -c / r1
        elif len(h_prev) == 1:
            table[i, Col.D1] = phi2 / (h_prev[-1] / h)
        if eta:
            table[i, Col.NOISE] = s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
        h_prev.append(h)
    return table.float()


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
