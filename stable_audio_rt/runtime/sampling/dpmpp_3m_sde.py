"""Stable Audio Open 1.0's sampler ("v" objective): dpmpp-3m-sde on the polyexponential σ
schedule, with Brownian-tree or Gaussian step noise and RePaint inpainting (reference-spec §3)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch

from stable_audio_rt.errors import RequestError
from stable_audio_rt.runtime.sampling.noise import RequestRandomness
from stable_audio_rt.runtime.sampling.sampler import Sampler
from stable_audio_rt.runtime.sampling.table import Col

if TYPE_CHECKING:
    from stable_audio_rt.runtime.region import RequestBuffers
    from stable_audio_rt.runtime.requests import GenerationRequest, ResolvedRequest

# reference-spec §3 defaults of Stable Audio Open 1.0.
DEFAULT_STEPS = 100
DEFAULT_CFG_SCALE = 7.0
DEFAULT_SIGMA_MIN = 0.3
DEFAULT_SIGMA_MAX = 500.0
# Audio-to-audio: init_noise_level is σmax (stable-audio-tools' default).
DEFAULT_INIT_NOISE_LEVEL = 1.0
# The highest σmax (or init_noise_level) taken: twenty times the schedule's own top (reference-spec
# §3, 500), a hundred times the top of stable-audio-tools' init-noise slider (100). Past it the
# start is noise alone however high; far past it (3e38) the sampler's maths overflow after the run.
MAX_SIGMA = 1e4


class DpmPP3MSDE(Sampler):
    objective, name = "v", "dpmpp-3m-sde"
    default_steps, default_cfg_scale = DEFAULT_STEPS, DEFAULT_CFG_SCALE
    default_init_noise_level = DEFAULT_INIT_NOISE_LEVEL

    def check(self, request: GenerationRequest) -> None:
        sigma_max = self.start_level(request)
        name = "init_noise_level" if request.init_audio is not None else "sigma_max"
        if not request.sigma_min > 0:
            raise RequestError(f"sigma_min must be greater than 0, got {request.sigma_min}")
        if request.init_audio is not None and request.sigma_max != DEFAULT_SIGMA_MAX:
            raise RequestError(
                "sigma_max is text-to-audio's start: audio-to-audio starts at init_noise_level instead, "
                "so sigma_max would do nothing; give init_noise_level, or leave sigma_max out"
            )
        if sigma_max > MAX_SIGMA:
            raise RequestError(
                f"{name} must be at most {MAX_SIGMA:g} (the schedule's default top is {DEFAULT_SIGMA_MAX:g}; "
                f"past that the start is noise alone), got {sigma_max:g}"
            )
        if not sigma_max > request.sigma_min:
            raise RequestError(
                f"{name} ({sigma_max}) must be greater than the schedule's end, σmin "
                f"({request.sigma_min}): from there down to σmin there would be no steps to take"
            )

    def start_level(self, request: GenerationRequest) -> float:
        return request.init_noise_level if request.init_audio is not None else request.sigma_max

    def write(
        self,
        request: RequestBuffers,
        resolved: ResolvedRequest,
        randomness: RequestRandomness,
        rows: slice = slice(None),
    ) -> None:
        settings, inputs, state, device = resolved.request, request.inputs, request.state, randomness.device
        steps, latents = settings.steps, tuple(inputs.noise[rows].shape)
        sigmas = polyexponential_sigmas(steps, settings.sigma_min, resolved.start_level, device=device)
        inputs.start_scale.copy_(sigmas[0])
        inputs.reference_scale.fill_(1.0)
        if settings.noise == "brownian":
            step_noise = brownian_step_noise(sigmas, latents, randomness.brownian_seed(), device)
        else:
            step_noise = gaussian_step_noise(randomness, steps, latents)
        state.step_noise[:, rows].copy_(step_noise)
        if state.inpaint is not None:
            state.inpaint.keep.copy_(resolved.inpaint_keep.view(1, 1, -1))
            state.inpaint.renoise[:, rows].copy_(randomness.randn(steps, *latents))
        inputs.times.copy_(sigma_to_t(sigmas[:-1]))
        state.scalars.copy_(step_table(sigmas))


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


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """The DiT's time input for a v-model: t = atan(σ)·2/π, in k-diffusion's operation order."""
    return sigma.atan() / math.pi * 2


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


def gaussian_step_noise(randomness: RequestRandomness, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape): i.i.d. N(0, 1) for the N − 1 steps that add noise; the last row is zeros."""
    noise = torch.zeros((steps, *shape), device=randomness.device)
    noise[:-1] = randomness.randn(steps - 1, *shape)
    return noise


def brownian_step_noise(
    sigmas: torch.Tensor, shape: tuple[int, ...], seed: int, device: torch.device
) -> torch.Tensor:
    """(N, *shape): z_i = (W(σ_{i+1}) − W(σ_i)) / √(σ_i − σ_{i+1}) of one torchsde Brownian tree.

    The tree spans [min non-zero σ, max σ] with w0 = 0 as k-diffusion's BrownianTreeNoiseSampler
    builds it (default tolerance), and is queried in step order with the pair sorted, the sign
    restored, as the reference does. The last row (σ_N = 0, no noise) is zeros.
    """
    import torchsde  # here, its only user: the offline GPU image lacks it and runs everything else

    sigmas = sigmas.to(device)
    positive = sigmas[sigmas > 0]
    noise = torch.zeros((len(sigmas) - 1, *shape), device=device)
    with warnings.catch_warnings():
        # torchsde rounds the tree's ends and warns when a query at an end falls just outside;
        # it clamps the query, exactly as it does inside the reference.
        warnings.filterwarnings("ignore", message="Should have", module="torchsde")
        tree = torchsde.BrownianTree(
            positive.min(), torch.zeros(shape, device=device), sigmas.max(), entropy=seed
        )
        for i in range(len(sigmas) - 2):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            # tree(a, b) = W(b) − W(a) for a < b; σ decreases, so the increment is −tree(σ_{i+1}, σ_i).
            noise[i] = -tree(sigma_next, sigma) / (sigma - sigma_next).abs().sqrt()
    return noise
