"""Precision names: the one table from "fp32", "fp16", "bf16" (CLIs, manifests, kernels) to torch dtypes."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Same order as DTYPES: the kernels iterate it to name their variants.
NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
