"""CONTRACT-TEST STAND-IN for NVIDIA TensorRT. This is not TensorRT and proves nothing about
TensorRT itself: it implements only the subset of the TensorRT 10.x/11.x Python API that
stable_audio_rt calls, with the documented names and signatures, so that our calls are
exercised for real on a machine where TensorRT cannot be installed. Its runtime subset runs the
parsed ONNX graph with onnxruntime on the CPU: outputs equal onnxruntime's by construction, so a
run through it checks our calls (shapes, profiles, addresses, types), never TensorRT's numerics.

Put tests/fakes on sys.path (first) to import it as `tensorrt`.
"""

import enum

__version__ = "0.0.0+contract-stand-in"
CONTRACT_STAND_IN = True


class DataType(enum.Enum):
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/FoundationalTypes/DataType.html
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    BF16 = 7
    INT64 = 8


float32 = DataType.FLOAT
float16 = DataType.HALF
bfloat16 = DataType.BF16
int32 = DataType.INT32
int64 = DataType.INT64


# ---- Builder subset (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/
# Builder.html, Network.html, BuilderConfig.html, OptimizationProfile.html; parsers/Onnx/
# pyOnnx.html). build_serialized_network returns JSON of what was configured, so tests can read
# back every call our builder made.

import json  # noqa: E402

import onnx  # noqa: E402


class Logger:
    """Core/Logger.html: severities; our code passes one to Builder and OnnxParser."""

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity


class NetworkDefinitionCreationFlag(enum.IntEnum):
    """Network.html: EXPLICIT_BATCH (deprecated, implied in 10.x) and STRONGLY_TYPED."""

    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: dict[str, list[int]] = {}  # name → dims, −1 for dynamic
        self.plugin_nodes: list[str] = []
        self.onnx_path: str | None = None  # what the parser read: the stand-in runtime runs it


class OnnxParser:
    """parse_from_file(path) → bool; num_errors; get_error(i). Unknown ops are plugins: they
    must be registered (tensorrt.plugin) before parsing, as TensorRT's parser requires."""

    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network, self.errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def parse_from_file(self, path: str) -> bool:
        from tensorrt import plugin

        model = onnx.load(path, load_external_data=False)
        self.network.onnx_path = str(path)
        initializers = {i.name for i in model.graph.initializer}
        for value in model.graph.input:
            if value.name not in initializers:
                dims = [
                    d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
                ]
                self.network.inputs[value.name] = dims
        for node in model.graph.node:
            if node.domain not in ("", "ai.onnx"):
                namespace = next(a.s.decode() for a in node.attribute if a.name == "plugin_namespace")
                plugin_id = f"{namespace}::{node.op_type}"
                if plugin_id not in plugin.REGISTRY:
                    self.errors.append(f"plugin {plugin_id} not found in the plugin registry")
                    return False
                self.network.plugin_nodes.append(plugin_id)
        return True


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"fake-timing-cache"

    def serialize(self) -> bytes:
        return self.data


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, min, opt, max) -> None:  # noqa: A002  (TensorRT's names)
        shapes = [list(min), list(opt), list(max)]
        if any(len(s) != len(shapes[0]) for s in shapes) or any(
            not a <= b <= c for a, b, c in zip(*shapes, strict=True)
        ):
            raise ValueError(f"set_shape({name}): need min ≤ opt ≤ max of one rank, got {shapes}")
        self.shapes[name] = shapes


class IBuilderConfig:
    def __init__(self) -> None:
        self.pool_limits: dict[int, int] = {}
        self.builder_optimization_level = 3
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self.cache_bytes_in = 0

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pool_limits[int(pool)] = size

    def create_timing_cache(self, serialized: bytes) -> ITimingCache:
        self.cache_bytes_in = len(serialized)
        return ITimingCache(serialized)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self.timing_cache

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        for profile in config.profiles:
            for name, (low, _, high) in profile.shapes.items():
                dims = network.inputs.get(name)
                if dims is None:
                    return None  # TensorRT logs the unknown input and returns None
                if any(d != -1 and not lo == hi == d for d, lo, hi in zip(dims, low, high, strict=True)):
                    return None
        if set().union(*(p.shapes for p in config.profiles)) != set(network.inputs):
            return None  # every dynamic input needs a profile
        return json.dumps({
            "flags": network.flags,
            "strongly_typed": bool(network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))),
            "workspace": config.pool_limits.get(int(MemoryPoolType.WORKSPACE)),
            "optimization_level": config.builder_optimization_level,
            "profiles": [p.shapes for p in config.profiles],
            "plugin_nodes": network.plugin_nodes,
            "cache_bytes_in": config.cache_bytes_in,
            "onnx_path": network.onnx_path,
        }).encode()  # fmt: skip


