"""glibc's malloc told to keep freed memory for the next allocation: a CPU request's speed-up.

By default glibc serves each allocation above its mmap threshold (128 KiB, rising to at most
32 MiB as such blocks are freed) with fresh pages from the kernel and gives them back when it is
freed, and it trims the heap's free top. Every large activation of a CPU request then costs one
page fault per 4 KiB page, each page zeroed by the kernel, on every step. With mmap off and no
trimming, freed blocks stay in the heap and the next step's activations reuse them.

Measured on a 2-core AMD EPYC, bf16, SAO 1.0's geometry (torch 2.13; results in the README's CPU
section): the 1024-frame decode 15.1-15.5 s → 13.7-13.8 s at a peak 6 % higher; one CFG DiT step
at 1024 frames 13.5-14.3 s → 13.0-13.8 s; a 64-frame, 10-step request 9.3-9.4 s → 8.7-9.0 s.

It is a process-wide policy that lasts as long as the process (the heap keeps its peak size
between requests), so the CLIs set it, on the CPU, and the library never does it by itself.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable

import torch

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The largest trim threshold mallopt takes (an int): the heap's free top is never given back.
NEVER_TRIM = 2**31 - 1

Mallopt = Callable[[int, int], int]


def glibc_mallopt() -> Mallopt | None:
    """glibc's `mallopt`, or None where the C library is another (musl, macOS, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory for reuse (see the module's note); whether
    it could (False where the C library is not glibc, and nothing changed)."""
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success, 0 on an error.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def use_memory_policy(reuse: bool, device: torch.device) -> str:
    """The CLIs' `--reuse-memory` for a run on `device` (only the CPU's activations live in
    malloc's memory), applied; what the process's malloc now does, in words for the reports."""
    if reuse and device.type == "cpu" and keep_freed_memory():
        return "freed memory kept for reuse (glibc mallopt)"
    return "malloc's defaults"
