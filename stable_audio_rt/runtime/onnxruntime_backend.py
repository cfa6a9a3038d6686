"""The onnxruntime backend: runs an engine folder written by sa-export.

The CPU provider everywhere; the CUDA provider when onnxruntime-gpu is installed and the device
is CUDA (the same IOBinding code, exercised here only on the CPU: no GPU has run it yet).

It replaces only the component calls; the plan, the sampler and the guidance are the same code
as with the torch backend. The number conditioners (two tiny MLPs) stay in PyTorch, loaded from
the folder. Every graph's files are checked against the manifest before a session opens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.models.checkpoint import locate_checkpoint
from stable_audio_rt.models.conditioners import Conditioner, NumberConditioners
from stable_audio_rt.models.io_spec import COMPONENTS
from stable_audio_rt.models.manifest import (
    NUMBERS_FILE,
    TOKENIZER_DIR,
    EngineFolderError,
    Manifest,
    weights_fingerprint,
)
from stable_audio_rt.models.vae import posterior_std

FLOAT_TYPES = {"fp32": torch.float32, "fp16": torch.float16}
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}
REQUIRED = ("t5", "dit", "vae_decoder")


class OrtGraph:
    """One exported component: an onnxruntime session plus its profile from the manifest.

    Inputs and outputs are torch tensors bound by address (IOBinding) on the run's device, so
    on CUDA no tensor crosses to the host; on the CPU the same binding code runs.
    """

    def __init__(self, folder: Path, manifest: Manifest, name: str, device: torch.device) -> None:
        import onnxruntime as ort

        entry = manifest.check_files(folder, name)
        if entry.precision not in FLOAT_TYPES:
            raise EngineFolderError(
                f"{name} is {entry.precision}, which this backend cannot feed; export with --fp32 or --fp16 "
                f"for onnxruntime (bf16 is for TensorRT)"
            )
        if entry.plugins:
            raise EngineFolderError(
                f"{name} calls TensorRT plugins ({', '.join(entry.plugins)}), which onnxruntime cannot run; "
                f"re-export without --trt-plugins for --backend onnxruntime"
            )
        self.name, self.entry, self.device = name, entry, device
        self.float_type = FLOAT_TYPES[entry.precision]
        self.ratio = manifest.model_config.vae.downsampling_ratio
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(folder / entry.file), options, providers=[_provider(device)]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineFolderError(
                f"{folder / entry.file} cannot be loaded ({e}); rebuild with `sa-export`"
            ) from e

    def check_shape(self, batch: int, frames: int | None = None) -> None:
        low, _, high = self.entry.batch
        if not low <= batch <= high:
            raise ConfigError(
                f"{self.name} engine takes batch {low}–{high} rows, this request needs {batch}: re-export "
                f"with a larger --max-batch"
            )
        if frames is not None and not self.entry.frames[0] <= frames <= self.entry.frames[2]:
            low, _, high = self.entry.frames
            raise ConfigError(
                f"{frames} latent frames are outside the {self.name} engine's profile {low}–{high}: "
                f"re-export with --frames covering {frames}, or choose a window inside it"
            )

    def _dtype(self, kind: str) -> torch.dtype:
        return {"int64": torch.int64, "float32": torch.float32}.get(kind, self.float_type)

    def run(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run with `inputs` by name; returns the outputs as float32 tensors on the device."""
        binding = self.session.io_binding()
        device_type, device_id = self.device.type, self.device.index or 0
        sizes: dict[str, int] = {}
        bound = []  # keep converted inputs alive until the run ends
        for spec in self.entry.inputs:
            value = inputs[spec["name"]].to(self.device, self._dtype(spec["kind"])).contiguous()
            bound.append(value)
            sizes |= {a: n for a, n in zip(spec["axes"], value.shape, strict=True) if isinstance(a, str)}
            binding.bind_input(
                spec["name"],
                device_type,
                device_id,
                NUMPY_TYPES[value.dtype],
                list(value.shape),
                value.data_ptr(),
            )
        if "frames" in sizes:
            sizes.setdefault("samples", sizes["frames"] * self.ratio)
        elif "samples" in sizes:
            sizes["frames"] = sizes["samples"] // self.ratio
        outputs = []
        for spec in self.entry.outputs:
            shape = [a if isinstance(a, int) else sizes[a] for a in spec["axes"]]
            out = torch.empty(shape, dtype=self._dtype(spec["kind"]), device=self.device)
            binding.bind_output(
                spec["name"], device_type, device_id, NUMPY_TYPES[out.dtype], shape, out.data_ptr()
            )
            outputs.append(out)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # onnxruntime runs on its own stream
        self.session.run_with_iobinding(binding)
        return [out.float() for out in outputs]


def _provider(device: torch.device) -> str:
    import onnxruntime as ort

    if device.type == "cpu":
        return "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            "onnxruntime has no CUDA provider here: install onnxruntime-gpu (pip install "
            "'stable-audio-rt[gpu]'), or run the onnxruntime backend on device 'cpu'"
        )
    return "CUDAExecutionProvider"


