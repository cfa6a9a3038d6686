"""FLOPs of each stage, counted from the config and the request's shapes, in one place.

Only matrix products and convolutions are counted (2 FLOPs per multiply-add); norms, softmax,
activations and elementwise work are not, so these are the work a GEMM floor bounds. The
context K/V and the σ-only global tokens are computed once per request, as the runtime does
(reference-spec §2), so they are counted in the request's precompute, not in each step.
"""

from __future__ import annotations

from dataclasses import dataclass

from stable_audio_rt.models.config import DiTConfig, OobleckConfig, StableAudioConfig
from stable_audio_rt.models.vae import OUTER_KERNEL, RES_UNIT_DILATIONS, RES_UNIT_KERNEL
from stable_audio_rt.runtime.sampling.guidance import dit_rows


def matmul(m: int, k: int, n: int) -> int:
    """(m × k) @ (k × n)."""
    return 2 * m * k * n


@dataclass(frozen=True)
class Gemm:
    """One product of the DiT step: m rows (tokens × batch rows) by k → n, `count` times."""

    name: str
    m: int
    k: int
    n: int
    count: int

    @property
    def flops(self) -> int:
        return matmul(self.m, self.k, self.n) * self.count


def dit_step_gemms(dit: DiTConfig, rows: int, frames: int) -> list[Gemm]:
    """The weight products of one DiT call on `rows` rows of `frames` latent frames (the
    context's K and V are made once per request: `dit_precompute_flops`)."""
    tokens = rows * (frames + 1)  # the prepended global token
    d, c = dit.embed_dim, dit.io_channels
    return [
        Gemm("preprocess_conv", rows * frames, c, c, 1),
        Gemm("project_in", rows * frames, c, d, 1),
        Gemm("to_qkv", tokens, d, 3 * d, dit.depth),
        Gemm("self_attn.to_out", tokens, d, d, dit.depth),
        Gemm("cross_attn.to_q", tokens, d, d, dit.depth),
        Gemm("cross_attn.to_out", tokens, d, d, dit.depth),
        Gemm("ff.proj_in", tokens, d, 2 * dit.ff_inner_dim, dit.depth),
        Gemm("ff.proj_out", tokens, dit.ff_inner_dim, d, dit.depth),
        Gemm("project_out", tokens, d, c, 1),
        Gemm("postprocess_conv", rows * frames, c, c, 1),
    ]


def dit_step_attention_flops(dit: DiTConfig, rows: int, frames: int, context_tokens: int) -> int:
    """QKᵀ and PV of self- and cross-attention, all heads (H·Dh = embed_dim)."""
    t, d = frames + 1, dit.embed_dim
    per_block = 2 * matmul(t, d, t) + 2 * matmul(t, d, context_tokens)
    return rows * dit.depth * per_block


def dit_step_flops(dit: DiTConfig, rows: int, frames: int, context_tokens: int) -> int:
    gemms = sum(g.flops for g in dit_step_gemms(dit, rows, frames))
    return gemms + dit_step_attention_flops(dit, rows, frames, context_tokens)


def dit_precompute_flops(dit: DiTConfig, rows: int, steps: int, context_tokens: int) -> int:
    """Per request: the context projection and K/V of every block, and one global token per
    step and row (global embedding + timestep embedding MLPs)."""
    s, d, dc = rows * context_tokens, dit.embed_dim, dit.context_dim
    cond = matmul(s, dit.cond_token_dim, dc) + matmul(s, dc, dc)
    kv = dit.depth * matmul(s, dc, 2 * dc)
    per_token = (
        matmul(1, dit.global_cond_dim, d)
        + matmul(1, d, d)
        + matmul(1, dit.timestep_features_dim, d)
        + matmul(1, d, d)
    )
    return cond + kv + steps * rows * per_token


def conv_flops(c_in: int, c_out: int, kernel: int, length_out: int) -> int:
    return 2 * c_in * c_out * kernel * length_out


def vae_decode_flops(vae: OobleckConfig, rows: int, frames: int) -> int:
    """The decoder's convolutions: in conv, per block a transposed conv (kernel 2·stride) and
    three residual units (dilated k7 + k1), then the out conv."""
    widths = [vae.channels * m for m in vae.channel_multiples]
    length = frames
    total = conv_flops(vae.latent_dim, widths[-1], OUTER_KERNEL, length)
    for c_in, c_out, stride in zip(
        reversed(widths), reversed([vae.channels, *widths[:-1]]), reversed(vae.strides), strict=True
    ):
        total += conv_flops(c_in, c_out, 2 * stride, length)  # over input positions
        length *= stride
        total += len(RES_UNIT_DILATIONS) * (
            conv_flops(c_out, c_out, RES_UNIT_KERNEL, length) + conv_flops(c_out, c_out, 1, length)
        )
    total += conv_flops(vae.channels, vae.audio_channels, OUTER_KERNEL, length)
    return rows * total


def t5_flops(d_model: int, d_ff: int, layers: int, tokens: int, rows: int) -> int:
    """T5 encoder: Q, K, V, O projections, QKᵀ and PV, and the feed-forward, per layer."""
    t = tokens
    per_layer = 4 * matmul(t, d_model, d_model) + 2 * matmul(t, d_model, t) + 2 * matmul(t, d_model, d_ff)
    return rows * layers * per_layer


@dataclass(frozen=True)
class RequestFlops:
    t5: int
    precompute: int
    dit_step: int
    steps: int
    vae_decode: int

    @property
    def sampling(self) -> int:
        return self.dit_step * self.steps

    @property
    def total(self) -> int:
        return self.t5 + self.precompute + self.sampling + self.vae_decode


def request_flops(
    config: StableAudioConfig,
    batch: int,
    frames: int,
    steps: int,
    uses_cfg: bool,
    t5_dims: tuple[int, int, int],
) -> RequestFlops:
    """FLOPs of one request; `t5_dims` = (d_model, d_ff, layers) of the loaded T5."""
    rows = dit_rows(batch, uses_cfg)
    cond = config.conditioning
    prompts = rows  # one prompt per DiT row: the negative prompt is encoded too
    return RequestFlops(
        t5=t5_flops(*t5_dims, cond.t5_max_length, prompts),
        precompute=dit_precompute_flops(config.dit, rows, steps, cond.context_tokens),
        dit_step=dit_step_flops(config.dit, rows, frames, cond.context_tokens),
        steps=steps,
        vae_decode=vae_decode_flops(config.vae, batch, frames),
    )
