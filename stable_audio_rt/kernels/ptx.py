"""Compile a kernel spec to PTX and cubin for a chosen GPU target, no GPU needed.

The TensorRT plugins hand TensorRT the PTX for the build machine's GPU; the cubin (ptxas's
assembly of that PTX) lets the CPU tests check that the PTX assembles for each target. Triton's
hidden scratch buffers must be empty: TensorRT's AOT plugins do not pass them.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import torch

from stable_audio_rt.kernels.specs import SHARED_MEMORY_LIMITS, KernelSpec, Tactic

# Triton targets are (backend, compute capability, warp size).
WARP_SIZE = 32
# Triton appends two pointer parameters to every kernel (global and profile scratch); launches
# that do not come from Triton's own launcher (TensorRT's) pass null for them.
HIDDEN_PARAMETERS = 2


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel compiled for one target: entry name, PTX text, cubin bytes, launch resources."""

    name: str
    ptx: str
    cubin: bytes
    shared_bytes: int
    num_warps: int
    arch: int


class KernelCompileError(RuntimeError):
    """A kernel could not be compiled ahead of time."""


def jit_function(spec: KernelSpec):
    """The spec's @triton.jit kernel; refuses interpreted kernels, which cannot be compiled."""
    from triton.runtime.jit import JITFunction

    kernel = getattr(importlib.import_module(spec.module), spec.function)
    if not isinstance(kernel, JITFunction):
        raise KernelCompileError(
            f"{spec.function} was imported under TRITON_INTERPRET=1 and cannot be compiled to PTX; "
            "run the compilation in a process without TRITON_INTERPRET"
        )
    return kernel


def compile_kernel(
    spec: KernelSpec,
    dtype: torch.dtype,
    constexprs: dict[str, int | float],
    tactic: Tactic,
    arch: int | None = None,
) -> CompiledKernel:
    """Compile for sm_`arch` (the current GPU when None)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(
        fn=jit_function(spec), signature=spec.signature(dtype, constexprs), constexprs=constexprs
    )
    target = GPUTarget("cuda", arch, WARP_SIZE) if arch is not None else None
    compiled = triton.compile(
        source,
        target=target,
        # FMA contraction on, as Triton has defaulted to so far; said explicitly so it stays.
        options={"num_warps": tactic.num_warps, "num_stages": tactic.num_stages, "enable_fp_fusion": True},
    )
    metadata = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(metadata, scratch, 0):
            raise KernelCompileError(
                f"{spec.name} tactic {tactic.id} needs Triton {scratch} = {getattr(metadata, scratch)}; "
                "AOT launches pass no scratch buffer"
            )
    limit = SHARED_MEMORY_LIMITS.get(metadata.target.arch)
    if limit is not None and metadata.shared > limit:
        raise KernelCompileError(
            f"{spec.name} tactic {tactic.id} ({dtype}) needs {metadata.shared} bytes of shared memory; "
            f"sm_{metadata.target.arch} has {limit}"
        )
    return CompiledKernel(
        name=metadata.name,
        ptx=compiled.asm["ptx"],
        cubin=compiled.asm["cubin"],
        shared_bytes=metadata.shared,
        num_warps=metadata.num_warps,
        arch=metadata.target.arch,
    )


def ptx_entry_parameters(ptx: str, entry: str) -> int:
    """How many parameters the PTX entry point `entry` declares."""
    match = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise KernelCompileError(f"no .entry {entry} in the PTX")
    return len(re.findall(r"\.param\s", match.group(1)))
