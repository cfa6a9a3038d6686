"""The machine's dense GEMM rate on the DiT's own product shapes, per math library.

torch (on the CPU its products as a loaded model runs them: oneDNN with packed weights where
`kernels/packed_linear.py` packs, else MKL or oneDNN; cuBLAS on CUDA) and onnxruntime (its MLAS on the
CPU) each multiply the step's (tokens × k) by (k × n) weight shapes; the rate is the step's
GEMM FLOPs over the summed time of one product of each shape, scaled by its count (on CUDA,
the whole step's products replayed as one captured graph). On the CPU each product's time is the
fastest of a few: a floor is a bound, and the fastest run is the least disturbed by the rest of
the machine (a median of three once read half the rate). A stage's "floor" is its FLOPs at that
rate: no implementation on this machine and library does better.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from stable_audio_rt.bench.flops import Gemm
from stable_audio_rt.kernels.packed_linear import linear_as_run
from stable_audio_rt.runtime.device_context import on_device
from stable_audio_rt.runtime.timing import best_seconds, stopwatch

# Each product shape is timed for at least this long on the CPU (seconds): its fastest call of
# many, where three calls of a small shape all met a busy machine (a floor read 100× low, 9
# GFLOP/s against 151 in the same run's other shapes).
PROBE_TOTAL_S = 0.05


@dataclass(frozen=True)
class GemmRate:
    library: str
    gflops_per_s: float
    seconds_per_step: float  # the step's GEMMs, timed


def torch_gemm_rate(
    gemms: list[Gemm], device: torch.device, dtype: torch.dtype, repeats: int = 3
) -> GemmRate:
    if device.type == "cuda":
        options = {"device": device, "dtype": dtype}
        operands = [(torch.randn(g.m, g.k, **options), torch.randn(g.k, g.n, **options), g) for g in gemms]
        total = _captured_step_seconds(operands, device, repeats)
    else:  # each product as the loaded model runs it (packed where packed_linear.packs says so)
        with torch.inference_mode():
            layers = [(torch.randn(g.m, g.k, dtype=dtype), linear_as_run(g.k, g.n, dtype), g) for g in gemms]
            total = sum(
                best_seconds(partial(layer, a), repeats, PROBE_TOTAL_S) * g.count for a, layer, g in layers
            )
    flops = sum(g.flops for g in gemms)
    return GemmRate("torch", flops / total / 1e9, total)


def _captured_step_seconds(operands: list, device: torch.device, repeats: int) -> float:
    """The step's products, each shape `count` times, captured as one CUDA graph and replayed:
    the floor as a captured request meets it. Timing each product from the host counted its
    launch and sync (the H200 run read the 10 s window's small products at 152 TFLOP/s, a
    "floor" slower than the replayed step it was meant to bound)."""

    def step() -> None:
        for a, b, g in operands:
            for _ in range(g.count):
                torch.mm(a, b)

    # On `device` throughout (sa-bench --device cuda:1): the stopwatch's events record on the
    # current device's stream, and the capture's stream is `side`, not one made on the current.
    with on_device(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step()  # cuBLAS picks its kernels and workspace outside the capture
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            step()
        graph.replay()
        times = []
        for _ in range(repeats):
            with stopwatch(device) as elapsed:
                graph.replay()
            times.append(elapsed.seconds)
    return statistics.median(times)


# The engine folders' precisions as ONNX element types and numpy arrays (bf16 folders run on
# TensorRT only: numpy has no bf16).
ONNX_FLOATS = {torch.float32: ("FLOAT", np.float32), torch.float16: ("FLOAT16", np.float16)}


def onnxruntime_gemm_rate(
    gemms: list[Gemm], dtype: torch.dtype, device: torch.device, repeats: int = 3
) -> GemmRate:
    """MatMul of each shape in `dtype` on the onnxruntime provider the engine rows run on, its
    input and output bound on the device as theirs are (a GPU's floor is not PCIe's)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from stable_audio_rt.runtime.backends.onnxruntime_backend import bound, provider_for, session_options

    element, array_type = ONNX_FLOATS[dtype]
    options = session_options()
    total = 0.0
    rng = np.random.default_rng(0)
    for g in gemms:
        weight = numpy_helper.from_array(rng.standard_normal((g.k, g.n)).astype(array_type), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "w"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("a", getattr(TensorProto, element), [g.m, g.k])],
            [helper.make_tensor_value_info("y", getattr(TensorProto, element), [g.m, g.n])],
            [weight],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        session = ort.InferenceSession(model.SerializeToString(), options, providers=[provider_for(device)])
        a = torch.from_numpy(rng.standard_normal((g.m, g.k)).astype(array_type)).to(device)
        y = torch.empty(g.m, g.n, dtype=dtype, device=device)
        binding = bound(session, device, {"a": a}, {"y": y})

        def product(session=session, binding=binding, y=y) -> torch.Tensor:
            session.run_with_iobinding(binding)
            return y

        total += best_seconds(product, repeats, PROBE_TOTAL_S) * g.count
    flops = sum(g.flops for g in gemms)
    return GemmRate("onnxruntime", flops / total / 1e9, total)
