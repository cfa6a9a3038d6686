"""Typed configuration of the Stable Audio family, with named presets.

Every number here comes from the checkpoint's own config (see `config_io.py`);
the defaults are Stable Audio Open 1.0 (reference-spec §1) so that the preset
reads as the spec does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from stable_audio_rt.errors import ConfigError

# reference-spec §2.6: stable-audio-tools builds RotaryEmbedding(max(dim_heads // 2, 32)).
MIN_ROTARY_DIM = 32


@dataclass(frozen=True)
class DiTConfig:
    """Diffusion transformer (reference-spec §2)."""

    io_channels: int = 64
    embed_dim: int = 1536
    depth: int = 24
    num_heads: int = 24
    cond_token_dim: int = 768
    global_cond_dim: int = 1536
    # When true, context tokens are projected to embed_dim (Stable Audio Open Small does this).
    project_cond_tokens: bool = False
    # LayerNorm on each head's queries and keys before RoPE (Small's attn_kwargs qk_norm "ln").
    qk_norm: bool = False
    timestep_features_dim: int = 256
    ff_mult: int = 4
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"DiT embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.context_dim % self.head_dim:
            raise ConfigError(
                f"DiT context width {self.context_dim} is not a multiple of the head dim {self.head_dim}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"DiT has {self.num_heads} query heads, not a multiple of its {self.num_kv_heads} KV heads"
            )
        if self.rotary_dim > self.head_dim:
            raise ConfigError(
                f"DiT head dim {self.head_dim} is smaller than the rotary dim {self.rotary_dim} "
                f"(stable-audio-tools rotates max(head_dim // 2, {MIN_ROTARY_DIM}) dims)"
            )
        if self.timestep_features_dim % 2:
            raise ConfigError(f"timestep_features_dim must be even, got {self.timestep_features_dim}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def context_dim(self) -> int:
        """Width of the context tokens inside the blocks (the cross-attention K/V width)."""
        return self.embed_dim if self.project_cond_tokens else self.cond_token_dim

    @property
    def num_kv_heads(self) -> int:
        # stable-audio-tools' Attention derives KV heads from the context width (reference-spec §2.7).
        return self.context_dim // self.head_dim

    @property
    def rotary_dim(self) -> int:
        return max(self.head_dim // 2, MIN_ROTARY_DIM)

    @property
    def ff_inner_dim(self) -> int:
        return self.embed_dim * self.ff_mult


@dataclass(frozen=True)
class OobleckConfig:
    """Oobleck VAE with a VAE bottleneck (reference-spec §5)."""

    audio_channels: int = 2
    channels: int = 128
    channel_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    strides: tuple[int, ...] = (2, 4, 4, 8, 8)
    latent_dim: int = 64

    def __post_init__(self) -> None:
        if len(self.channel_multiples) != len(self.strides):
            raise ConfigError(
                f"Oobleck needs one channel multiple per stride, got {len(self.channel_multiples)} "
                f"multiples and {len(self.strides)} strides"
            )

    @property
    def downsampling_ratio(self) -> int:
        return math.prod(self.strides)


@dataclass(frozen=True)
class NumberConditionerConfig:
    """One number conditioner (reference-spec §6), e.g. seconds_total."""

    id: str
    min_value: float = 0.0
    max_value: float = 512.0


@dataclass(frozen=True)
class T5Dims:
    """A T5 encoder's shape, for FLOP counts and stand-ins where its own config is not at hand."""

    d_model: int
    d_kv: int
    d_ff: int
    layers: int


# t5-base, the text encoder of both models (reference-spec §6; its Hugging Face config).
T5_BASE = T5Dims(d_model=768, d_kv=64, d_ff=3072, layers=12)


@dataclass(frozen=True)
class ConditioningConfig:
    """T5 prompt + number conditioners, and how they feed the DiT (reference-spec §6)."""

    cond_dim: int = 768
    t5_model_name: str = "t5-base"
    t5_max_length: int = 128
    numbers: tuple[NumberConditionerConfig, ...] = (
        NumberConditionerConfig("seconds_start"),
        NumberConditionerConfig("seconds_total"),
    )
    cross_attention_ids: tuple[str, ...] = ("prompt", "seconds_start", "seconds_total")
    global_ids: tuple[str, ...] = ("seconds_start", "seconds_total")
    # stable-audio-tools' NumberEmbedder(dim=256): 128 learned frequencies, features [n, sin, cos].
    number_features_dim: int = 256

    def __post_init__(self) -> None:
        known = {"prompt", *(n.id for n in self.numbers)}
        for cond_id in (*self.cross_attention_ids, *self.global_ids):
            if cond_id not in known:
                raise ConfigError(f"conditioning id {cond_id!r} has no conditioner (known: {sorted(known)})")
        if "prompt" in self.global_ids:
            raise ConfigError("the prompt cannot be a global condition")

    @property
    def context_tokens(self) -> int:
        """Tokens of cross-attention context: T5 tokens plus one per number conditioner."""
        return sum(self.t5_max_length if i == "prompt" else 1 for i in self.cross_attention_ids)

    @property
    def global_dim(self) -> int:
        return self.cond_dim * len(self.global_ids)


