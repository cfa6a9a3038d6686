"""Where a model comes from, by the one name every entry point accepts (sa-run, sa-bench,
sa-export, `StableAudio.load`): a Hub repo id, a local folder or file, or one of the seeded
random models (`random_init.RANDOM_MODELS`), which need no download.

Its config is read without its weights, its weights are loaded once, and its fingerprint ties
an engine folder to the weights it was exported from (a checkpoint's files; a random model's
tensors, which its name and seed fix).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from stable_audio_rt.models.checkpoint import DEFAULT_REPO, Layout, locate_checkpoint, weights_fingerprint
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.loading import Placement, StableAudioModel, load_config, load_stable_audio
from stable_audio_rt.models.random_init import RANDOM_MODELS, random_model

MODEL_HELP = (
    f"Hub repo id, local folder, a weights file (.safetensors or .ckpt, with the model_config.json "
    f"beside it), or seeded random weights that need no download: "
    f"{', '.join(RANDOM_MODELS)} (the tiny ones run in seconds; the others have the real "
    f"geometry, for timings)"
)


# fp32 on the CPU: what export and the fingerprint read.
ON_CPU = Placement(torch.float32, "cpu")


def is_random(model: str | Path) -> bool:
    return str(model) in RANDOM_MODELS


def read_config(
    model: str | Path = DEFAULT_REPO, layout: Layout = "auto", token: str | None = None
) -> StableAudioConfig:
    """The model's config alone: no weights are fetched or built."""
    if is_random(model):
        return RANDOM_MODELS[str(model)]
    return load_config(model, layout=layout, token=token)


def load_model(
    model: str | Path, placement: Placement = ON_CPU, layout: Layout = "auto", token: str | None = None
) -> StableAudioModel:
    where = dict(dtype=placement.dtype, device=placement.device, t5_dtype=placement.t5_dtype)
    if is_random(model):
        return random_model(RANDOM_MODELS[str(model)], **where)
    return load_stable_audio(model, layout=layout, token=token, **where)


def fingerprint(
    model: str | Path,
    loaded: StableAudioModel | None = None,
    layout: Layout = "auto",
    token: str | None = None,
) -> str:
    """sha256 of the weights `model` names: its checkpoint files, or a random model's tensors
    (`loaded`, when already built in fp32, saves building it again)."""
    if not is_random(model):
        return weights_fingerprint(locate_checkpoint(model, layout, token))
    built = loaded if loaded is not None else load_model(model)
    digest = hashlib.sha256()
    for part in (built.dit, built.vae, built.conditioner):
        for name, tensor in sorted(part.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
