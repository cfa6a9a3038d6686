"""What a backend provides to the pipeline: the conditioner, a per-request DiT step, the VAE.

The pipeline, the plan and the sampler never ask which backend they hold; a backend only
replaces these calls. `TorchComponents` runs the PyTorch models (with the exact savings of
reference-spec §2: context K/V and the σ-only global tokens computed once per request).
"""

from __future__ import annotations

from typing import Protocol

import torch

from stable_audio_rt.models.conditioners import Conditioner
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.loading import StableAudioModel


class StepModel(Protocol):
    """The DiT bound to one request: v for step i's model input."""

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor: ...

    def buffers(self) -> list[torch.Tensor]: ...


class Components(Protocol):
    config: StableAudioConfig
    device: torch.device
    dtype: torch.dtype  # of the DiT's and the VAE's inputs
    conditioner: Conditioner

    def check_request(
        self, batch: int, uses_cfg: bool, frames: int, decode_frames: int, encodes: bool
    ) -> None:
        """Raise, before any work, if this backend cannot run such a request (shape profiles)."""
        ...

    def step_model(self, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> StepModel:
        """t: (N,) diffusion time per step; context (R, S, D) and global (R, G) per DiT row."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def encode_moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchDiTStep:
    """Per-step DiT call with the request's global tokens (N, R, 1, D) and context K/V precomputed."""

    def __init__(self, dit: DiT, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> None:
        param = next(dit.parameters())
        rows, steps = context.shape[0], t.shape[0]
        self.dit = dit
        with torch.no_grad():
            # (N·R,) time × (N·R, G) global → one batched pass; the token depends only on σ and the condition.
            tokens = dit.global_token(
                t.to(param.device).repeat_interleave(rows), global_cond.to(param).repeat(steps, 1)
            )
            self.global_tokens = tokens.view(steps, rows, 1, -1).contiguous()
            self.context_kv = [(k.contiguous(), v.contiguous()) for k, v in dit.context_kv(context.to(param))]

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor:
        return self.dit.forward_with_context_kv(model_input, self.global_tokens[i], self.context_kv)

    def buffers(self) -> list[torch.Tensor]:
        return [self.global_tokens, *(t for kv in self.context_kv for t in kv)]


class TorchComponents:
    def __init__(self, model: StableAudioModel) -> None:
        self.model = model
        self.config = model.config
        self.conditioner = model.conditioner
        param = next(model.dit.parameters())
        self.device, self.dtype = param.device, param.dtype

    def check_request(
        self, batch: int, uses_cfg: bool, frames: int, decode_frames: int, encodes: bool
    ) -> None:
        """PyTorch runs any shape."""

    def step_model(self, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> TorchDiTStep:
        return TorchDiTStep(self.model.dit, t, context, global_cond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.vae.decode(latents.to(self.device, self.dtype))

    def encode_moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.model.vae.encode_moments(audio.to(self.device, self.dtype))
        return mean.float(), std.float()
