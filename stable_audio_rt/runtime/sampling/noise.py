"""The random draws of one request, in the order stable-audio-tools makes them (reference-spec §3b).

Order, all from explicit generators seeded with the request's seed (global RNG state is never
touched):
  1. the initial noise randn([B, C, T]) on the device;
  2. audio-to-audio only: the VAE posterior sample's noise, randn of the latent shape;
  3. `brownian`: the Brownian tree's seed, randint(0, 2**63 − 1, []) from the CPU generator
     (on a CPU device that is the same generator, so it continues after 1–2; on CUDA it is a
     fresh CPU generator seeded with the seed, as torch.manual_seed leaves it);
     `gaussian`: the N − 1 step noises, randn([N − 1, B, C, T]) on the device;
  4. inpainting only: the fresh noise that re-noises the kept region after each step.

The pingpong sampler (rf models) draws 1–2, then one randn([B, C, T]) per step, the last one
included (stable-audio-tools' randn_like after every step).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch

NoiseKind = Literal["gaussian", "brownian"]
NOISE_KINDS: tuple[NoiseKind, ...] = ("gaussian", "brownian")
# k-diffusion's BatchedBrownianTree draws its entropy as randint(0, 2**63 − 1, []).
BROWNIAN_SEED_HIGH = 2**63 - 1


class RequestRandomness:
    """The generators of one request, handing out draws in the reference's order."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        self.device = device
        self.device_generator = torch.Generator(device).manual_seed(seed)
        if device.type == "cpu":
            self.cpu_generator = self.device_generator
        else:
            self.cpu_generator = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> torch.Tensor:
        """float32 standard normal on the device, from the device generator."""
        return torch.randn(shape, generator=self.device_generator, device=self.device)

    def brownian_seed(self) -> int:
        return int(torch.randint(0, BROWNIAN_SEED_HIGH, [], generator=self.cpu_generator))


def gaussian_step_noise(randomness: RequestRandomness, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape): i.i.d. N(0, 1) for the N − 1 steps that add noise; the last row is zeros."""
    noise = torch.zeros((steps, *shape), device=randomness.device)
    noise[:-1] = randomness.randn(steps - 1, *shape)
    return noise


def pingpong_step_noise(randomness: RequestRandomness, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape): one draw per step, made one step at a time as the reference makes them (a
    single (N, ...) draw would not give the same numbers on CUDA)."""
    return torch.stack([randomness.randn(*shape) for _ in range(steps)])


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
