"""The onnxruntime backend: runs an engine folder written by sa-export.

The CPU provider everywhere; the CUDA provider when onnxruntime-gpu is installed and the device
is CUDA (the same IOBinding code).

It replaces only the component calls; the sampler and the guidance are the same code as with
the torch backend, and the folder checks, the conditioner and the DiT step are those of every
engine backend (`engine_backend`). Every graph's files are checked against the manifest
before a session opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.manifest import MANIFEST, EngineFolderError, Manifest
from stable_audio_rt.precision import DTYPES
from stable_audio_rt.runtime.backends.engine_backend import (
    EngineComponents,
    EngineGraph,
    require_same_weights,
)

if TYPE_CHECKING:  # imported where a session opens, as the rest of this module does
    import onnxruntime

__all__ = ["OrtComponents", "OrtGraph", "require_same_weights"]

# onnxruntime feeds no bf16 tensors: its precisions are these two of DTYPES.
ORT_PRECISIONS = ("fp32", "fp16")
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}
# The same, as onnxruntime names a graph's value types.
ORT_TYPES = {torch.float32: "tensor(float)", torch.float16: "tensor(float16)", torch.int64: "tensor(int64)"}


class OrtGraph(EngineGraph):
    """One exported component: an onnxruntime session plus its profile from the manifest.

    Inputs and outputs are torch tensors bound by address (IOBinding) on the run's device, so
    on CUDA no tensor crosses to the host; on the CPU the same binding code runs.
    """

    def __init__(self, folder: Path, manifest: Manifest, name: str, device: torch.device) -> None:
        import onnxruntime as ort

        entry = manifest.check_files(folder, name)
        if entry.precision not in ORT_PRECISIONS:
            raise EngineFolderError(
                f"{name} is {entry.precision}, which this backend cannot feed; export with --fp32 or --fp16 "
                f"for onnxruntime (bf16 is for TensorRT)"
            )
        if entry.plugins:
            raise EngineFolderError(
                f"{name} calls TensorRT plugins ({', '.join(entry.plugins)}), which onnxruntime cannot run; "
                f"re-export without --trt-plugins for --backend onnxruntime"
            )
        super().__init__(folder, manifest, name, entry, device, DTYPES[entry.precision])
        try:
            self.session = ort.InferenceSession(
                str(folder / entry.file), session_options(), providers=[provider_for(device)]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineFolderError(
                f"{folder / entry.file} cannot be loaded ({e}); rebuild with `sa-export`"
            ) from e
        self._check_against_manifest(folder)

    def _check_against_manifest(self, folder: Path) -> None:
        """The graph's inputs and outputs, named, typed and of the fixed sizes the manifest records:
        an edited manifest (a precision, a name, a size) is refused here, not met as onnxruntime's
        error or a torch traceback (the named axes, sized by the request, are not compared)."""
        for what, specs, found in (
            ("inputs", self.entry.inputs, self.session.get_inputs()),
            ("outputs", self.entry.outputs, self.session.get_outputs()),
        ):
            recorded = [
                (spec.name, ORT_TYPES[self.element_type(spec.kind)], _fixed_sizes(spec.axes))
                for spec in specs
            ]
            graph = [(value.name, value.type, _fixed_sizes(value.shape)) for value in found]
            if graph != recorded:
                raise EngineFolderError(
                    f"{folder / self.entry.file} has the {what} {graph}, but {MANIFEST} records "
                    f"{recorded} for it (edited?): rebuild the folder with `sa-export`"
                )

    def execute(self, values: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        binding = bound(
            self.session,
            self.device,
            {spec.name: tensor for spec, tensor in zip(self.entry.inputs, values, strict=True)},
            {spec.name: tensor for spec, tensor in zip(self.entry.outputs, outputs, strict=True)},
        )
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # onnxruntime runs on its own stream
        self.session.run_with_iobinding(binding)


def bound(session, device: torch.device, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]):
    """An I/O binding of `session` that reads `inputs` and writes `outputs` where they lie on
    `device`: no copy through the host on a GPU."""
    binding = session.io_binding()
    for bind, tensors in ((binding.bind_input, inputs), (binding.bind_output, outputs)):
        for name, tensor in tensors.items():
            bind(
                name,
                device.type,
                _device_id(device),
                NUMPY_TYPES[tensor.dtype],
                list(tensor.shape),
                tensor.data_ptr(),
            )
    return binding


def session_options() -> onnxruntime.SessionOptions:
    """onnxruntime's options for this package's sessions: its warnings off, and its CPU threads
    torch's (`torch.get_num_threads()`, set by OMP_NUM_THREADS or `torch.set_num_threads`), so one
    setting sizes both backends. onnxruntime's own default is every physical core, whatever
    the process was given."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    return options


def provider_for(device: torch.device) -> str | tuple[str, dict]:
    import onnxruntime as ort

    if device.type == "cpu":
        return "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            "onnxruntime has no CUDA provider here: install onnxruntime-gpu (pip install "
            "'stable-audio-rt[gpu]'), or run the onnxruntime backend on device 'cpu'"
        )
    # The session on the pipeline's GPU (the provider's default is GPU 0 whatever cuda:N says).
    return "CUDAExecutionProvider", {"device_id": _device_id(device)}


def _device_id(device: torch.device) -> int:
    """The device's index; plain "cuda" is torch's current device, as for torch's own tensors."""
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if device.type == "cuda" else 0


def _fixed_sizes(axes: Sequence[int | str | None]) -> tuple[int | None, ...]:
    """An axis list with its named (dynamic) axes as None: what a graph and its record share."""
    return tuple(axis if isinstance(axis, int) else None for axis in axes)


class OrtComponents(EngineComponents):
    """Everything the pipeline needs, from an engine folder, run by onnxruntime."""

    capturable = False  # onnxruntime synchronises the stream before each run

    def __init__(self, folder: Path, device: torch.device, model: str | Path | None = None) -> None:
        super().__init__(folder, device, OrtGraph, model)
