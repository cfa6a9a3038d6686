"""Work for a pipeline on `cuda:N` runs with N as torch's current device.

Torch ops follow their tensors' device, but what asks for the *current* device does not: Triton
launches its kernels there, `torch.cuda.graph` makes its capture stream there, and TensorRT
binds its runtime and contexts to it. So every entry point of a pipeline (and TensorRT's calls)
runs inside `on_device(device)`; on the CPU it does nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def on_device(device: torch.device) -> AbstractContextManager:
    """`device` as torch's current CUDA device for the block (nothing on the CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()
