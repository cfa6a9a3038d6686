"""CONTRACT-TEST STAND-IN for NVIDIA TensorRT. This is not TensorRT and proves nothing about
TensorRT itself: it implements only the subset of the TensorRT 10.x/11.x Python API that
stable_audio_rt calls, with the documented names and signatures, so that our calls are
exercised for real on a machine where TensorRT cannot be installed.

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
        }).encode()  # fmt: skip
