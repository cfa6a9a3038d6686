"""Bad inputs to the kernel ops fail before any launch, with a message that names the fix."""

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from stable_audio_rt.kernels import ops
from stable_audio_rt.kernels.ops import KernelInputError
from stable_audio_rt.models.attention import rope_tables


def _self_inputs(head_dim=64, seq=9, dtype=torch.float32):
    q, k, v = torch.randn(3, 1, 2, seq, head_dim, dtype=dtype).unbind(0)
    cos, sin = rope_tables(seq, 32, 10000.0)
    return q, k, v, cos, sin


def _mixed_dtypes():
    q, k, v, cos, sin = _self_inputs()
    return q, k.half(), v.half(), cos, sin


def _strided_head_dim():
    q, k, v, cos, sin = _self_inputs()
    return q.transpose(2, 3).contiguous().transpose(2, 3), k, v, cos, sin


def _fp64_tables():
    q, k, v, cos, sin = _self_inputs()
    return q, k, v, cos.double(), sin.double()


def _short_tables():
    return (*_self_inputs()[:3], *rope_tables(8, 32, 10000.0))


def _integer_inputs():
    q, k, v, cos, sin = _self_inputs()
    return q.long(), k.long(), v.long(), cos, sin


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: _self_inputs(head_dim=48), "head dim 48 is not supported"),
        (_mixed_dtypes, "cast them to one dtype"),
        (_strided_head_dim, "not contiguous along its last dim"),
        (_fp64_tables, "contiguous float32"),
        (_short_tables, r"contiguous float32 tensor of shape \(9, 16\)"),
        (_integer_inputs, "the kernels take"),
    ],
)
def test_self_attention_rejects(make, message):
    with pytest.raises(KernelInputError, match=message):
        ops.rope_self_attention(*make())


def test_cross_attention_rejects_heads_that_do_not_group():
    q = torch.randn(1, 6, 4, 64)
    kv = torch.randn(1, 4, 10, 64)
    with pytest.raises(KernelInputError, match="KV head count must divide"):
        ops.gqa_cross_attention(q, kv, kv)


def test_snake_rejects_non_contiguous_and_wrong_parameters():
    x = torch.randn(2, 8, 100)
    with pytest.raises(KernelInputError, match="must be contiguous"):
        ops.snake(x.transpose(0, 1), torch.ones(2), torch.ones(2))
    with pytest.raises(KernelInputError, match="alpha must be a contiguous float32"):
        ops.snake(x, torch.ones(8, dtype=torch.float16), torch.ones(8))
    with pytest.raises(KernelInputError, match=r"shape \(8,\)"):
        ops.snake(x, torch.ones(8), torch.ones(7))


def test_cpu_tensors_without_the_interpreter_are_refused():
    # A fresh process without TRITON_INTERPRET compiles kernels for the GPU: CPU tensors must
    # be refused with the fix, not crash inside Triton.
    script = (
        "import torch\n"
        "from stable_audio_rt.kernels import ops\n"
        "try:\n"
        "    ops.snake(torch.randn(1, 2, 8), torch.ones(2), torch.ones(2))\n"
        "except ops.KernelInputError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "cannot run the Triton kernels" in done.stdout and "kernels='torch'" in done.stdout


def test_gpu_tests_are_skipped_with_the_fix_where_the_kernels_are_interpreted(monkeypatch):
    """On a GPU machine, `python -m pytest tests/gpu` (TRITON_INTERPRET unset) ran the GPU tests
    under the suite's interpreter (tests/conftest.py): the kernels copy every tensor through the
    host, no CUDA graph captures, bf16 products come out wrong, and the tests fail for that."""
    assert ops.kernels_runnable_on(torch.device("cpu")), "this suite interprets the kernels"
    path = Path(__file__).parents[1] / "gpu" / "conftest.py"
    spec = importlib.util.spec_from_file_location("gpu_conftest", path)
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    markers = []
    item = types.SimpleNamespace(fspath=path.with_name("test_cuda_graphs.py"), add_marker=markers.append)
    conftest.pytest_collection_modifyitems([item])
    (skip,) = [m for m in markers if m.name == "skip"]
    assert "TRITON_INTERPRET=0 python -m pytest -m gpu tests/gpu" in skip.kwargs["reason"]
