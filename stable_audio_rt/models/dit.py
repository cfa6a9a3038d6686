"""The Stable Audio diffusion transformer (reference-spec §2).

x: (B, C, T) latents, t: (B,) diffusion time, context: (B, S, cond_token_dim),
global_cond: (B, global_cond_dim) → v: (B, C, T). No masks; the one bias, optional, weighs the
context's merged pads (`models.attention.merge_zero_tokens`: the same maths, fewer keys).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stable_audio_rt.models.attention import SDPA, AttentionFunctions, rope_tables
from stable_audio_rt.models.config import DiTConfig

# stable-audio-tools' Attention(qk_norm_eps=1e-6), the LayerNorm eps of qk_norm "ln".
QK_NORM_EPS = 1e-6


def plus_linear(residual: torch.Tensor, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """residual + linear(x): the block's residual sums, in one pass where the linear has a fused
    form (`forward_plus`, the CPU's packed linears: the sum made before rounding to the dtype)."""
    fused = getattr(linear, "forward_plus", None)
    return fused(x, residual) if fused is not None else residual + linear(x)


class QKNorm(nn.Module):
    """LayerNorm over the head dim of queries and keys, before RoPE (Stable Audio Open Small's
    qk_norm "ln"; stable-audio-tools' Attention, eps QK_NORM_EPS), back in the input dtype."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.q_norm = nn.LayerNorm(head_dim, eps=QK_NORM_EPS)
        self.k_norm = nn.LayerNorm(head_dim, eps=QK_NORM_EPS)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q).to(q.dtype), self.k_norm(k).to(k.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.qk_norm = QKNorm(dim // num_heads) if qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention: AttentionFunctions,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """residual + the self-attention of x."""
        b, t, _ = x.shape
        # (B, T, 3D) → 3 × (B, H, T, Dh)
        q, k, v = self.to_qkv(x).view(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        out = attention.self_attention(q, k, v, cos, sin)
        return plus_linear(residual, self.to_out, out.transpose(1, 2).reshape(b, t, -1))


class CrossAttention(nn.Module):
    def __init__(
        self, dim: int, context_dim: int, num_heads: int, num_kv_heads: int, qk_norm: bool = False
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * context_dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.qk_norm = QKNorm(dim // num_heads) if qk_norm else None

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the context, each (B, Hkv, S, Dh), keys normed. Constant over sampling steps."""
        b, s, _ = context.shape
        k, v = self.to_kv(context).view(b, s, 2, self.num_kv_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm is not None:
            k = self.qk_norm.k_norm(k).to(v.dtype)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        attention: AttentionFunctions,
        residual: torch.Tensor,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """residual + the cross-attention of x to the context's K and V (merged tokens weighed by
        `key_bias`, `models.attention.merge_zero_tokens`)."""
        b, t, _ = x.shape
        q = self.to_q(x).view(b, t, self.num_heads, -1).transpose(1, 2)
        if self.qk_norm is not None:
            q = self.qk_norm.q_norm(q).to(q.dtype)
        out = (
            attention.cross_attention(q, *kv)
            if key_bias is None
            else attention.cross_attention(q, *kv, key_bias=key_bias)
        )
        return plus_linear(residual, self.to_out, out.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    """Linear → [a | g] → a·SiLU(g) → Linear (reference-spec §2.8)."""

    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * inner_dim)
        self.proj_out = nn.Linear(inner_dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + the feed-forward of x."""
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return plus_linear(residual, self.proj_out, a * F.silu(gate))


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.self_attn_norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.self_attn = SelfAttention(dim, config.num_heads, config.qk_norm)
        self.cross_attn_norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.cross_attn = CrossAttention(
            dim, config.context_dim, config.num_heads, config.num_kv_heads, config.qk_norm
        )
        self.ff_norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.ff = SwiGLU(dim, config.ff_inner_dim)

    def forward(
        self,
        x: torch.Tensor,
        context_kv: tuple[torch.Tensor, torch.Tensor],
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention: AttentionFunctions,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.self_attn(self.self_attn_norm(x), cos, sin, attention, residual=x)
        x = self.cross_attn(self.cross_attn_norm(x), context_kv, attention, residual=x, key_bias=key_bias)
        return self.ff(self.ff_norm(x), residual=x)


def _mlp(dim_in: int, dim_out: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim_in, dim_out, bias=bias), nn.SiLU(), nn.Linear(dim_out, dim_out, bias=bias)
    )


class DiT(nn.Module):
    def __init__(self, config: DiTConfig, attention: AttentionFunctions = SDPA) -> None:
        super().__init__()
        self.config = config
        self.attention = attention
        dim = config.embed_dim
        self.timestep_freqs = nn.Parameter(torch.empty(config.timestep_features_dim // 2))
        self.timestep_embed = _mlp(config.timestep_features_dim, dim, bias=True)
        self.cond_embed = _mlp(config.cond_token_dim, config.context_dim, bias=False)
        self.global_embed = _mlp(config.global_cond_dim, dim, bias=False)
        self.preprocess_conv = nn.Conv1d(config.io_channels, config.io_channels, 1, bias=False)
        self.project_in = nn.Linear(config.io_channels, dim, bias=False)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.project_out = nn.Linear(dim, config.io_channels, bias=False)
        self.postprocess_conv = nn.Conv1d(config.io_channels, config.io_channels, 1, bias=False)
        # (positions, device) → RoPE cos and sin tables: a plain dict, not buffers, so that
        # `.to(dtype)` leaves them fp32 and no checkpoint carries them.
        self.rope_cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def set_attention(self, attention: AttentionFunctions) -> None:
        self.attention = attention

    def timestep_features(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) → (B, timestep_features_dim): [cos 2π t w, sin 2π t w], cos first (§2.1).

        Computed in fp32 whatever the model's dtype (a σ-dependent quantity, reference-spec §3).
        """
        angles = 2 * math.pi * t.float()[:, None] * self.timestep_freqs.float()[None, :]
        return torch.cat((angles.cos(), angles.sin()), dim=-1).to(self.timestep_freqs.dtype)

    def global_token(self, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """The prepended token (B, 1, D): global embedding + timestep embedding. Depends only on σ."""
        token = self.global_embed(global_cond) + self.timestep_embed(self.timestep_features(t))
        return token.unsqueeze(1)

    def context_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-block cross-attention K/V of the context: the same at every sampling step."""
        context = self.cond_embed(context)
        return [block.cross_attn.context_kv(context) for block in self.blocks]

    def rope(self, positions: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`rope_tables` for `positions` on `device`, built by the first call of each shape (eagerly:
        the warm-up, before any captured region) and the same tensors for every later step."""
        if torch.compiler.is_compiling():
            # Traced (torch.export, torch.compile): the tables stay ops of a possibly symbolic
            # length, and nothing made under tracing (fake tensors) enters the cache.
            return rope_tables(positions, self.config.rotary_dim, self.config.rope_base, device)
        key = (positions, device)
        if key not in self.rope_cache:
            self.rope_cache[key] = rope_tables(
                positions, self.config.rotary_dim, self.config.rope_base, device
            )
        return self.rope_cache[key]

    def forward_with_context_kv(
        self,
        x: torch.Tensor,
        global_token: torch.Tensor,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]],
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The per-step part of the forward, given the σ-only and context-only parts (`key_bias`:
        where the context's zero tokens were merged, `models.attention.merge_zero_tokens`)."""
        if key_bias is not None and not self.attention.takes_key_bias:
            raise ValueError(
                "this DiT's cross-attention takes no key bias (the Triton kernels): bind the context "
                "without merging its zero tokens"
            )
        x = self.preprocess_conv(x) + x
        h = self.project_in(x.transpose(1, 2))  # (B, T, C) → (B, T, D)
        h = torch.cat((global_token, h), dim=1)  # (B, T+1, D), global token at position 0
        cos, sin = self.rope(h.shape[1], h.device)
        for block, kv in zip(self.blocks, context_kv, strict=True):
            h = block(h, kv, cos, sin, self.attention, key_bias)
        out = self.project_out(h).transpose(1, 2)[:, :, 1:]  # drop the global token → (B, C, T)
        return self.postprocess_conv(out) + out

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        return self.forward_with_context_kv(x, self.global_token(t, global_cond), self.context_kv(context))
