"""Switching a loaded model between the torch maths and the Triton kernels.

"auto" takes the kernels on a CUDA device when Triton is installed, "compiled" on the CPU and
the torch maths (SDPA attention, eager Snake: the reference path) otherwise. "compiled" keeps
SDPA, and on the CPU:
- loads the VAE channels-last (`OobleckVAE.use_channels_last_`), each residual add fused into
  its convolution (`conv_add`);
- runs the DiT's attention in fp32 in an fp32 model, and in a bf16 one on a CPU without AMX
  tiles (`cpu_attention`: 2-3 % of a bf16 step on a 2-core EPYC);
- packs the DiT's and T5's linear weights for oneDNN once wherever oneDNN runs their dtype
  (`packed_linear`: bf16, the same numbers; fp32, 1.2-1.5x faster steps on an AMD EPYC, where
  MKL is slower). Both choices are made from the dtype and the CPU's features, never from a
  timing, so one seed gives one audio in every process;
- fuses Snake with torch.compile (Inductor: one C++ loop on the CPU instead of five passes over
  the VAE's largest activations, 2.5× faster in fp32 and 10× in bf16 on a 2-core EPYC; it needs
  a C compiler, costs a few seconds once, and falls back to eager with a warning without one).
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Literal

import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.kernels.conv_add import conv_add_, conv_add_available
from stable_audio_rt.models.attention import SDPA, AttentionFunctions
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.vae import OobleckVAE, SnakeFn, snake_eager

KernelChoice = Literal["auto", "triton", "compiled", "torch"]
KERNEL_CHOICES: tuple[KernelChoice, ...] = ("auto", "triton", "compiled", "torch")
Kernels = Literal["triton", "compiled", "torch"]


def written_into_input(snake: SnakeFn) -> SnakeFn:
    """`snake` with its output written into x's memory (x must not be read after)."""

    def in_place(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
        return x.copy_(snake(x, alpha, inv_beta))

    return in_place


class CompiledSnake:
    """`snake` (default `snake_eager`) fused by torch.compile, called as is or as `in_place`
    (Inductor then stores into x: one pass and no fresh memory, 3× faster on the CPU's largest
    activations); both fall back to eager (with one warning) where compilation fails, e.g.
    without a C compiler."""

    def __init__(self, snake: SnakeFn = snake_eager) -> None:
        self._eager = {False: snake, True: written_into_input(snake)}
        self._compiled = {key: torch.compile(fn, dynamic=True) for key, fn in self._eager.items()}
        self._failed = False

    def __call__(self, x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
        return self._run(False, x, alpha, inv_beta)

    def in_place(self, x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
        return self._run(True, x, alpha, inv_beta)

    def _run(
        self, in_place: bool, x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor
    ) -> torch.Tensor:
        if not self._failed:
            try:
                return self._compiled[in_place](x, alpha, inv_beta)
            except Exception as e:  # Inductor raises many kinds (no compiler, unsupported op)
                warnings.warn(f"torch.compile of Snake failed ({e}); running it eagerly", stacklevel=3)
                self._failed = True
        return self._eager[in_place](x, alpha, inv_beta)


def triton_attention() -> AttentionFunctions:
    """The DiT's attention pair backed by the Triton ops."""
    from stable_audio_rt.kernels import ops

    return AttentionFunctions(
        self_attention=ops.triton_self_attention,
        cross_attention=ops.triton_cross_attention,
        takes_key_bias=False,
    )


def resolve_kernels(choice: KernelChoice, device: torch.device) -> Kernels:
    """Which maths to run; "triton" where the kernels cannot run is refused with the fix."""
    if choice not in KERNEL_CHOICES:
        raise ConfigError(f"kernels must be one of {KERNEL_CHOICES}, got {choice!r}")
    if choice in ("torch", "compiled"):
        return choice
    untriton: Kernels = "compiled" if device.type == "cpu" else "torch"
    if importlib.util.find_spec("triton") is None:
        if choice == "triton":
            raise ConfigError("kernels='triton' needs Triton: pip install 'stable-audio-rt[gpu]'")
        return untriton
    from stable_audio_rt.kernels.ops import kernels_runnable_on

    if kernels_runnable_on(device):
        return "triton" if choice == "triton" or device.type == "cuda" else untriton
    if choice == "triton":
        raise ConfigError(
            f"kernels='triton' runs on CUDA devices, not {device} (on the CPU only under "
            "TRITON_INTERPRET=1, for tests); use kernels='torch' or 'auto'"
        )
    return untriton


def use_onednn_vae_(vae: OobleckVAE, dtype: torch.dtype) -> None:
    """The CPU's fast VAE, in place: every convolution channels-last (oneDNN's fastest layout for
    them) and, where oneDNN runs `dtype`, each residual add fused into its convolution."""
    vae.use_channels_last_()
    if conv_add_available(dtype):
        vae.set_residual_add(conv_add_)


def use_kernels(kernels: Kernels, dit: DiT, vae: OobleckVAE) -> None:
    """Point the DiT's attention and every Snake of the VAE at the chosen maths."""
    if kernels == "triton":
        from stable_audio_rt.kernels import ops

        dit.set_attention(triton_attention())
        vae.set_snake(ops.triton_snake)
    else:
        dit.set_attention(SDPA)
        if kernels == "compiled":
            snake = CompiledSnake()
            vae.set_snake(snake, snake.in_place)
        else:
            vae.set_snake(snake_eager)
