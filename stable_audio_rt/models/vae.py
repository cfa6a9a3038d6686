"""Oobleck VAE: encoder, VAE bottleneck and decoder (reference-spec §5).

Convolutions are plain: weight norm is folded into them when weights are loaded.
Snake's parameters stay fp32 and its maths runs in fp32 whatever the activation dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stable_audio_rt.models.config import OobleckConfig

# reference-spec §5: Snake's 1/(e^β + 1e-9) and the bottleneck's softplus(scale) + 1e-4.
SNAKE_EPS = 1e-9
BOTTLENECK_STD_FLOOR = 1e-4
RES_UNIT_DILATIONS = (1, 3, 9)
RES_UNIT_KERNEL = 7
# The convolutions at each end of the encoder and decoder (the encoder's last one is k3).
OUTER_KERNEL = 7


SnakeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (x, conv, h) → x + conv(h): a residual unit's output; an implementation may write it into x.
ResidualAddFn = Callable[[torch.Tensor, nn.Module, torch.Tensor], torch.Tensor]


def residual_add(x: torch.Tensor, conv: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return x + conv(h)


def snake_eager(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
    """x + inv_beta·sin²(alpha·x) for x (B, C, T) or (B, C, 1, T) and per-channel alpha, inv_beta
    (C,), in at least fp32 (the Triton kernel `stable_audio_rt::snake` computes the same)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    per_channel = (-1,) + (1,) * (x.dim() - 2)
    alpha, inv_beta = alpha.to(dtype).view(per_channel), inv_beta.to(dtype).view(per_channel)
    xw = x.to(dtype)
    return (xw + inv_beta * torch.sin(alpha * xw).pow(2)).to(x.dtype)


class Snake(nn.Module):
    """x + 1/(e^β + 1e-9) · sin²(e^α · x), α and β per channel, log-scale.

    `may_overwrite_input`: nothing reads this Snake's input after it (every Snake of the VAE but a
    residual unit's first, whose input is the residual), so `activation_in_place` may write
    the output into the input's memory where one is set.
    """

    fp32_parameters = ("alpha", "beta")

    def __init__(self, channels: int, may_overwrite_input: bool = False) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels, dtype=torch.float32))
        self.beta = nn.Parameter(torch.zeros(channels, dtype=torch.float32))
        self.may_overwrite_input = may_overwrite_input
        self.activation: SnakeFn = snake_eager
        self.activation_in_place: SnakeFn | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 at least: fp16's 1e-9 underflows and 1/e^β can overflow (reference-spec §5).
        dtype = torch.promote_types(torch.promote_types(x.dtype, self.alpha.dtype), torch.float32)
        alpha = self.alpha.to(dtype).exp()
        inv_beta = 1.0 / (self.beta.to(dtype).exp() + SNAKE_EPS)
        if self.may_overwrite_input and self.activation_in_place is not None:
            return self.activation_in_place(x, alpha, inv_beta)
        return self.activation(x, alpha, inv_beta)


def cast_keeping_fp32_(
    module: nn.Module, dtype: torch.dtype, device: torch.device | str | None = None
) -> nn.Module:
    """`module.to(device, dtype)`, except the parameters its submodules keep in fp32
    (`fp32_parameters`, e.g. Snake's α and β), which keep their fp32 values (not values
    rounded through `dtype` and back); in place."""
    kept = [
        (owner, name, getattr(owner, name).data)
        for owner in module.modules()
        for name in getattr(owner, "fp32_parameters", ())
    ]
    module.to(device=device, dtype=dtype)
    for owner, name, value in kept:
        getattr(owner, name).data = value.to(device=getattr(owner, name).device, dtype=torch.float32)
    return module


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(
            channels,
            channels,
            RES_UNIT_KERNEL,
            dilation=dilation,
            padding=dilation * (RES_UNIT_KERNEL - 1) // 2,
        )
        self.snake2 = Snake(channels, may_overwrite_input=True)
        self.conv2 = nn.Conv1d(channels, channels, 1)
        self.residual_add: ResidualAddFn = residual_add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + conv2(snake2(conv1(snake1(x)))); x may be overwritten (the VAE's own intermediate)."""
        return self.residual_add(x, self.conv2, self.snake2(self.conv1(self.snake1(x))))


def _res_units(channels: int) -> list[ResidualUnit]:
    return [ResidualUnit(channels, d) for d in RES_UNIT_DILATIONS]


class EncoderBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.res_unit1, self.res_unit2, self.res_unit3 = _res_units(c_in)
        self.snake1 = Snake(c_in, may_overwrite_input=True)
        self.conv1 = nn.Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))


class DecoderBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake(c_in, may_overwrite_input=True)
        self.conv_t1 = nn.ConvTranspose1d(
            c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2)
        )
        self.res_unit1, self.res_unit2, self.res_unit3 = _res_units(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


def conv_as_2d(conv: nn.Conv1d | nn.ConvTranspose1d) -> nn.Conv2d | nn.ConvTranspose2d:
    """The same convolution over (B, C, 1, T), its weight in channels-last memory order."""
    two_d = nn.Conv2d if isinstance(conv, nn.Conv1d) else nn.ConvTranspose2d
    out = two_d(
        conv.in_channels,
        conv.out_channels,
        (1, conv.kernel_size[0]),
        stride=(1, conv.stride[0]),
        padding=(0, conv.padding[0]),
        dilation=(1, conv.dilation[0]),
        bias=conv.bias is not None,
        device="meta",
    )
    out.weight = nn.Parameter(
        conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last), requires_grad=False
    )
    if conv.bias is not None:
        out.bias = conv.bias
    return out


