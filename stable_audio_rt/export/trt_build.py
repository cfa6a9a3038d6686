"""TensorRT engines from the exported ONNX graphs (TensorRT 10.x and 11.x).

Strongly typed networks: the ONNX carries every tensor's type, so there is no FP16/BF16 builder
flag (TensorRT 11 has none; on 10.x STRONGLY_TYPED is set as well). One optimization profile per
component, from the manifest's batch and frame ranges; a timing cache kept beside the engines;
the builder's optimization level and workspace as options; our plugins registered before the
parser meets their nodes. The calls are TensorRT's own Python API as documented
(docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api): Builder, create_network,
OnnxParser.parse_from_file, IBuilderConfig (set_memory_pool_limit, builder_optimization_level,
create_timing_cache / set_timing_cache / get_timing_cache), create_optimization_profile /
set_shape / add_optimization_profile, build_serialized_network.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from stable_audio_rt.atomic import write_atomically
from stable_audio_rt.errors import StableAudioError
from stable_audio_rt.manifest import (
    TIMING_CACHE,
    ComponentEntry,
    Manifest,
    PlanRecord,
    file_record,
    profile_shapes,
)
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.trt_import import gpu_identity, import_tensorrt

# TensorRT's default builder optimization level (0–5; higher builds longer for faster engines).
DEFAULT_OPTIMIZATION_LEVEL = 3
DEFAULT_WORKSPACE_GIB = 8


class EngineBuildError(StableAudioError):
    """TensorRT could not parse or build a graph; the message carries its own errors."""


@dataclass(frozen=True)
class EngineBuildSettings:
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
    workspace_gib: float = DEFAULT_WORKSPACE_GIB


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    entry: ComponentEntry,
    config: StableAudioConfig,
    settings: EngineBuildSettings = EngineBuildSettings(),
) -> str:
    """Build `plan_path` from `onnx_path`, atomically; returns the TensorRT version used.
    The timing cache beside the plan is read when present and written back."""
    trt = import_tensorrt()
    if entry.plugins:
        from stable_audio_rt.kernels.trt_plugins import register_plugins  # needs Triton

        register_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # By path, so the parser finds the external weights beside the graph.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * 2**30))
    builder_config.builder_optimization_level = settings.optimization_level
    cache_path = plan_path.parent / TIMING_CACHE
    cache = builder_config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    builder_config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(entry, config).items():
        profile.set_shape(name, low, opt, high)
    builder_config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build {onnx_path.name}; its log above says why")
    write_atomically(plan_path, bytes(serialized))
    write_atomically(cache_path, bytes(builder_config.get_timing_cache().serialize()))
    return trt.__version__


def build_gpu() -> tuple[str, str] | None:
    """(name, compute capability) of this machine's CUDA GPU, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return gpu_identity(torch.device("cuda"))


def build_folder_engines(
    folder: Path, manifest: Manifest, settings: EngineBuildSettings = EngineBuildSettings()
) -> Manifest:
    """A plan beside every graph of an engine folder, for the GPU of this machine; the manifest
    records each plan with the TensorRT version, GPU name and compute capability."""
    found = build_gpu()
    if found is None:
        raise EngineBuildError("TensorRT engines are built on the GPU that will run them: no CUDA GPU here")
    gpu, capability = found
    for name, entry in manifest.components.items():
        plan = folder / f"{name}.plan"
        version = build_engine(folder / entry.file, plan, entry, manifest.model_config, settings)
        record = file_record(plan)
        engine = PlanRecord(plan.name, record.sha256, record.bytes, version, gpu, capability)
        manifest.components[name] = replace(entry, engine=engine)
    manifest.write(folder)
    return manifest
