"""The reference maths on the CPU: fp32, SDPA attention, eager Snake and the VAE's convolutions in
their native (B, C, T) layout. Tests that compare against stable-audio-tools, diffusers or exact
equalities load with it; the CPU's default fast path (`dtype="auto"`, `kernels="auto"`: bf16
where the CPU has bf16 matrix units, compiled Snake, channels-last convolutions) has its own
tests against it (tests/runtime/test_cpu_fast_path.py)."""

import torch

REFERENCE_PATH = dict(dtype=torch.float32, kernels="torch")
