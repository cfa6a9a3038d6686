"""The Oobleck residual unit's last step, `x + conv(h)`, as one oneDNN call writing into x (CPU).

Run apart, the 1×1 convolution writes a fresh tensor and the add reads it and x back to write a
third. oneDNN's convolution with a binary "add" post-op adds x as it writes each output, into x's
own memory: one pass and no fresh memory, which on the CPU also saves a page fault per 4 KiB
of the decoder's largest activations (0.1–0.5 GB each at the full window). The same maths: in
fp32 bit-equal, in bf16 rounded once instead of twice (0.4 dB closer to fp32). Alone it made a
decode 1.06× faster in fp32 and 1.09–1.10× in bf16 (2-core AMD EPYC, interleaved in one
process); with Snake written in place too (`CompiledSnake.in_place`), 1.20× (bf16) and 1.23×
(fp32) at 256 latent frames, 1.41× and 1.25× at the full 1024 (`benchmarks/bench_vae_layout.py`,
"apart" against "compiled channels-last").

The op is the one Inductor emits for a convolution followed by an add (torch.ops.mkldnn); it
takes the channels-last 2-D convolutions of `OobleckVAE.use_channels_last_`.
"""

from __future__ import annotations

import torch
from torch import nn

from stable_audio_rt.kernels.packed_linear import onednn_runs


def conv_add_available(dtype: torch.dtype) -> bool:
    """Whether this torch and CPU run oneDNN's convolution with a fused add in `dtype`."""
    return hasattr(torch.ops.mkldnn, "_convolution_pointwise_") and onednn_runs(dtype)


def conv_add_(x: torch.Tensor, conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
    """x + conv(h), written into x and returned (x and h channels-last (B, C, 1, T))."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        x,
        h,
        conv.weight,
        conv.bias,
        list(conv.padding),
        list(conv.stride),
        list(conv.dilation),
        conv.groups,
        "add",
        None,
        None,
        [],
        None,
    )
