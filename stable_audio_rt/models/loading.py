"""Build the models from a checkpoint in either layout, straight into the requested dtype/device.

Each module is built on the meta device; its tensors are read one by one from the checkpoint,
converted, checked and assigned (`load_state_dict(assign=True)`), so there is no randomly
initialised copy and no second full copy of the weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stable_audio_rt.errors import CheckpointError
from stable_audio_rt.models import key_mapping as km
from stable_audio_rt.models.checkpoint import (
    DEFAULT_REPO,
    SINGLE_FILE_CONFIG,
    CheckpointLocation,
    Layout,
    TensorSource,
    locate_checkpoint,
    unreadable_weights,
)
from stable_audio_rt.models.conditioners import Conditioner, NumberConditioners, T5TextEncoder
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.config_io import config_from_diffusers, config_from_sat, read_json
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.vae import OobleckVAE


def _keeps_fp32(module: nn.Module, key: str) -> bool:
    owner_path, _, name = key.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    return name in getattr(owner, "fp32_parameters", ())


def load_state(
    module: nn.Module,
    source: TensorSource,
    rule_for: Callable[[str], km.Rule],
    dtype: torch.dtype,
    device: torch.device | str,
    ignored: re.Pattern[str] | None = None,
) -> nn.Module:
    """Fill a meta-device `module` from `source`; every key checked for presence and shape."""
    state: dict[str, torch.Tensor] = {}
    for key, expected in module.state_dict().items():
        rule = rule_for(key)
        value = rule.combine([source.get(s) for s in rule.sources])
        if value.shape != expected.shape:
            raise CheckpointError(
                f"{' + '.join(rule.sources)} has shape {tuple(value.shape)} but this model's config "
                f"needs {tuple(expected.shape)} for {key}: the weights do not match the config"
            )
        target = torch.float32 if _keeps_fp32(module, key) else dtype
        state[key] = value.to(device=device, dtype=target)
    unexpected = sorted(k for k in source.keys() - source.used if not (ignored and ignored.search(k)))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise CheckpointError(
            f"{len(unexpected)} unexpected keys ({shown}): these weights belong to a different model "
            f"or config"
        )
    module.load_state_dict(state, assign=True, strict=True)
    return module.eval().requires_grad_(False)


@dataclass
class StableAudioModel:
    """The loaded model family member: config, DiT, VAE and conditioner."""

    config: StableAudioConfig
    dit: DiT
    vae: OobleckVAE
    conditioner: Conditioner


def _meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


# T5 in fp32 by default: more accurate than stable-audio-tools' fp16 T5, which overflows on some
# prompts (bf16 loses 14.5 dB in one call: precision.FP32_ISLANDS). torch.float16 reproduces the
# reference's T5 (every weight cast, as it does).
DEFAULT_T5_DTYPE = torch.float32


@dataclass(frozen=True)
class Placement:
    """Where the weights go: the model's dtype and device, and T5's own dtype."""

    dtype: torch.dtype
    device: torch.device | str
    t5_dtype: torch.dtype = DEFAULT_T5_DTYPE


def _load_text_encoder(folder: str | Path, placement: Placement) -> T5TextEncoder:
    from safetensors import SafetensorError
    from transformers import T5EncoderModel

    try:
        t5 = T5EncoderModel.from_pretrained(folder, dtype=torch.float32)
    except OSError as e:
        raise CheckpointError(f"cannot load the T5 encoder from {folder}: {e}") from e
    except SafetensorError as e:  # a truncated or corrupt model.safetensors
        raise unreadable_weights(f"the T5 encoder's weights file in {folder}", e) from e
    t5 = t5.to(placement.device, placement.t5_dtype)
    return T5TextEncoder(t5.eval().requires_grad_(False))


def _load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the T5 tokenizer from {folder}: {e}") from e


@dataclass(frozen=True)
class _Part:
    """Where one layout keeps a module's tensors, and how our keys map onto them."""

    source: TensorSource
    rule_for: Callable[[str], km.Rule]
    ignored: re.Pattern[str] | None = None


