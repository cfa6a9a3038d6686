"""`--backend auto`: the fastest backend that is installed and built for this machine.

With an engine folder on a CUDA device: tensorrt when TensorRT imports and the folder holds a
plan of every required component built by this TensorRT version for this GPU; else onnxruntime
on the GPU when onnxruntime-gpu is installed; else torch on the GPU, loading the checkpoint the
folder was exported from. With an engine folder on the CPU: onnxruntime. A folder onnxruntime
cannot run (bf16 graphs, TensorRT plugin nodes) takes torch where onnxruntime would be chosen.
Without one: torch.
Each choice comes with the reason the faster ones were passed over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stable_audio_rt.errors import StableAudioError
from stable_audio_rt.manifest import Manifest
from stable_audio_rt.models.io_spec import REQUIRED_COMPONENTS


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # torch | onnxruntime | tensorrt
    device: torch.device
    model: str | None  # the checkpoint torch loads when it stands in for an engine folder
    reason: str

    def line(self) -> str:
        return f"backend {self.backend} on {self.device}: {self.reason}"


def tensorrt_unusable(folder: Path, manifest: Manifest, device: torch.device) -> str | None:
    """Why the folder's TensorRT plans cannot run on `device`, or None when they can."""
    from stable_audio_rt.runtime.backends.tensorrt_backend import checked_plan
    from stable_audio_rt.trt_import import gpu_identity, import_tensorrt

    try:
        trt = import_tensorrt()
        gpu = gpu_identity(device)
        for name in REQUIRED_COMPONENTS:
            checked_plan(folder, manifest, name, trt.__version__, gpu)
    except StableAudioError as e:
        return str(e)
    return None


def onnxruntime_unusable(manifest: Manifest) -> str | None:
    """Why onnxruntime cannot run the folder's graphs (bf16 types, TensorRT plugin nodes), or
    None when it can."""
    from stable_audio_rt.runtime.backends.onnxruntime_backend import ORT_PRECISIONS

    for name, entry in manifest.components.items():
        if entry.precision not in ORT_PRECISIONS:
            return f"{name} is {entry.precision}, which onnxruntime cannot feed"
        if entry.plugins:
            return f"{name} calls TensorRT plugins, which onnxruntime cannot run"
    return None


def onnxruntime_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_backend(engines: Path | None, device: torch.device) -> BackendChoice:
    if engines is None:
        return BackendChoice("torch", device, None, "no engine folder given (--engines)")
    manifest = Manifest.read(engines)
    # A folder onnxruntime cannot run (bf16 graphs, TensorRT plugin nodes) falls to torch, as one
    # without onnxruntime-gpu does: choosing onnxruntime would only refuse it after the choice.
    ort_why_not = onnxruntime_unusable(manifest)
    if device.type != "cuda":
        if ort_why_not is None:
            return BackendChoice("onnxruntime", device, None, f"the engines in {engines}, on the CPU")
        return BackendChoice(
            "torch", device, manifest.source, f"not onnxruntime ({ort_why_not}); loading {manifest.source}"
        )
    why_not = tensorrt_unusable(engines, manifest, device)
    if why_not is None:
        return BackendChoice("tensorrt", device, None, f"plans in {engines} built for this GPU")
    if not onnxruntime_has_cuda():
        ort_why_not = "onnxruntime-gpu is not installed"
    if ort_why_not is None:
        return BackendChoice("onnxruntime", device, None, f"not tensorrt: {why_not}")
    return BackendChoice(
        "torch",
        device,
        manifest.source,
        f"not tensorrt ({why_not}); not onnxruntime ({ort_why_not}); loading {manifest.source}",
    )
