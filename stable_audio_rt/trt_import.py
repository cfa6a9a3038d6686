"""TensorRT, imported lazily: its absence is one clear error, never an import failure elsewhere."""

from __future__ import annotations

from types import ModuleType

import torch

from stable_audio_rt.errors import ConfigError, StableAudioError


class TensorRTUnavailable(StableAudioError, RuntimeError):
    """TensorRT's Python package (or its native libraries) is not installed."""


def import_tensorrt() -> ModuleType:
    """tensorrt, or a one-line error that says how to install it. Running plans needs nothing
    more: their AOT plugins' kernels are in the engine."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:
        raise TensorRTUnavailable(
            f"TensorRT is not usable here ({_one_line(e)}); install it with pip install "
            "'stable-audio-rt[trt]' on a machine with an NVIDIA GPU and driver"
        ) from e
    return tensorrt


def import_tensorrt_plugin() -> tuple[ModuleType, ModuleType]:
    """(tensorrt, tensorrt.plugin): what building engines with our kernels' plugins needs (the
    Python AOT plugins of TensorRT 10.9 and later)."""
    tensorrt = import_tensorrt()
    try:
        import tensorrt.plugin
    except (ImportError, OSError) as e:
        raise TensorRTUnavailable(
            f"TensorRT {tensorrt.__version__} has no usable tensorrt.plugin ({_one_line(e)}): building with "
            "--trt-plugins needs TensorRT 10.9 or later (Python AOT plugins); export without them otherwise"
        ) from e
    return tensorrt, tensorrt.plugin


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())  # whatever the loader printed


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """(name, "major.minor" compute capability) of a CUDA device: what a TensorRT plan is built
    for and runs only on. Any other device is refused."""
    if device.type != "cuda":
        raise ConfigError(
            f"TensorRT runs on a CUDA GPU, not on {device}: use device 'cuda', or the onnxruntime backend "
            f"on the CPU"
        )
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"
