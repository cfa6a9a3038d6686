"""Switching a loaded model between the torch maths and the Triton kernels.

"auto" takes the kernels on a CUDA device when Triton is installed and the torch maths
(SDPA attention, eager Snake) otherwise, so CPU runs keep their default path.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.models.attention import SDPA, AttentionFunctions
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.vae import OobleckVAE, snake_eager

KernelChoice = Literal["auto", "triton", "torch"]
KERNEL_CHOICES: tuple[KernelChoice, ...] = ("auto", "triton", "torch")


def triton_attention() -> AttentionFunctions:
    """The DiT's attention pair backed by the Triton ops."""
    from stable_audio_rt.kernels import ops

    return AttentionFunctions(
        self_attention=ops.triton_self_attention, cross_attention=ops.triton_cross_attention
    )


def resolve_kernels(choice: KernelChoice, device: torch.device) -> Literal["triton", "torch"]:
    """Which maths to run; "triton" where the kernels cannot run is refused with the fix."""
    if choice not in KERNEL_CHOICES:
        raise ConfigError(f"kernels must be one of {KERNEL_CHOICES}, got {choice!r}")
    if choice == "torch":
        return "torch"
    if importlib.util.find_spec("triton") is None:
        if choice == "triton":
            raise ConfigError("kernels='triton' needs Triton: pip install 'stable-audio-rt[gpu]'")
        return "torch"
    from stable_audio_rt.kernels.ops import kernels_runnable_on

    if kernels_runnable_on(device):
        return "triton" if choice == "triton" or device.type == "cuda" else "torch"
    if choice == "triton":
        raise ConfigError(
            f"kernels='triton' runs on CUDA devices, not {device} (on the CPU only under "
            "TRITON_INTERPRET=1, for tests); use kernels='torch' or 'auto'"
        )
    return "torch"


def use_kernels(kernels: Literal["triton", "torch"], dit: DiT, vae: OobleckVAE) -> None:
    """Point the DiT's attention and every Snake of the VAE at the chosen maths."""
    if kernels == "triton":
        from stable_audio_rt.kernels import ops

        dit.set_attention(triton_attention())
        vae.set_snake(ops.triton_snake)
    else:
        dit.set_attention(SDPA)
        vae.set_snake(snake_eager)
