"""GPU tests: skipped without a CUDA GPU, and where Triton interprets the kernels. Run them
compiled: TRITON_INTERPRET=0 python -m pytest -m gpu tests/gpu (benchmarks/gpu_check.py does)."""

import pytest
import torch

from stable_audio_rt.kernels.ops import kernels_runnable_on

COMPILED = "TRITON_INTERPRET=0 python -m pytest -m gpu tests/gpu"


def skip_reason() -> str | None:
    """Why this run cannot check the GPU paths, or None. The suite turns Triton's interpreter on
    for its CPU kernel tests (tests/conftest.py); on a GPU the interpreter copies every tensor
    through the host, which no CUDA graph can capture, and multiplies bf16 wrongly."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU: none here (run benchmarks/gpu_check.py)"
    if kernels_runnable_on(torch.device("cpu")):
        return f"the Triton kernels are interpreted in this run (TRITON_INTERPRET=1): run {COMPILED}"
    return None


def pytest_collection_modifyitems(items):
    reason = skip_reason()
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
