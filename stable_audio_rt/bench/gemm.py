"""The machine's dense GEMM rate on the DiT's own product shapes, per math library.

torch (its BLAS: MKL or oneDNN on the CPU, cuBLAS on CUDA) and onnxruntime (its MLAS on the
CPU) each multiply the step's (tokens × k) by (k × n) weight shapes; the rate is the step's
GEMM FLOPs over the summed time of one product of each shape, scaled by its count. A stage's
"floor" is its FLOPs at that rate: no implementation on this machine and library does better.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from stable_audio_rt.bench.flops import Gemm


@dataclass(frozen=True)
class GemmRate:
    library: str
    gflops_per_s: float
    seconds_per_step: float  # the step's GEMMs, timed


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def torch_gemm_rate(
    gemms: list[Gemm], device: torch.device, dtype: torch.dtype, repeats: int = 3
) -> GemmRate:
    total = 0.0
    for g in gemms:
        a = torch.randn(g.m, g.k, device=device, dtype=dtype)
        b = torch.randn(g.k, g.n, device=device, dtype=dtype)

        def product(a=a, b=b) -> None:
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        total += _median_seconds(product, repeats) * g.count
    flops = sum(g.flops for g in gemms)
    return GemmRate("torch", flops / total / 1e9, total)


def onnxruntime_gemm_rate(gemms: list[Gemm], repeats: int = 3) -> GemmRate:
    """fp32 MatMul of each shape on onnxruntime's CPU provider."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    options = ort.SessionOptions()
    options.log_severity_level = 3
    total = 0.0
    rng = np.random.default_rng(0)
    for g in gemms:
        weight = numpy_helper.from_array(rng.standard_normal((g.k, g.n), dtype=np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "w"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [g.m, g.k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [g.m, g.n])],
            [weight],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        a = rng.standard_normal((g.m, g.k), dtype=np.float32)
        total += _median_seconds(lambda session=session, a=a: session.run(None, {"a": a}), repeats) * g.count
    flops = sum(g.flops for g in gemms)
    return GemmRate("onnxruntime", flops / total / 1e9, total)
