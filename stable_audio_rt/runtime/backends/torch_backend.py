"""The PyTorch backend: the models themselves, with the exact savings of reference-spec §2
(context K/V and the σ-only global tokens computed once per request)."""

from __future__ import annotations

import math

import torch

from stable_audio_rt.models.attention import merge_zero_tokens
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.loading import StableAudioModel

# The merged context's length is padded to a multiple of this: torch's CPU attention runs key
# lengths of a multiple of 16 2-3x faster than their neighbours (2-core AVX512 EPYC, torch 2.13:
# 130 query rows, 16 keys 0.18 ms, 15 keys 0.36 ms; a softmax over a last dim of 15 takes 12x
# one of 16).
MERGED_KEYS_MULTIPLE = 16


class TorchDiTStep:
    """Per-step DiT call with the request's global tokens (N, R, 1, D) and context K/V precomputed
    by `bind` (they depend only on σ and the conditioning).

    merge_zero_tokens: the context's all-zero tokens merged (`merge_zero_tokens`, into as few zero
    tokens as make a multiple of MERGED_KEYS_MULTIPLE keys), so each step attends to the prompt's
    tokens only. The K/V length then depends on the prompt, which a CUDA graph's fixed shapes
    cannot follow: for eager runs (the CPU's), with attention functions that take the bias.
    """

    def __init__(
        self, dit: DiT, steps: int, rows: int, context_tokens: int, merge_zero_tokens: bool = False
    ) -> None:
        param = next(dit.parameters())
        config = dit.config
        self.dit, self.steps, self.rows = dit, steps, rows
        self.merge_zero_tokens = merge_zero_tokens
        empty = dict(device=param.device, dtype=param.dtype)
        self.global_tokens = torch.empty((steps, rows, 1, config.embed_dim), **empty)
        kv_shape = (rows, config.num_kv_heads, context_tokens, config.head_dim)
        self.context_kv = [
            (torch.empty(kv_shape, **empty), torch.empty(kv_shape, **empty)) for _ in dit.blocks
        ]
        # What the steps read: all of context_kv, or its first S' tokens and their bias once merged.
        self.bound_kv = self.context_kv
        self.key_bias: torch.Tensor | None = None

    def bind(self, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> None:
        param = self.global_tokens
        # (N·R,) time × (N·R, G) global → one batched pass.
        tokens = self.dit.global_token(
            t.to(param.device).repeat_interleave(self.rows), global_cond.to(param).repeat(self.steps, 1)
        )
        self.global_tokens.copy_(tokens.view(self.global_tokens.shape))
        context = context.to(param)
        if self.merge_zero_tokens:
            context, self.key_bias = merge_zero_tokens(context, MERGED_KEYS_MULTIPLE)
        # Contiguous (R, Hkv, S', Dh) views at the start of each buffer.
        rows, heads, _, head_dim = self.context_kv[0][0].shape
        shape = (rows, heads, context.shape[1], head_dim)
        size = math.prod(shape)
        self.bound_kv = [
            (k.view(-1)[:size].view(shape), v.view(-1)[:size].view(shape)) for k, v in self.context_kv
        ]
        for (k, v), (k_new, v_new) in zip(self.bound_kv, self.dit.context_kv(context), strict=True):
            k.copy_(k_new)
            v.copy_(v_new)

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor:
        return self.dit.forward_with_context_kv(
            model_input, self.global_tokens[i], self.bound_kv, self.key_bias
        )

    def buffers(self) -> list[torch.Tensor]:
        return [self.global_tokens, *(t for kv in self.context_kv for t in kv)]


class TorchComponents:
    def __init__(self, model: StableAudioModel) -> None:
        self.model = model
        self.config = model.config
        self.conditioner = model.conditioner
        param = next(model.dit.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.capturable = True
        # The CPU's steps attend to the prompt's tokens only (`TorchDiTStep`); a CUDA graph's
        # fixed shapes need the whole context.
        self.merge_zero_tokens = self.device.type == "cpu"

    def check_request(
        self, batch: int, uses_cfg: bool, frames: int, decode_frames: int, encodes: bool
    ) -> None:
        """PyTorch runs any shape."""

    def most_frames(self) -> int:
        return self.config.latent_frames

    def least_decode_frames(self) -> int:
        return 1

    def step_model(self, steps: int, rows: int) -> TorchDiTStep:
        return TorchDiTStep(
            self.model.dit,
            steps,
            rows,
            self.config.conditioning.context_tokens,
            merge_zero_tokens=self.merge_zero_tokens and self.model.dit.attention.takes_key_bias,
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.vae.decode(latents.to(self.device, self.dtype))

    def encode_moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.model.vae.encode_moments(audio.to(self.device, self.dtype))
        return mean.float(), std.float()
