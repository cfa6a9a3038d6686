"""TensorRT, imported lazily: its absence is one clear error, never an import failure elsewhere."""

from __future__ import annotations

from types import ModuleType

import torch

from stable_audio_rt.errors import ConfigError, StableAudioError


class TensorRTUnavailable(StableAudioError, RuntimeError):
    """TensorRT's Python package (or its native libraries) is not installed."""


def import_tensorrt() -> tuple[ModuleType, ModuleType]:
    """(tensorrt, tensorrt.plugin), or a one-line error that says how to install them."""
    try:
        import tensorrt
        import tensorrt.plugin
    except (ImportError, OSError) as e:
        reason = " ".join(str(e).split())  # one line, whatever the loader printed
        raise TensorRTUnavailable(
            f"TensorRT is not usable here ({reason}); install it with pip install 'stable-audio-rt[trt]' "
            "on a machine with an NVIDIA GPU and driver"
        ) from e
    return tensorrt, tensorrt.plugin


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