class OrtTextEncoder:
    def __init__(self, graph: OrtGraph) -> None:
        self.graph = graph

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.graph.check_shape(input_ids.shape[0])
        return self.graph.run({"input_ids": input_ids, "attention_mask": attention_mask})[0]


class OrtDiTStep:
    """The DiT graph with one request shape's time, context and global condition buffers."""

    def __init__(self, graph: OrtGraph, config, steps: int, rows: int) -> None:
        self.graph = graph
        device, dtype = graph.device, graph.float_type
        conditioning = config.conditioning
        self.t = torch.zeros((steps, rows), device=device)
        self.context = torch.zeros(
            (rows, conditioning.context_tokens, conditioning.cond_dim), device=device, dtype=dtype
        )
        self.global_cond = torch.zeros((rows, conditioning.global_dim), device=device, dtype=dtype)

    def bind(self, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> None:
        self.t.copy_(t[:, None].expand_as(self.t))
        self.context.copy_(context)
        self.global_cond.copy_(global_cond)

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor:
        self.graph.check_shape(model_input.shape[0], model_input.shape[-1])
        feeds = {"x": model_input, "t": self.t[i], "context": self.context, "global_cond": self.global_cond}
        return self.graph.run(feeds)[0]

    def buffers(self) -> list[torch.Tensor]:
        return [self.t, self.context, self.global_cond]


def require_same_weights(folder: Path, manifest: Manifest, model: str | Path) -> None:
    """Refuse an engine folder built from other weights than the checkpoint `model`."""
    if weights_fingerprint(locate_checkpoint(model).root) != manifest.weights_sha256:
        raise EngineFolderError(
            f"{folder} was built from other weights than {model}: rebuild it with "
            f"`sa-export --model {model} --out {folder}`"
        )


class OrtComponents:
    """Everything the pipeline needs, from an engine folder."""

    def __init__(self, folder: Path, device: torch.device, model: str | Path | None = None) -> None:
        if not folder.is_dir():
            raise EngineFolderError(
                f"engine folder {folder} does not exist: build it with `sa-export --out {folder}`"
            )
        manifest = Manifest.read(folder)
        if model is not None:
            require_same_weights(folder, manifest, model)
        missing = [c for c in REQUIRED if c not in manifest.components]
        if missing:
            raise EngineFolderError(
                f"{folder} lacks {missing}: export them with `sa-export --components ...`"
            )
        self.config = manifest.model_config
        self.device, self.dtype = device, torch.float32
        self.capturable = False  # onnxruntime synchronises inside run()
        self.graphs = {
            c: OrtGraph(folder, manifest, c, device) for c in COMPONENTS if c in manifest.components
        }
        self.conditioner = Conditioner(
            self.config.conditioning,
            _load_numbers(folder, self.config, device),
            OrtTextEncoder(self.graphs["t5"]),
            _load_tokenizer(folder),
        )

    def check_request(
        self, batch: int, uses_cfg: bool, frames: int, decode_frames: int, encodes: bool
    ) -> None:
        """Refuse, before any work, a request the engines' profiles cannot run."""
        self.graphs["t5"].check_shape(batch)
        self.graphs["dit"].check_shape(batch * (2 if uses_cfg else 1), frames)
        self.graphs["vae_decoder"].check_shape(batch, decode_frames)
        if encodes:
            self._encoder().check_shape(1, frames)

    def _encoder(self) -> OrtGraph:
        if "vae_encoder" not in self.graphs:
            raise EngineFolderError(
                "this request needs the VAE encoder (audio-to-audio or inpainting), which the engine folder "
                "lacks: export it with `sa-export --components vae_encoder`"
            )
        return self.graphs["vae_encoder"]

    def step_model(self, steps: int, rows: int) -> OrtDiTStep:
        return OrtDiTStep(self.graphs["dit"], self.config, steps, rows)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        graph = self.graphs["vae_decoder"]
        graph.check_shape(latents.shape[0], latents.shape[-1])
        return graph.run({"latents": latents})[0]

    def encode_moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        graph = self._encoder()
        graph.check_shape(audio.shape[0], audio.shape[-1] // self.config.vae.downsampling_ratio)
        mean, scale = graph.run({"audio": audio})
        return mean, posterior_std(scale)


def _load_numbers(folder: Path, config, device: torch.device) -> NumberConditioners:
    from safetensors.torch import load_file

    numbers = NumberConditioners(config.conditioning)
    path = folder / NUMBERS_FILE
    if not path.is_file():
        raise EngineFolderError(f"{path} is missing: rebuild the engines with `sa-export`")
    numbers.load_state_dict(load_file(path))
    return numbers.to(device).eval().requires_grad_(False)


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR)
    except (OSError, ValueError) as e:
        raise EngineFolderError(f"the tokenizer in {folder / TOKENIZER_DIR} cannot be loaded ({e})") from e
