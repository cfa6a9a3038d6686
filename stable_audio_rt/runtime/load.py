"""What `StableAudio.load` decides before any weights are read, then the loading itself.

`plan_load` picks the backend and device (and says why), resolves the kernels and reads the
model's config: from its config files, a random model's name, or an engine folder's manifest.
The CLIs call it first, so that a request is resolved against `plan.config` and every argument
is checked before the seconds a load takes; `LoadPlan.components()` then loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.kernels.cpu_attention import cpu_attention
from stable_audio_rt.kernels.packed_linear import pack_linears_
from stable_audio_rt.kernels.switch import KernelChoice, resolve_kernels, use_kernels, use_onednn_vae_
from stable_audio_rt.manifest import Manifest
from stable_audio_rt.models.checkpoint import DEFAULT_REPO, LAYOUTS, Layout
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.loading import DEFAULT_T5_DTYPE, Placement
from stable_audio_rt.models.source import load_model, read_config
from stable_audio_rt.precision import DTYPES, NAMES, DtypeChoice, DtypeRequest, choose_dtype
from stable_audio_rt.runtime.backends.choice import BackendChoice, choose_backend
from stable_audio_rt.runtime.backends.engine_backend import require_components
from stable_audio_rt.runtime.backends.protocols import Components
from stable_audio_rt.runtime.backends.torch_backend import TorchComponents
from stable_audio_rt.trt_import import import_tensorrt

Backend = Literal["auto", "torch", "onnxruntime", "tensorrt"]
BACKENDS: tuple[Backend, ...] = ("auto", "torch", "onnxruntime", "tensorrt")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to run on (default: CUDA when available), refused clearly if unusable."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine; use device 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device} is not supported; use cpu or cuda")
    if device.type == "cpu" and device.index not in (None, 0):  # torch takes it as the one CPU
        raise ConfigError(f"device {device}: the CPU has no index (it runs on every core); use cpu")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise ConfigError(
            f"device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


@dataclass(frozen=True)
class WeightOptions:
    """What the torch backend loads and how (engine folders carry their own precision and
    kernels): the model's dtype ("auto": `precision.choose_dtype`) and T5's (None: fp32, or an
    engine folder's own), the attention and Snake maths, the checkpoint's layout and the Hub
    token."""

    dtype: DtypeRequest = "auto"
    t5_dtype: torch.dtype | None = None
    kernels: KernelChoice = "auto"
    layout: Layout = "auto"
    token: str | None = None


@dataclass(frozen=True)
class LoadPlan:
    """A load decided and checked, nothing read but config files: run it with `components()`."""

    choice: BackendChoice
    config: StableAudioConfig
    # torch: the checkpoint to load; an engine backend: the model its weights must come from
    # (None: not checked).
    model: str | Path | None
    engines: Path | None
    options: WeightOptions  # dtype and kernels resolved for this device (torch)
    dtype_choice: DtypeChoice  # the DiT's dtype and why (torch: what "auto" chose)

    @property
    def device(self) -> torch.device:
        return self.choice.device

    def components(self) -> Components:
        """Load the weights or open the engines (the expensive part)."""
        if self.choice.backend == "tensorrt":
            from stable_audio_rt.runtime.backends.tensorrt_backend import TrtComponents

            return TrtComponents(self.engines, self.device, self.model)
        if self.choice.backend == "onnxruntime":
            from stable_audio_rt.runtime.backends.onnxruntime_backend import OrtComponents

            return OrtComponents(self.engines, self.device, self.model)
        options = self.options
        placement = Placement(options.dtype, self.device, options.t5_dtype)
        loaded = load_model(self.model, placement, options.layout, options.token)
        use_kernels(options.kernels, loaded.dit, loaded.vae)
        if self.device.type == "cpu" and options.kernels == "compiled":
            use_onednn_vae_(loaded.vae, options.dtype)
            loaded.dit.set_attention(cpu_attention(options.dtype))
            # oneDNN's packed weights where they run faster (T5 too: fp32 whatever the request's dtype)
            pack_linears_(loaded.dit)
            pack_linears_(loaded.conditioner.text_encoder)
            # Eager here: no graph to keep static. Not for an fp16 T5, the reference-exact choice:
            # fp16's rounding moves with the count of keys summed (1e-3 from stable-audio-tools').
            loaded.conditioner.text_encoder.skips_padding = options.t5_dtype != torch.float16
        return TorchComponents(loaded)


def plan_load(
    model: str | Path | None = None,
    engines: str | Path | None = None,
    backend: Backend = "auto",
    device: torch.device | str | None = None,
    options: WeightOptions = WeightOptions(),
) -> LoadPlan:
    """See `StableAudio.load` for the arguments."""
    _check_t5_dtype(options.t5_dtype)
    if options.layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {options.layout!r}: use one of {', '.join(LAYOUTS)}")
    engines = None if engines is None else Path(engines)
    if engines is not None and backend != "torch":
        # Refused wherever the folder would run, torch from its source (auto's fallback) included:
        # the same answer on every machine, before the folder is read.
        _refuse_torch_options(options)
    choice = _choose_backend(engines, backend, device)
    if choice.backend == "torch":
        source = choice.model or (DEFAULT_REPO if model is None else model)
        config = read_config(source, options.layout, options.token)
        dtype = choose_dtype(options.dtype, choice.device)
        kernels = resolve_kernels(options.kernels, choice.device)
        if kernels == "triton" and choice.device.type == "cpu" and dtype.dtype == torch.bfloat16:
            raise ConfigError(
                "kernels='triton' on the CPU runs in Triton's interpreter, whose bf16 matrix products "
                "are wrong (off by ~1e10, measured): give dtype fp32 or fp16 with it, or kernels "
                "'compiled' or 'auto'"
            )
        t5_dtype = options.t5_dtype or DEFAULT_T5_DTYPE
        resolved = replace(options, dtype=dtype.dtype, t5_dtype=t5_dtype, kernels=kernels)
        return LoadPlan(choice, config, source, None, resolved, dtype)
    manifest = Manifest.read(engines)
    require_components(engines, manifest)
    _refuse_other_precisions(engines, manifest, options)
    dtype = DtypeChoice(DTYPES[manifest.components["dit"].precision], "the engines' precision")
    return LoadPlan(choice, manifest.model_config, model, engines, options, dtype)


def _check_t5_dtype(t5_dtype: object) -> None:
    if t5_dtype is not None and t5_dtype not in NAMES:
        raise ConfigError(
            f"t5_dtype must be one of {', '.join(map(str, NAMES))} or None (fp32), got {t5_dtype!r}"
        )


def _refuse_torch_options(options: WeightOptions) -> None:
    """The torch backend's kernels and checkpoint layout mean nothing to an engine folder (its
    graphs carry their own maths; its weights are in them): refused, not silently ignored."""
    if options.kernels != "auto":
        raise ConfigError(
            f"--kernels {options.kernels} applies to --backend torch; exported engines carry their own "
            "(in Python: kernels= applies without engines=)"
        )
    if options.layout != "auto":
        raise ConfigError(
            f"layout {options.layout!r} names a checkpoint's layout for the torch backend; an engine "
            "folder has its weights in its graphs: leave it out"
        )


def _refuse_other_precisions(engines: Path, manifest: Manifest, options: WeightOptions) -> None:
    """An engine folder runs the precisions it was exported in: a --dtype or --t5-dtype other
    than those is refused, not silently ignored."""
    asks = (("--dtype", "dtype", options.dtype, "dit"), ("--t5-dtype", "t5_dtype", options.t5_dtype, "t5"))
    for flag, argument, asked, component in asks:
        if asked in ("auto", None):
            continue
        precision, name = manifest.components[component].precision, NAMES.get(asked, str(asked))
        if asked != DTYPES[precision]:
            raise ConfigError(
                f"{flag} {name}: the engine folder {engines} runs its {component} in {precision}, "
                f"as exported; leave {flag} out (in Python: {argument}=), or export a folder in "
                f"{name} (sa-export --{name})"
            )


def _choose_backend(
    engines: Path | None, backend: Backend, device: torch.device | str | None
) -> BackendChoice:
    """The backend and device, checked before anything loads (messages name the CLI flags and,
    where they differ, the Python arguments)."""
    if backend == "auto":
        return choose_backend(engines, resolve_device(device))
    if backend == "torch":
        if engines is not None:
            raise ConfigError(
                "--engines is for --backend onnxruntime, tensorrt or auto, not torch "
                "(in Python: engines= with backend='onnxruntime', 'tensorrt' or 'auto')"
            )
        return BackendChoice("torch", resolve_device(device), None, "asked for")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if engines is None:
        raise ConfigError(
            f"--backend {backend} runs an engine folder: give --engines DIR (in Python: engines=DIR); "
            "sa-export writes one"
        )
    if backend == "tensorrt":
        import_tensorrt()  # its absence is the first thing to say
        return BackendChoice("tensorrt", resolve_device(device or "cuda"), None, "asked for")
    return BackendChoice("onnxruntime", resolve_device(device or "cpu"), None, "asked for")
