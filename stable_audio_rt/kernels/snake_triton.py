"""Triton Snake kernel for the Oobleck VAE (reference-spec §5).

y = x + inv_beta · sin²(alpha · x) per channel, with alpha = e^α and inv_beta = 1/(e^β + 1e-9)
precomputed in fp32 by the caller; the maths runs in fp32 whatever the activation dtype.
x and y are contiguous (B, C, T); one program covers BLOCK samples of one (batch, channel) row.
Parameters come in TensorRT's AOT plugin order: inputs, integer extras, output.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def snake_kernel(x_ptr, alpha_ptr, inv_beta_ptr, num_rows, channels, length, y_ptr, BLOCK: tl.constexpr):
    """Grid (num_rows = B·C, cdiv(length, BLOCK))."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < length
    offsets = row.to(tl.int64) * length + cols
    x = tl.load(x_ptr + offsets, mask=in_row, other=0.0).to(tl.float32)
    alpha = tl.load(alpha_ptr + row % channels)
    inv_beta = tl.load(inv_beta_ptr + row % channels)
    wave = tl.sin(alpha * x)
    tl.store(y_ptr + offsets, (x + inv_beta * wave * wave).to(y_ptr.dtype.element_ty), mask=in_row)