def _widths(config: OobleckConfig) -> list[int]:
    """Channel widths from the audio end inwards: channels × [1, *channel_multiples]."""
    return [config.channels * m for m in (1, *config.channel_multiples)]


class OobleckEncoder(nn.Module):
    """Audio (B, audio_channels, L) → bottleneck parameters (B, 2·latent_dim, L / ratio)."""

    def __init__(self, config: OobleckConfig) -> None:
        super().__init__()
        widths = _widths(config)
        self.conv1 = nn.Conv1d(config.audio_channels, widths[0], OUTER_KERNEL, padding=OUTER_KERNEL // 2)
        self.block = nn.ModuleList(
            EncoderBlock(widths[i], widths[i + 1], s) for i, s in enumerate(config.strides)
        )
        self.snake1 = Snake(widths[-1], may_overwrite_input=True)
        self.conv2 = nn.Conv1d(widths[-1], 2 * config.latent_dim, 3, padding=1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.conv1(audio)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


class OobleckDecoder(nn.Module):
    """Latents (B, latent_dim, T) → audio (B, audio_channels, T · ratio). No final tanh."""

    def __init__(self, config: OobleckConfig) -> None:
        super().__init__()
        widths = _widths(config)[::-1]
        self.conv1 = nn.Conv1d(config.latent_dim, widths[0], OUTER_KERNEL, padding=OUTER_KERNEL // 2)
        self.block = nn.ModuleList(
            DecoderBlock(widths[i], widths[i + 1], s) for i, s in enumerate(reversed(config.strides))
        )
        self.snake1 = Snake(widths[-1], may_overwrite_input=True)
        self.conv2 = nn.Conv1d(
            widths[-1], config.audio_channels, OUTER_KERNEL, padding=OUTER_KERNEL // 2, bias=False
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.conv1(latents)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


def decoder_receptive_frames(config: OobleckConfig) -> int:
    """How many latent frames on each side of a frame can change its decoded audio.

    Follows the span of samples one latent frame reaches through each decoder layer (a conv
    of kernel k, dilation d, padding p maps inputs [a, b] to outputs [a + p − (k−1)d, b + p];
    a transposed conv of stride s, kernel 2s, padding p to [a·s − p, b·s − p + 2s − 1]), then
    rounds the reach up to whole frames. For Stable Audio Open's decoder this is 10 (9.27).
    """
    ratio = config.downsampling_ratio
    frame = 0
    lo = hi = frame

    def conv(lo: int, hi: int, kernel: int, dilation: int = 1) -> tuple[int, int]:
        pad = dilation * (kernel - 1) // 2
        return lo + pad - (kernel - 1) * dilation, hi + pad

    lo, hi = conv(lo, hi, OUTER_KERNEL)
    for stride in reversed(config.strides):
        pad = math.ceil(stride / 2)
        lo, hi = lo * stride - pad, hi * stride - pad + 2 * stride - 1
        for dilation in RES_UNIT_DILATIONS:
            lo, hi = conv(lo, hi, RES_UNIT_KERNEL, dilation)
    lo, hi = conv(lo, hi, OUTER_KERNEL)
    reach = max(frame * ratio - lo, hi - ((frame + 1) * ratio - 1))
    return math.ceil(reach / ratio)


def posterior_std(scale: torch.Tensor) -> torch.Tensor:
    """The VAE bottleneck's std from the encoder's scale half: softplus(scale) + 1e-4."""
    return F.softplus(scale) + BOTTLENECK_STD_FLOOR


def bottleneck_moments(encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output → (mean, std), each (B, latent_dim, T)."""
    mean, scale = encoded.chunk(2, dim=1)
    return mean, posterior_std(scale)


def bottleneck_sample(mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The VAE posterior sample with caller-given noise (the caller owns the random draw)."""
    return mean + std * noise


class OobleckVAE(nn.Module):
    def __init__(self, config: OobleckConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = OobleckEncoder(config)
        self.decoder = OobleckDecoder(config)
        self.channels_last = False

    def use_channels_last_(self) -> OobleckVAE:
        """Run every convolution as its 2-D twin over (B, C, 1, T) in channels-last memory order
        (one-way; after the weights are loaded). oneDNN runs the Oobleck convolutions 1.2–3×
        faster so on the CPU (benchmarks/bench_vae_layout.py); the outputs are the same maths."""
        for module in self.modules():
            for name, child in module.named_children():
                if isinstance(child, nn.Conv1d | nn.ConvTranspose1d):
                    setattr(module, name, conv_as_2d(child))
        self.channels_last = True
        return self

    def _run(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return net(x)
        return net(x.unsqueeze(2).contiguous(memory_format=torch.channels_last)).squeeze(2).contiguous()

    def encode_moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return bottleneck_moments(self._run(self.encoder, audio))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run(self.decoder, latents)

    def set_snake(self, activation: SnakeFn, in_place: SnakeFn | None = None) -> None:
        """Swap every Snake's maths (eager by default; the Triton op on GPU), and the same maths
        written into its input (`in_place`) for the Snakes whose input is not read after."""
        for module in self.modules():
            if isinstance(module, Snake):
                module.activation, module.activation_in_place = activation, in_place

    def set_residual_add(self, residual: ResidualAddFn) -> None:
        """Swap every residual unit's last convolution and add (`residual_add` by default; one
        fused in-place oneDNN call on the CPU, `kernels/conv_add.py`)."""
        for module in self.modules():
            if isinstance(module, ResidualUnit):
                module.residual_add = residual
