"""TensorRT, imported lazily: its absence is one clear error, never an import failure elsewhere."""

from __future__ import annotations

from types import ModuleType

from stable_audio_rt.errors import StableAudioError


class TensorRTUnavailable(StableAudioError, RuntimeError):
    """TensorRT's Python package (or its native libraries) is not installed."""


def import_tensorrt() -> tuple[ModuleType, ModuleType]:
    """(tensorrt, tensorrt.plugin), or a one-line error that says how to install them."""
    try:
        import tensorrt
        import tensorrt.plugin
    except (ImportError, OSError) as e:
        raise TensorRTUnavailable(
            f"TensorRT is not usable here ({e}); install it with pip install 'stable-audio-rt[trt]' "
            "on a machine with an NVIDIA GPU and driver"
        ) from e
    return tensorrt, tensorrt.plugin
