"""The TensorRT backend: runs the plans sa-export built beside an engine folder's graphs.

Thin, and written by NVIDIA's TensorRT 10.x/11.x Python API documentation
(docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/). The calls, by page:
- infer/Core/Logger.html: `Logger(Logger.WARNING)`.
- infer/Core/Runtime.html: `Runtime(logger)`, `deserialize_cuda_engine(bytes)` (None on failure).
- infer/Core/Engine.html (ICudaEngine): `num_io_tensors`, `get_tensor_name(i)`,
  `get_tensor_mode(name)` (`TensorIOMode.INPUT` / `OUTPUT`), `get_tensor_dtype(name)`,
  `num_optimization_profiles`, `get_tensor_profile_shape(name, 0)` ([min, opt, max]),
  `device_memory_size_v2`, `create_execution_context(strategy=ExecutionContextAllocationStrategy.
  USER_MANAGED)`.
- infer/Core/ExecutionContext.html (IExecutionContext): `set_device_memory(pointer, size)`
  (256-byte aligned, at least `device_memory_size_v2`), `set_optimization_profile_async(0,
  stream)`, `set_input_shape(name, shape)` (False outside the profile), `get_tensor_shape(name)`,
  `set_tensor_address(name, pointer)`, `execute_async_v3(stream_handle)` (False on failure).
- infer/FoundationalTypes/DataType.html: FLOAT, HALF, BF16, INT32, INT64, BOOL.

Every plan is checked before it is deserialized: recorded in the manifest, the same bytes, built
by this TensorRT version for this GPU and compute capability. A plan whose graph calls our
plugins carries their ahead-of-time kernels, so nothing is registered to run it: an AOT
plugin's compiled kernel is part of the engine, which needs no Python module or definition at
run time (NVIDIA/TensorRT samples/python/quickly_deployable_plugins, "Loading and running a TRT
engine containing an AOT plugin"). One execution
context per input-shape bucket: a CUDA graph captured on one context never sees its shapes (or
TensorRT's shape-dependent internal buffers) changed by another request's shapes. The contexts of
one engine share one scratch buffer of the engine's size (the default, STATIC, gives each context
its own at the largest profile's size, so every new clip length cost a whole one, outside torch's
allocator); they never run at once: every run is ordered on the caller's stream. Requests of one
shape but other step counts capture the same context into graphs of their own, each with its own
tensor addresses: NVIDIA's TensorRT-Edge-LLM runtime does the same (its EngineExecutor keeps a
graph per set of binding addresses and shapes on one USER_MANAGED context). On CUDA the
engine runs on a torch-owned side stream joined to the caller's stream by events, with no host
synchronisation, so a CUDA graph can capture it (TensorRT's CUDA-graph guidance: run each
context once before capturing it, so its shape-dependent setup happens outside the capture).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from stable_audio_rt.errors import ConfigError, StableAudioError
from stable_audio_rt.manifest import (
    ComponentEntry,
    EngineFolderError,
    Manifest,
    check_file,
    profile_shapes,
)
from stable_audio_rt.precision import DTYPES
from stable_audio_rt.runtime.backends.engine_backend import EngineComponents, EngineGraph
from stable_audio_rt.runtime.device_context import on_device
from stable_audio_rt.trt_import import gpu_identity, import_tensorrt

# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment." (and
# set_device_memory: "256-byte aligned device memory").
TENSOR_ADDRESS_ALIGNMENT = 256


class EngineRunError(StableAudioError):
    """TensorRT refused to run an engine (its log says why)."""


def check_aligned(component: str, name: str, tensor: torch.Tensor) -> None:
    """Refuse an address TensorRT does not take: `IExecutionContext::setTensorAddress` wants
    "at least 256-byte alignment" (a view into a larger tensor may start anywhere)."""
    if tensor.data_ptr() % TENSOR_ADDRESS_ALIGNMENT:
        raise EngineRunError(
            f"{component}'s {name} starts at an address TensorRT does not take (not "
            f"{TENSOR_ADDRESS_ALIGNMENT}-byte aligned): pass a tensor of its own, not a view into another"
        )


def torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    """The torch type of a TensorRT DataType; the others are refused."""
    mapping = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }
    if dtype not in mapping:
        raise EngineFolderError(
            f"TensorRT type {dtype} is none this backend feeds (FLOAT, HALF, BF16, INT32, INT64, BOOL)"
        )
    return mapping[dtype]


def rebuild_hint(folder: Path, manifest: Manifest) -> str:
    return (
        f"`sa-export --model {shlex.quote(manifest.source)} --out {shlex.quote(str(folder))}` on this machine"
    )


def checked_plan(folder: Path, manifest: Manifest, name: str, version: str, gpu: tuple[str, str]) -> Path:
    """The plan of component `name`, after checking it against the manifest, the TensorRT
    `version` and the run's GPU (name, compute capability), before anything reads it."""
    rebuild = rebuild_hint(folder, manifest)
    engine = manifest.entry(folder, name).engine
    if engine is None:
        raise EngineFolderError(
            f"{folder} has no TensorRT plan for {name} (exported without TensorRT or a GPU): build the "
            f"plans with {rebuild}"
        )
    path = folder / engine.file
    check_file(path, engine.record, f"rebuild the plans with {rebuild}")
    if engine.tensorrt != version:
        raise EngineFolderError(
            f"{path} was built by TensorRT {engine.tensorrt}, this is TensorRT {version}: a plan runs "
            f"only on the version that built it; rebuild the plans with {rebuild}"
        )
    built_for = (engine.gpu, engine.compute_capability)
    if built_for != gpu:
        raise EngineFolderError(
            f"{path} was built for {built_for[0]} (compute capability {built_for[1]}), this device is "
            f"{gpu[0]} ({gpu[1]}): a plan runs only on the GPU it was built for; rebuild the plans with "
            f"{rebuild}"
        )
    return path


