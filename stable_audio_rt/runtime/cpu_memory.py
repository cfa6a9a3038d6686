"""glibc's malloc told to keep freed memory for the next allocation: a CPU request's speed-up.

By default glibc serves each allocation above its mmap threshold (128 KiB, rising to at most
32 MiB as such blocks are freed) with fresh pages from the kernel and gives them back when it is
freed, and it trims the heap's free top. Every large activation of a CPU request then costs one
page fault per 4 KiB page, each page zeroed by the kernel, on every step. With mmap off and no
trimming, freed blocks stay in the heap and the next step's activations reuse them. Threads
other than the main one get heaps of their own from glibc (arenas), which take blocks above
64 MiB from mmap whatever the setting, so one arena serves every thread: sa-serve runs requests
on a worker thread (on this 2-core EPYC, Small's decode there: 4.2 s with malloc's defaults,
3.8-3.95 s with the main heap's settings alone, 3.35-3.4 s with one arena).

Measured on a 2-core AMD EPYC (torch 2.13), Stable Audio Open Small's full window, 8 steps, in
alternating sa-bench runs (`benchmarks/results/malloc_reuse_small_cpu/`): the bf16 decode 3.92
and 4.31 s → 3.32 and 3.67 s, the request 7.79 and 8.51 s → 7.34 and 7.75 s; in fp32 the decode
8.1 s → 6.7-7.0 s. The cost is memory: the heap holds what it once held, and what is freed in
pieces fragments, so the peak rises (one model in the process: Small's 2.7 GB → 3.0-3.2 GB;
sa-bench's two rows, fp32 then bf16: 3.8 → 5.7 GB). At 64 frames the activations are small and
it makes no measurable difference.

What reuse can and cannot do: torch takes its 64-byte-aligned blocks from memalign, which on
glibc 2.36 asks for a little more than the block, so a freed block is taken again only where it
merges with free neighbours or the heap's free top. A request's mix of sizes gives it that: Small
in a worker thread (sa-serve's case), 6 requests, faulted 22 k and 33 k pages in the first two
and none after, the RSS flat at 2.92 GB from the second. One block of one size freed and taken
again alone can miss it and land above each time, when a small object was placed just after it.

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
M_ARENA_MAX = -8
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
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))
    return all(mallopt(param, value) == 1 for param, value in settings)  # 0: refused


def use_memory_policy(reuse: bool, device: torch.device) -> str:
    """The CLIs' `--reuse-memory` for a run on `device` (only the CPU's activations live in
    malloc's memory), applied; what the process's malloc now does, in words for the reports."""
    if reuse and device.type == "cpu" and keep_freed_memory():
        return "freed memory kept for reuse (glibc mallopt)"
    return "malloc's defaults"