def _assemble(
    config: StableAudioConfig,
    parts: tuple[_Part, _Part, _Part],
    t5_from: str | Path,
    tokenizer_from: str | Path,
    placement: Placement,
) -> StableAudioModel:
    """Load the tokenizer and T5 first (a local folder without them fails in a moment, not after
    the DiT's gigabytes), then the DiT, VAE and number conditioners from `parts` (in that order)."""
    tokenizer = _load_tokenizer(tokenizer_from)
    text_encoder = _load_text_encoder(t5_from, placement)
    factories = (
        lambda: DiT(config.dit),
        lambda: OobleckVAE(config.vae),
        lambda: NumberConditioners(config.conditioning),
    )
    dit, vae, numbers = (
        load_state(
            _meta(factory), part.source, part.rule_for, placement.dtype, placement.device, part.ignored
        )
        for factory, part in zip(factories, parts, strict=True)
    )
    conditioner = Conditioner(config.conditioning, numbers, text_encoder, tokenizer)
    return StableAudioModel(config, dit, vae, conditioner)


def _load_diffusers(root: Path, placement: Placement) -> StableAudioModel:
    parts = (
        _Part(TensorSource.for_component(root / "transformer"), km.dit_rule_diffusers),
        _Part(TensorSource.for_component(root / "vae"), km.vae_rule_diffusers),
        _Part(TensorSource.for_component(root / "projection_model"), km.numbers_rule_diffusers),
    )
    config = config_from_diffusers(root)
    return _assemble(config, parts, root / "text_encoder", root / "tokenizer", placement)


def _load_single_file(location: CheckpointLocation, placement: Placement) -> StableAudioModel:
    root = location.root
    config = config_from_sat(read_json(root / SINGLE_FILE_CONFIG))
    weights = [location.weights()]
    num_blocks = len(config.vae.strides)
    # One file holds all three parts; each gets its own view so unused keys are found per part.
    parts = (
        _Part(TensorSource(weights, km.SAT_DIT_PREFIX), km.dit_rule_sat, km.SAT_DIT_IGNORED),
        _Part(TensorSource(weights, km.SAT_VAE_PREFIX), lambda key: km.vae_rule_sat(key, num_blocks)),
        _Part(TensorSource(weights, km.SAT_CONDITIONER_PREFIX), km.numbers_rule_sat),
    )
    # T5 is not in the single file: take the repo's diffusers subfolders when present, else the
    # model the config names (e.g. "t5-base") from the Hub.
    t5_folder, tokenizer_folder = root / "text_encoder", root / "tokenizer"
    t5_name = config.conditioning.t5_model_name
    return _assemble(
        config,
        parts,
        t5_folder if t5_folder.is_dir() else t5_name,
        tokenizer_folder if tokenizer_folder.is_dir() else t5_name,
        placement,
    )


def load_config(
    source: str | Path = DEFAULT_REPO, *, layout: Layout = "auto", token: str | None = None
) -> StableAudioConfig:
    """The model's config alone, read from its config files (no weights are fetched)."""
    location = locate_checkpoint(source, layout, token, configs_only=True)
    if location.layout == "diffusers":
        return config_from_diffusers(location.root)
    return config_from_sat(read_json(location.root / SINGLE_FILE_CONFIG))


def load_stable_audio(
    source: str | Path = DEFAULT_REPO,
    *,
    layout: Layout = "auto",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    t5_dtype: torch.dtype = DEFAULT_T5_DTYPE,
    token: str | None = None,
) -> StableAudioModel:
    """Load a Stable Audio model from a Hub repo id, a local folder, its `model_config.json`, or
    single-file weights under any name (with the `model_config.json` beside them).

    `layout` picks between a folder's diffusers files and its single-file checkpoint when it
    holds both ("auto" prefers diffusers). T5 runs in `t5_dtype` (see `Placement`).
    """
    location: CheckpointLocation = locate_checkpoint(source, layout, token)
    placement = Placement(dtype, device, t5_dtype)
    if location.layout == "diffusers":
        return _load_diffusers(location.root, placement)
    return _load_single_file(location, placement)