Objective = Literal["v", "rf_denoiser"]
OBJECTIVES: tuple[Objective, ...] = ("v", "rf_denoiser")


@dataclass(frozen=True)
class StableAudioConfig:
    """A whole model of the family: DiT, VAE, conditioning and the diffusion objective.

    "v" (1.0): v-prediction on the k-diffusion σ scale, sampled with dpmpp-3m-sde.
    "rf_denoiser" (Small): rectified flow x_t = (1−t)·x0 + t·ε, v = ε − x0, sampled with
    pingpong on a LogSNR-shifted schedule.
    """

    sample_rate: int = 44100
    sample_size: int = 2_097_152
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: OobleckConfig = field(default_factory=OobleckConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    objective: Objective = "v"

    def __post_init__(self) -> None:
        if self.dit.io_channels != self.vae.latent_dim:
            raise ConfigError(
                f"DiT io_channels {self.dit.io_channels} != VAE latent_dim {self.vae.latent_dim}"
            )
        if self.dit.cond_token_dim != self.conditioning.cond_dim:
            raise ConfigError(
                f"DiT cond_token_dim {self.dit.cond_token_dim} != conditioning cond_dim "
                f"{self.conditioning.cond_dim}"
            )
        if self.dit.global_cond_dim != self.conditioning.global_dim:
            raise ConfigError(
                f"DiT global_cond_dim {self.dit.global_cond_dim} != {len(self.conditioning.global_ids)} "
                f"global conditions × {self.conditioning.cond_dim}"
            )
        if self.sample_size % self.vae.downsampling_ratio:
            raise ConfigError(
                f"sample_size {self.sample_size} is not a multiple of the VAE ratio "
                f"{self.vae.downsampling_ratio}"
            )
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"diffusion objective {self.objective!r} is not one of {OBJECTIVES}")

    @property
    def latent_frames(self) -> int:
        return self.sample_size // self.vae.downsampling_ratio

    @property
    def max_seconds(self) -> float:
        """The model's window in seconds: the longest clip it makes."""
        return self.sample_size / self.sample_rate


STABLE_AUDIO_OPEN_1_0 = StableAudioConfig()

# Same structure as 1.0 (GQA 2:1, partial RoPE on 32 of 64 head dims, prepended global
# token, the Oobleck stride pattern, two number conditioners) at a size CPU tests afford.
TINY = StableAudioConfig(
    sample_size=64 * 2048,
    dit=DiTConfig(
        io_channels=8, embed_dim=256, depth=2, num_heads=4, cond_token_dim=128, global_cond_dim=256
    ),
    # channels = 2 · latent_dim as in 1.0: the diffusers port ties the encoder's output width to it.
    vae=OobleckConfig(channels=16, latent_dim=8),
    conditioning=ConditioningConfig(cond_dim=128, t5_max_length=32),
)

# Stable Audio Open Small, as secondary sources and the issue describe its model_config.json
# (not checked against the gated file): a 1.0-shaped VAE, a 16-block 1024-wide DiT with
# qk-norm and projected context tokens, T5 (64 tokens) + seconds_total, 256 latent frames.
_SMALL_NUMBERS = (NumberConditionerConfig("seconds_total", 0.0, 256.0),)
STABLE_AUDIO_OPEN_SMALL = StableAudioConfig(
    sample_size=524_288,
    dit=DiTConfig(
        embed_dim=1024, depth=16, num_heads=8, global_cond_dim=768, project_cond_tokens=True, qk_norm=True
    ),
    conditioning=ConditioningConfig(
        t5_max_length=64,
        numbers=_SMALL_NUMBERS,
        cross_attention_ids=("prompt", "seconds_total"),
        global_ids=("seconds_total",),
    ),
    objective="rf_denoiser",
)

# Small's structure (qk-norm, projected context, seconds_total only, rf objective) at TINY's size.
TINY_SMALL = StableAudioConfig(
    sample_size=64 * 2048,
    dit=DiTConfig(
        io_channels=8,
        embed_dim=256,
        depth=2,
        num_heads=4,
        cond_token_dim=128,
        global_cond_dim=128,
        project_cond_tokens=True,
        qk_norm=True,
    ),
    vae=OobleckConfig(channels=16, latent_dim=8),
    conditioning=ConditioningConfig(
        cond_dim=128,
        t5_max_length=32,
        numbers=_SMALL_NUMBERS,
        cross_attention_ids=("prompt", "seconds_total"),
        global_ids=("seconds_total",),
    ),
    objective="rf_denoiser",
)
