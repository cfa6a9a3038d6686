"""GPU tests: skipped without a CUDA GPU. Run them compiled, not interpreted:
TRITON_INTERPRET=0 python -m pytest -m gpu tests/gpu (benchmarks/gpu_check.py does)."""

import pytest
import torch


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(
                    pytest.mark.skip(reason="needs a CUDA GPU: none here (run benchmarks/gpu_check.py)")
                )
