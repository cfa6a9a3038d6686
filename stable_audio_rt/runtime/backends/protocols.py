"""What a backend provides to the pipeline: the conditioner, a per-request DiT step, the VAE.

The pipeline, the sampler state and the step never ask which backend they hold; a backend only
replaces these calls.
"""

from __future__ import annotations

from typing import Protocol

import torch

from stable_audio_rt.models.conditioners import Conditioner
from stable_audio_rt.models.config import StableAudioConfig


class StepModel(Protocol):
    """The DiT for one request shape: buffers allocated up front, bound to each request in place,
    so a CUDA graph captured over `bind` and the steps replays with the next request's values."""

    def bind(self, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> None:
        """Fill the buffers in place: t (N,) diffusion time per step, context (R, S, D), global (R, G)."""
        ...

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor:
        """v for step i's model input."""
        ...

    def buffers(self) -> list[torch.Tensor]: ...


class Components(Protocol):
    config: StableAudioConfig
    device: torch.device
    dtype: torch.dtype  # of the DiT's and the VAE's inputs
    conditioner: Conditioner
    capturable: bool  # whether a CUDA graph can capture this backend's calls

    def check_request(
        self, batch: int, uses_cfg: bool, frames: int, decode_frames: int, encodes: bool
    ) -> None:
        """Raise, before any work, if this backend cannot run such a request (shape profiles)."""
        ...

    def most_frames(self) -> int:
        """The longest window (latent frames) this backend runs (its profile; the model's own
        window bounds every request too)."""
        ...

    def least_decode_frames(self) -> int:
        """The shortest stretch of latent frames the decoder takes in one call (its profile)."""
        ...

    def step_model(self, steps: int, rows: int) -> StepModel:
        """The DiT step for N steps of R rows, its buffers allocated on the device."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def encode_moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
