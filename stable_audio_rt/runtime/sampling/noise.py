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
