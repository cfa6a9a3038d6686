"""The native kernel library builds from CMakeLists.txt on this CPU-only machine, and its C
launchers (run against a stand-in of the CUDA driver, tests/kernels/native/fake_cuda.c) pick
the right cubin per GPU and pass the grid and arguments the torch ops pass."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from triton import cdiv

from stable_audio_rt.kernels.ops import DEFAULT_TACTIC
from stable_audio_rt.kernels.specs import GQA_CROSS_ATTENTION, ROPE_SELF_ATTENTION, SNAKE

ROOT = Path(__file__).parents[2]
NATIVE = Path(__file__).with_name("native")
CUDA_NOT_FOUND = 500  # CUDA_ERROR_NOT_FOUND: no cubin for this GPU
CUDA_INVALID_VALUE = 1
B, H, HKV, T, S, D, C, N = 2, 24, 12, 1025, 130, 64, 128, 70001  # as in harness.c

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("cc") is None, reason="needs cmake and a C compiler"
)


@pytest.fixture(scope="module")
def native_build(tmp_path_factory):
    """(build folder, CMake's configure output) of the project's CMakeLists.txt."""
    build = tmp_path_factory.mktemp("native")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    said = configure.stdout + configure.stderr
    assert configure.returncode == 0, said
    if "sa_kernels: skipped" in said:
        pytest.skip("no cuda.h for the native build")
    done = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return build, said


def test_trt_plugin_library_is_built_or_its_skip_is_said(native_build):
    build, said = native_build
    if "sa_trt_plugins: skipped" in said:
        pytest.skip(next(line for line in said.splitlines() if "sa_trt_plugins: skipped" in line).strip("- "))
    symbols = subprocess.run(
        ["nm", "-D", str(build / "libsa_trt_plugins.so")], capture_output=True, text=True
    )
    assert " T getCreators" in symbols.stdout


@pytest.fixture(scope="module")
def harness(native_build):
    build, _ = native_build
    include = [f"-I{ROOT / 'csrc'}"] + [
        f"-I{line.split('=', 1)[1]}" for line in (build / "CMakeCache.txt").read_text().splitlines()
        if line.startswith("SA_CUDA_INCLUDE")
    ]  # fmt: skip
    exe = build / "harness"
    compiled = subprocess.run(
        ["cc", "-rdynamic", *include, str(NATIVE / "harness.c"), str(NATIVE / "fake_cuda.c"),
         f"-L{build}", "-lsa_kernels", f"-Wl,-rpath,{build}", "-o", str(exe)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr

    def run(arch: int, dtype: int) -> list[dict]:
        out = subprocess.run(
            [str(exe), str(dtype)], env={"SA_FAKE_ARCH": str(arch)}, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    return run


def _launches(records):
    return {r["entry"].removesuffix("_kernel"): r for r in records if "entry" in r}


def _statuses(records):
    return {r["call"]: r["status"] for r in records if "status" in r}


@pytest.mark.parametrize("arch,cubin_sm", [(80, 80), (86, 80), (89, 89), (90, 90)])
def test_each_gpu_gets_the_newest_cubin_it_can_run(harness, arch, cubin_sm):
    records = harness(arch, 1)
    assert {r["sm"] for r in _launches(records).values()} == {cubin_sm}
    assert _statuses(records) == {
        "rope_self_attention": 0,
        "gqa_cross_attention": 0,
        "snake": 0,
        "bad_heads": CUDA_INVALID_VALUE,
    }


@pytest.mark.parametrize("arch", [75, 100])
def test_gpus_without_a_cubin_get_not_found(harness, arch):
    statuses = _statuses(harness(arch, 0))
    assert statuses["snake"] == statuses["rope_self_attention"] == CUDA_NOT_FOUND


def _strides(*tensors):
    return [s for t in tensors for s in t.stride()[:3]]


@pytest.mark.parametrize("dtype", [0, 1, 2])
def test_grid_and_arguments_equal_the_torch_ops(harness, dtype):
    launches = _launches(harness(90, dtype))
    q, k, v = torch.empty(B, T, 3, H, D, device="meta").permute(2, 0, 3, 1, 4).unbind(0)
    out = torch.empty(B, T, H, D, device="meta").transpose(1, 2)
    ctx = torch.empty(B, HKV, S, D, device="meta")
    self_tactic = ROPE_SELF_ATTENTION.tactic(DEFAULT_TACTIC)
    rope = launches["rope_self_attention"]
    assert rope["grid"] == [cdiv(T, self_tactic.blocks["BLOCK_M"]), B * H, 1]
    assert rope["block"] == [32 * self_tactic.num_warps, 1, 1]
    assert rope["args"] == [
        0x1000,
        0x2000,
        0x3000,
        0x4000,
        0x5000,
        H,
        T,
        *_strides(q, k, v, out),
        0x6000,
        0,
        0,
    ]
    cross = launches["gqa_cross_attention"]
    assert cross["grid"] == [cdiv(T, GQA_CROSS_ATTENTION.tactic(DEFAULT_TACTIC).blocks["BLOCK_M"]), B * H, 1]
    assert cross["args"] == [
        0x1000,
        0x2000,
        0x3000,
        H,
        HKV,
        T,
        S,
        *_strides(out, ctx, ctx, out),
        0x6000,
        0,
        0,
    ]
    snake = launches["snake"]
    assert snake["grid"] == [B * C, cdiv(N, SNAKE.tactic(DEFAULT_TACTIC).blocks["BLOCK"]), 1]
    assert snake["args"] == [0x1000, 0x2000, 0x3000, B * C, C, N, 0x4000, 0, 0]
    assert {r["stream"] for r in launches.values()} == {0x77}
