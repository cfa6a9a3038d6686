"""The CLIs' malloc policy: applied in a fresh process (it lasts the process's life), freed memory
is reused instead of faulted in again; where the C library is not glibc nothing changes."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stable_audio_rt.runtime import cpu_memory

# Allocate, touch and free a block above both glibc's largest mmap threshold (32 MiB) and a
# thread arena's largest heap (64 MiB) a few times, then count the page faults of touching one
# more: each fresh 4 KiB page faults once. On the main thread, and on another (as sa-serve's
# worker), whose arena would take such a block from mmap. The block comes from malloc itself:
# torch's 64-byte-aligned blocks come from memalign, which on glibc 2.36 asks for a little more
# than the block, so one block freed and taken again alone is reused only when it merges with a
# free neighbour, which a lone block's layout leaves to chance (the module's note).
FAULTS_OF_ONE_MORE_BLOCK = """
import ctypes, resource, sys, threading
from stable_audio_rt.runtime.cpu_memory import keep_freed_memory
policy, where = sys.argv[1:]
if policy == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
BYTES = 96 * 2**20
faults = []
def touched_block():
    block = libc.malloc(BYTES)
    ctypes.memset(block, 1, BYTES)
    return block
def touch():
    for _ in range(3):
        libc.free(touched_block())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = touched_block()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)
if where == "thread":
    thread = threading.Thread(target=touch)
    thread.start()
    thread.join()
else:
    touch()
print(faults[0])
"""
PAGES = 96 * 2**20 // 4096


def faults_of_one_more_block(policy: str, where: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_ONE_MORE_BLOCK, policy, where],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(run.stdout)


def _huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")
@pytest.mark.skipif(
    _huge_pages_always(),
    reason="transparent huge pages 'always': memory faults per 2 MiB, not per 4 KiB page",
)
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_memory_is_reused_instead_of_faulted_in_again(where):
    assert faults_of_one_more_block("default", where) >= PAGES * 0.9  # fresh pages from the kernel
    assert faults_of_one_more_block("keep", where) <= PAGES * 0.05  # the freed blocks' pages again


def test_without_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(cpu_memory, "glibc_mallopt", lambda: None)
    assert not cpu_memory.keep_freed_memory()
    assert cpu_memory.use_memory_policy(True, torch.device("cpu")) == "malloc's defaults"


@pytest.mark.parametrize("reuse,device", [(False, "cpu"), (True, "cuda")])
def test_the_policy_is_left_alone_off_the_cpu_or_when_declined(reuse, device, mallopt_calls):
    assert cpu_memory.use_memory_policy(reuse, torch.device(device)) == "malloc's defaults"
    assert mallopt_calls == []


def test_a_refused_setting_is_reported(monkeypatch):
    monkeypatch.setattr(cpu_memory, "glibc_mallopt", lambda: lambda param, value: 0)
    assert not cpu_memory.keep_freed_memory()