# ---- Runtime subset, BACKED BY ONNXRUNTIME ON THE CPU. A "plan" from build_serialized_network
# names the ONNX graph the parser read; the deserialized engine runs that graph (its external
# data beside it) with onnxruntime, binding the addresses given to set_tensor_address (host
# pointers here; device pointers in TensorRT) through an IOBinding. Pages:
# docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html,
# .../Core/Engine.html (ICudaEngine, TensorIOMode), .../Core/ExecutionContext.html.

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
from onnx import TensorProto  # noqa: E402

from stable_audio_rt.runtime.backends.onnxruntime_backend import session_options  # noqa: E402


class TensorIOMode(enum.Enum):
    """Core/Engine.html: TensorIOMode: NONE, INPUT, OUTPUT."""

    NONE = 0
    INPUT = 1
    OUTPUT = 2


_ONNX_TYPES = {
    TensorProto.FLOAT: DataType.FLOAT,
    TensorProto.FLOAT16: DataType.HALF,
    TensorProto.BFLOAT16: DataType.BF16,
    TensorProto.INT32: DataType.INT32,
    TensorProto.INT64: DataType.INT64,
    TensorProto.BOOL: DataType.BOOL,
}
_NUMPY_TYPES = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT32: np.int32,
    DataType.INT64: np.int64,
    DataType.BOOL: np.bool_,
}


class Runtime:
    """Core/Runtime.html: Runtime(logger); deserialize_cuda_engine(serialized_engine: buffer) →
    ICudaEngine, or None if it could not be deserialized."""

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine) -> "ICudaEngine | None":
        try:
            plan = json.loads(bytes(serialized_engine))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(plan, dict) or not plan.get("onnx_path"):
            return None
        return ICudaEngine(plan)


class ExecutionContextAllocationStrategy(enum.Enum):
    """Core/Engine.html: how a context gets its device memory (STATIC: its own, at the largest
    profile's size; USER_MANAGED: set_device_memory before running)."""

    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


# A stand-in engine's scratch need: any size works, the checks are what matter.
STAND_IN_DEVICE_MEMORY = 4096
DEVICE_MEMORY_ALIGNMENT = 256


