"""The onnxruntime backend: runs an engine folder written by sa-export (CPU execution provider).

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

NUMPY_TYPES = {"fp32": np.float32, "fp16": np.float16}
REQUIRED = ("t5", "dit", "vae_decoder")


class OrtGraph:
    """One exported component: an onnxruntime session plus its profile from the manifest."""

    def __init__(self, folder: Path, manifest: Manifest, name: str) -> None:
        import onnxruntime as ort

        entry = manifest.check_files(folder, name)
        if entry.precision not in NUMPY_TYPES:
            raise EngineFolderError(
                f"{name} is {entry.precision}, which onnxruntime's CPU provider cannot be fed from "
                f"here; export with --fp32 or --fp16 for this backend"
            )
        self.name, self.entry = name, entry
        self.float_type = NUMPY_TYPES[entry.precision]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(folder / entry.file), options, providers=["CPUExecutionProvider"]
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

    def run(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feeds = {}
        for spec in self.entry.inputs:
            value = inputs[spec["name"]].detach().cpu()
            kind = spec["kind"]
            dtype = np.int64 if kind == "int64" else np.float32 if kind == "float32" else self.float_type
            feeds[spec["name"]] = value.numpy().astype(dtype, copy=False)
        return [torch.from_numpy(np.asarray(out, dtype=np.float32)) for out in self.session.run(None, feeds)]


class OrtTextEncoder:
    def __init__(self, graph: OrtGraph) -> None:
        self.graph = graph

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.graph.check_shape(input_ids.shape[0])
        return self.graph.run({"input_ids": input_ids, "attention_mask": attention_mask})[0]


class OrtDiTStep:
    """The DiT graph bound to one request's times, context and global condition."""

    def __init__(
        self, graph: OrtGraph, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor
    ) -> None:
        self.graph = graph
        rows = context.shape[0]
        self.t = t.float().cpu()[:, None].expand(-1, rows).contiguous()  # (N, R)
        self.context, self.global_cond = context.float().cpu(), global_cond.float().cpu()

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor:
        self.graph.check_shape(model_input.shape[0], model_input.shape[-1])
        feeds = {"x": model_input, "t": self.t[i], "context": self.context, "global_cond": self.global_cond}
        return self.graph.run(feeds)[0]

    def buffers(self) -> list[torch.Tensor]:
        return [self.t, self.context, self.global_cond]


class OrtComponents:
    """Everything the pipeline needs, from an engine folder."""

    def __init__(self, folder: Path, device: torch.device, model: str | Path | None = None) -> None:
        if device.type != "cpu":
            raise ConfigError(
                "the onnxruntime backend runs on the CPU provider only for now; use device 'cpu', or "
                "backend 'torch' on a GPU"
            )
        if not folder.is_dir():
            raise EngineFolderError(
                f"engine folder {folder} does not exist: build it with `sa-export --out {folder}`"
            )
        manifest = Manifest.read(folder)
        if model is not None:
            root = locate_checkpoint(model).root
            if weights_fingerprint(root) != manifest.weights_sha256:
                raise EngineFolderError(
                    f"{folder} was built from other weights than {model}: rebuild it with "
                    f"`sa-export --model {model} --out {folder}`"
                )
        missing = [c for c in REQUIRED if c not in manifest.components]
        if missing:
            raise EngineFolderError(
                f"{folder} lacks {missing}: export them with `sa-export --components ...`"
            )
        self.config = manifest.model_config
        self.device, self.dtype = device, torch.float32
        self.graphs = {c: OrtGraph(folder, manifest, c) for c in COMPONENTS if c in manifest.components}
        self.conditioner = Conditioner(
            self.config.conditioning,
            _load_numbers(folder, self.config),
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

    def step_model(self, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> OrtDiTStep:
        return OrtDiTStep(self.graphs["dit"], t, context, global_cond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        graph = self.graphs["vae_decoder"]
        graph.check_shape(latents.shape[0], latents.shape[-1])
        return graph.run({"latents": latents})[0]

    def encode_moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        graph = self._encoder()
        graph.check_shape(audio.shape[0], audio.shape[-1] // self.config.vae.downsampling_ratio)
        mean, scale = graph.run({"audio": audio})
        return mean, posterior_std(scale)


def _load_numbers(folder: Path, config) -> NumberConditioners:
    from safetensors.torch import load_file

    numbers = NumberConditioners(config.conditioning)
    path = folder / NUMBERS_FILE
    if not path.is_file():
        raise EngineFolderError(f"{path} is missing: rebuild the engines with `sa-export`")
    numbers.load_state_dict(load_file(path))
    return numbers.eval().requires_grad_(False)


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR)
    except (OSError, ValueError) as e:
        raise EngineFolderError(f"the tokenizer in {folder / TOKENIZER_DIR} cannot be loaded ({e})") from e
