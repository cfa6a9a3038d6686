"""The per-step scalar table every sampler here fills (reference-spec §3, §4).

Because the noise levels are fixed before sampling, every step of each sampler is linear with
scalars known up front:

    D_i = c_skip·x + c_out·model(c_in·x, t_i)
    x_{i+1} = a_i x + b_i D_i + A_i (D_i − D_{i−1}) + B_i (D_{i−1} − D_{i−2}) + g_i z_i

so the whole loop (`step.py`) runs on device tensors with no host work per step (and can be
graph-captured). Each sampler derives its table in float64 and stores it as float32.
"""

from __future__ import annotations

from enum import IntEnum


class Col(IntEnum):
    """Columns of the per-step scalar table."""

    C_IN = 0  # model input scale 1/√(σ²+1)
    C_SKIP = 1  # 1/(σ²+1)
    C_OUT = 2  # −σ/√(σ²+1)
    A = 3  # coefficient of x
    B = 4  # coefficient of D_i
    D1 = 5  # coefficient of (D_i − D_{i−1})
    D2 = 6  # coefficient of (D_{i−1} − D_{i−2})
    NOISE = 7  # coefficient of z_i
    SIGMA_NEXT = 8  # σ_{i+1}, for re-noising kept regions (inpainting)
