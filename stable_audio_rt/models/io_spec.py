"""Each exported component's I/O contract, written once: names, element types, symbolic axes.

Export, the engine manifest, verification and every backend read these specs. Axis names:
"batch", "frames" (latent frames), "samples" (= frames · VAE ratio); ints are fixed sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.loading import StableAudioModel
from stable_audio_rt.models.vae import OobleckEncoder

Axis = str | int
AXIS_NAMES = ("batch", "frames", "samples")  # the keys of `axis_sizes`
# "float": the component's precision; "float32": always fp32 (σ-dependent inputs); "int64": ids.
ElementKind = Literal["float", "float32", "int64"]
ELEMENT_KINDS: tuple[ElementKind, ...] = get_args(ElementKind)
COMPONENTS = ("t5", "dit", "vae_decoder", "vae_encoder")
# What every request runs (the encoder only audio-to-audio and inpainting).
REQUIRED_COMPONENTS = ("t5", "dit", "vae_decoder")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    axes: tuple[Axis, ...]
    kind: ElementKind = "float"

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(a if isinstance(a, int) else sizes[a] for a in self.axes)

    def dtype(self, precision: torch.dtype) -> torch.dtype:
        return element_dtype(self.kind, precision)


def element_dtype(kind: ElementKind, precision: torch.dtype) -> torch.dtype:
    """The torch type of an element kind in a graph of `precision`: ids int64, σ-times float32,
    the rest the graph's own."""
    return {"float": precision, "float32": torch.float32, "int64": torch.int64}[kind]


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # The batch a request needs per clip: the DiT and T5 see [cond; uncond] rows (CFG).
    rows_per_clip: int = 1
    # Runs one clip at a time whatever the request's batch: a batch decodes clip by clip
    # (runtime/vae_decode.one_clip_at_a_time) and the reference audio is one clip.
    one_clip_per_run: bool = False

    def max_rows(self, max_batch: int) -> int:
        """The most rows one run of the component takes for requests of up to `max_batch` clips."""
        return self.rows_per_clip * (1 if self.one_clip_per_run else max_batch)


class VAEEncoderMoments(nn.Module):
    """The encoder as exported: audio → (mean, scale); the posterior sample stays outside."""

    def __init__(self, encoder: OobleckEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, scale = self.encoder(audio).chunk(2, dim=1)
        return mean, scale


def component_specs(config: StableAudioConfig) -> dict[str, ComponentSpec]:
    dit, cond, vae = config.dit, config.conditioning, config.vae
    latents = ("batch", dit.io_channels, "frames")
    audio = ("batch", vae.audio_channels, "samples")
    tokens = ("batch", cond.t5_max_length)
    return {
        "t5": ComponentSpec(
            "t5",
            (TensorSpec("input_ids", tokens, "int64"), TensorSpec("attention_mask", tokens, "int64")),
            (TensorSpec("hidden_states", (*tokens, cond.cond_dim)),),
            rows_per_clip=2,
        ),
        "dit": ComponentSpec(
            "dit",
            (
                TensorSpec("x", latents),
                TensorSpec("t", ("batch",), "float32"),
                TensorSpec("context", ("batch", cond.context_tokens, dit.cond_token_dim)),
                TensorSpec("global_cond", ("batch", dit.global_cond_dim)),
            ),
            (TensorSpec("v", latents),),
            rows_per_clip=2,
        ),
        "vae_decoder": ComponentSpec(
            "vae_decoder",
            (TensorSpec("latents", latents),),
            (TensorSpec("audio", audio),),
            one_clip_per_run=True,
        ),
        "vae_encoder": ComponentSpec(
            "vae_encoder",
            (TensorSpec("audio", audio),),
            (TensorSpec("mean", latents), TensorSpec("scale", latents)),
            one_clip_per_run=True,
        ),
    }


def component_module(model: StableAudioModel, name: str) -> nn.Module:
    """The module whose forward is the component's graph, in the component spec's I/O order."""
    modules = {
        "t5": lambda: model.conditioner.text_encoder,
        "dit": lambda: model.dit,
        "vae_decoder": lambda: model.vae.decoder,
        "vae_encoder": lambda: VAEEncoderMoments(model.vae.encoder),
    }
    return modules[name]()


def axis_sizes(config: StableAudioConfig, batch: int, frames: int) -> dict[str, int]:
    return {"batch": batch, "frames": frames, "samples": frames * config.vae.downsampling_ratio}


def sample_inputs(
    spec: ComponentSpec,
    sizes: dict[str, int],
    precision: torch.dtype,
    generator: torch.Generator,
    vocab_size: int,
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the spec's shapes: ids with a padded tail, σ-times in (0, 1), audio in
    [−1, 1], everything else standard normal."""
    tensors = []
    for t in spec.inputs:
        shape = t.shape(sizes)
        if t.name == "input_ids":
            tensors.append(torch.randint(0, vocab_size, shape, generator=generator))
        elif t.name == "attention_mask":
            lengths = torch.randint(1, shape[1] + 1, (shape[0], 1), generator=generator)
            tensors.append((torch.arange(shape[1])[None] < lengths).long())
        elif t.name == "t":
            tensors.append(torch.rand(shape, generator=generator))
        elif t.name == "audio":
            tensors.append(torch.rand(shape, generator=generator).mul(2).sub(1).to(t.dtype(precision)))
        else:
            tensors.append(torch.randn(shape, generator=generator).to(t.dtype(precision)))
    if spec.name == "t5":  # ids past the mask are padding (id 0), as the tokenizer makes them
        tensors[0] = tensors[0] * tensors[1]
    return tuple(tensors)
