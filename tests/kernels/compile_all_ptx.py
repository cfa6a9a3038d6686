"""Run in a process without TRITON_INTERPRET: compile every kernel × dtype × tactic for each
architecture given on the command line and print one JSON line per variant."""

import json
import re
import sys

from stable_audio_rt.kernels.ptx import compile_kernel, ptx_entry_parameters
from stable_audio_rt.kernels.specs import (
    KERNELS,
    ROPE_SELF_ATTENTION,
    SNAKE,
    TRITON_DTYPES,
    attention_constexprs,
    snake_constexprs,
)
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0

dit = STABLE_AUDIO_OPEN_1_0.dit


def sao_constexprs(spec, tactic):
    """The constexprs a plugin compiles with at SAO 1.0's geometry (head dim 64, RoPE on 32)."""
    if spec is SNAKE:
        return snake_constexprs(tactic)
    rope_half = dit.rotary_dim // 2 if spec is ROPE_SELF_ATTENTION else None
    return attention_constexprs(dit.head_dim, rope_half, tactic)


for arch in map(int, sys.argv[1:]):
    for spec in KERNELS:
        for dtype, name in TRITON_DTYPES.items():
            for tactic in spec.tactics:
                constexprs = sao_constexprs(spec, tactic)
                kernel = compile_kernel(spec, dtype, constexprs, tactic, arch)
                target = re.search(r"^\.target\s+(\S+)", kernel.ptx, re.M).group(1)
                record = {
                    "kernel": spec.name,
                    "dtype": name,
                    "tactic": tactic.id,
                    "arch": arch,
                    "entry": kernel.name,
                    "ptx_target": target,
                    "ptx_parameters": ptx_entry_parameters(kernel.ptx, kernel.name),
                    "spec_parameters": len(spec.parameters),
                    "cubin_bytes": len(kernel.cubin),
                    "shared_bytes": kernel.shared_bytes,
                }
                print(json.dumps(record), flush=True)