class ICudaEngine:
    """Core/Engine.html: num_io_tensors, get_tensor_name(index), get_tensor_mode(name),
    get_tensor_dtype(name), get_tensor_shape(name) (−1 for dynamic dimensions),
    num_optimization_profiles, get_tensor_profile_shape(name, profile_index) → [min, opt, max],
    create_execution_context()."""

    def __init__(self, plan: dict) -> None:
        model = onnx.load(plan["onnx_path"], load_external_data=False)
        initializers = {i.name for i in model.graph.initializer}
        self._io: dict[str, tuple[TensorIOMode, DataType, list[int]]] = {}
        for mode, values in (
            (TensorIOMode.INPUT, [v for v in model.graph.input if v.name not in initializers]),
            (TensorIOMode.OUTPUT, model.graph.output),
        ):
            for value in values:
                tensor = value.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
                self._io[value.name] = (mode, _ONNX_TYPES[tensor.elem_type], dims)
        self._names = list(self._io)
        self._profiles: list[dict[str, list[list[int]]]] = plan["profiles"]
        # The onnxruntime backend's options (its thread count among them): the outputs compared
        # with that backend's are then bit-identical, not equal to the threads' summation order.
        self.session = onnxruntime.InferenceSession(
            plan["onnx_path"], session_options(), providers=["CPUExecutionProvider"]
        )
        self._output_shapes: dict[tuple, dict[str, list[int]]] = {}
        self.contexts: list[IExecutionContext] = []  # every context created, for tests to read

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._io[name][0] if name in self._io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._io[name][1]

    def get_tensor_shape(self, name: str) -> list[int]:
        return list(self._io[name][2])

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[list[int]]:
        return [list(dims) for dims in self._profiles[profile_index][name]]

    @property
    def device_memory_size_v2(self) -> int:
        return STAND_IN_DEVICE_MEMORY

    def create_execution_context(
        self, strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC
    ) -> "IExecutionContext":
        context = IExecutionContext(self, strategy)
        self.contexts.append(context)
        return context

    def _inputs(self) -> list[str]:
        return [n for n in self._names if self._io[n][0] is TensorIOMode.INPUT]

    def _outputs(self) -> list[str]:
        return [n for n in self._names if self._io[n][0] is TensorIOMode.OUTPUT]

    def _shapes_of_outputs(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
        """Output shapes for these input shapes: a dry run on zeros, once per input shapes
        (TensorRT infers them from the network; tiny graphs make the dry run cheap)."""
        key = tuple(shapes[n] for n in self._inputs())
        if key not in self._output_shapes:
            feeds = {n: np.zeros(shapes[n], _NUMPY_TYPES[self._io[n][1]]) for n in self._inputs()}
            results = self.session.run(self._outputs(), feeds)
            self._output_shapes[key] = {
                n: list(r.shape) for n, r in zip(self._outputs(), results, strict=True)
            }
        return self._output_shapes[key]


class IExecutionContext:
    """Core/ExecutionContext.html: set_optimization_profile_async(profile_index, stream_handle),
    set_input_shape(name, shape) → bool, get_tensor_shape(name), set_tensor_address(name,
    memory) → bool, execute_async_v3(stream_handle) → bool. Records what each execution bound."""

    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy) -> None:
        self.engine, self.strategy = engine, strategy
        self.device_memory: int | None = None  # set_device_memory's pointer
        self.profile_set: int | None = None  # the index given to set_optimization_profile_async
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions: list[dict] = []

    @property
    def active_optimization_profile(self) -> int:
        return self.profile_set or 0  # profile 0 until another is selected

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            return False
        self.profile_set, self.shapes = profile_index, {}  # selecting a profile unsets the shapes
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        if self.engine.get_tensor_mode(name) is not TensorIOMode.INPUT:
            return False
        shape = tuple(int(d) for d in shape)
        low, _, high = self.engine.get_tensor_profile_shape(name, self.active_optimization_profile)
        if len(shape) != len(low) or any(
            not lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True)
        ):
            return False  # TensorRT logs the profile it violates
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> list[int]:
        mode = self.engine.get_tensor_mode(name)
        if mode is TensorIOMode.INPUT and name in self.shapes:
            return list(self.shapes[name])
        if mode is TensorIOMode.OUTPUT and all(n in self.shapes for n in self.engine._inputs()):
            return list(self.engine._shapes_of_outputs(self.shapes)[name])
        return self.engine.get_tensor_shape(name)

    def set_device_memory(self, memory: int, size: int) -> None:
        # "memory: 256-byte aligned device memory. size: ... at least as large as
        # CudaEngine.get_device_memory_size_v2"; the bindings raise on an error.
        if memory % DEVICE_MEMORY_ALIGNMENT or size < self.engine.device_memory_size_v2:
            raise RuntimeError(f"set_device_memory({memory:#x}, {size}): unaligned or too small")
        self.device_memory = int(memory)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine.get_tensor_mode(name) is TensorIOMode.NONE:
            return False
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self.engine
        inputs, outputs = engine._inputs(), engine._outputs()
        if any(n not in self.shapes for n in inputs) or any(
            n not in self.addresses for n in inputs + outputs
        ):
            return False  # TensorRT: every input shape and every I/O address must be set
        if self.strategy is ExecutionContextAllocationStrategy.USER_MANAGED and self.device_memory is None:
            return False  # a user-managed context runs only once given its memory
        binding = engine.session.io_binding()
        for name in inputs:
            numpy_type = _NUMPY_TYPES[engine.get_tensor_dtype(name)]
            binding.bind_input(name, "cpu", 0, numpy_type, list(self.shapes[name]), self.addresses[name])
        for name in outputs:
            numpy_type = _NUMPY_TYPES[engine.get_tensor_dtype(name)]
            shape = self.get_tensor_shape(name)
            binding.bind_output(name, "cpu", 0, numpy_type, shape, self.addresses[name])
        engine.session.run_with_iobinding(binding)
        self.executions.append({
            "stream": stream_handle,
            "profile": self.profile_set,
            "shapes": dict(self.shapes),
            "addresses": dict(self.addresses),
            "device_memory": self.device_memory,
        })  # fmt: skip
        return True