class TrtGraph(EngineGraph):
    """One component's TensorRT plan, deserialized, with one execution context per shape bucket."""

    def __init__(self, folder: Path, manifest: Manifest, name: str, device: torch.device) -> None:
        trt = import_tensorrt()
        entry = manifest.entry(folder, name)
        if entry.precision not in DTYPES:
            raise EngineFolderError(f"{name} is {entry.precision}, which the TensorRT backend cannot feed")
        super().__init__(folder, manifest, name, entry, device, DTYPES[entry.precision])
        plan = checked_plan(folder, manifest, name, trt.__version__, gpu_identity(device))
        self.trt, self.rebuild = trt, f"rebuild the plans with {rebuild_hint(folder, manifest)}"
        with on_device(self.device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept alive with its engine
            self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EngineFolderError(
                f"{plan} cannot be deserialized by TensorRT {trt.__version__} (its log above says why): "
                f"{self.rebuild}"
            )
        self._check_engine(plan, entry, profile_shapes(entry, manifest.model_config))
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # Input shapes → their execution context.
        self.contexts: dict[tuple[tuple[int, ...], ...], Any] = {}
        self.scratch: torch.Tensor | None = None  # the contexts' device memory, made with the first

    def _new_context(self) -> Any:
        """An execution context on the engine's shared scratch memory (TensorRT before 10.1, which
        lacks the V2 memory calls: one with memory of its own)."""
        size = getattr(self.engine, "device_memory_size_v2", None)
        if size is None:
            return self.engine.create_execution_context()
        strategy = self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        context = self.engine.create_execution_context(strategy=strategy)
        if self.scratch is None:  # a run before any capture (the warm-up) makes it
            self.scratch = torch.empty(size + TENSOR_ADDRESS_ALIGNMENT, dtype=torch.uint8, device=self.device)
        start = self.scratch.data_ptr()
        context.set_device_memory(start + (-start % TENSOR_ADDRESS_ALIGNMENT), size)
        return context

    def _stream_handle(self) -> int:
        return self.stream.cuda_stream if self.stream is not None else 0

    def _check_engine(
        self, plan: Path, entry: ComponentEntry, profile: dict[str, tuple[tuple[int, ...], ...]]
    ) -> None:
        """The plan's I/O names and types are the manifest's, and its profile 0 covers the
        manifest's batch and frame ranges."""
        trt, engine, rebuild = self.trt, self.engine, self.rebuild
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        modes = {name: engine.get_tensor_mode(name) for name in names}
        found = (
            sorted(n for n in names if modes[n] == trt.TensorIOMode.INPUT),
            sorted(n for n in names if modes[n] == trt.TensorIOMode.OUTPUT),
        )
        expected = (sorted(s.name for s in entry.inputs), sorted(s.name for s in entry.outputs))
        if found != expected:
            raise EngineFolderError(
                f"{plan} has inputs {found[0]} and outputs {found[1]}, the manifest {expected[0]} and "
                f"{expected[1]}: {rebuild}"
            )
        for spec in [*entry.inputs, *entry.outputs]:
            dtype = torch_dtype(trt, engine.get_tensor_dtype(spec.name))
            if dtype != self.element_type(spec.kind):
                raise EngineFolderError(
                    f"{plan} takes {spec.name} as {dtype}, the manifest says "
                    f"{self.element_type(spec.kind)}: {rebuild}"
                )
        if engine.num_optimization_profiles < 1:
            raise EngineFolderError(f"{plan} has no optimization profile: {rebuild}")
        for name, (low, _, high) in profile.items():
            have_low, _, have_high = (tuple(dims) for dims in engine.get_tensor_profile_shape(name, 0))
            if not (
                len(have_low) == len(low) == len(have_high)
                and all(a <= b for a, b in zip(have_low, low, strict=True))
                and all(a >= b for a, b in zip(have_high, high, strict=True))
            ):
                raise EngineFolderError(
                    f"{plan}'s profile for {name} ({have_low}–{have_high}) does not cover the manifest's "
                    f"{low}–{high}: {rebuild}"
                )

    def _context(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        """The execution context of this shape bucket (created on first use: profile 0, the
        input shapes set, the plan's output shapes checked against the manifest's)."""
        if shapes in self.contexts:
            return self.contexts[shapes]
        with on_device(self.device):
            context = self._new_context()
            context.set_optimization_profile_async(0, self._stream_handle())
        for spec, shape in zip(self.entry.inputs, shapes, strict=True):
            if not context.set_input_shape(spec.name, shape):
                raise ConfigError(
                    f"the {self.name} engine cannot take {spec.name} of shape {shape}, outside its "
                    f"profile: re-export with --max-batch and --frames covering it"
                )
        outputs = self.output_shapes(shapes)
        for spec, shape in zip(self.entry.outputs, outputs, strict=True):
            if tuple(context.get_tensor_shape(spec.name)) != shape:
                raise EngineFolderError(
                    f"the {self.name} plan makes {spec.name} of shape "
                    f"{tuple(context.get_tensor_shape(spec.name))}, the manifest's spec {shape}: "
                    f"{self.rebuild}"
                )
        self.contexts[shapes] = context
        return context

    def execute(self, values: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        # The inputs are in the engine's types (checked equal to the spec's when it was opened).
        context = self._context(tuple(tuple(value.shape) for value in values))
        for spec, tensor in zip([*self.entry.inputs, *self.entry.outputs], [*values, *outputs], strict=True):
            if self.stream is not None:  # on a GPU (the CPU's stand-in takes torch's 64-byte CPU memory)
                check_aligned(self.name, spec.name, tensor)
            if not context.set_tensor_address(spec.name, tensor.data_ptr()):
                raise EngineRunError(f"TensorRT refused the address of {self.name}'s {spec.name}")
        if self.stream is None:  # the CPU: only the contract-test stand-in runs here
            ran = context.execute_async_v3(0)
        else:
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            with on_device(self.device):
                ran = context.execute_async_v3(self.stream.cuda_stream)
            current.wait_stream(self.stream)
        if not ran:
            raise EngineRunError(f"TensorRT could not run the {self.name} engine; its log above says why")


class TrtComponents(EngineComponents):
    """Everything the pipeline needs, from an engine folder's TensorRT plans."""

    capturable = True  # no host synchronisation: the pipeline may capture the calls in a CUDA graph

    def __init__(self, folder: Path, device: torch.device, model: str | Path | None = None) -> None:
        super().__init__(folder, device, TrtGraph, model)
