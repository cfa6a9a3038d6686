"""model.ckpt (a Lightning checkpoint) loads like model.safetensors, read with
torch.load(weights_only=True): a pickle that would run code is refused."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from stable_audio_rt.errors import CheckpointError
from stable_audio_rt.models.loading import load_stable_audio


class NotAWeight:
    """Any non-tensor class in a pickle: weights-only loading must refuse to build it."""


def _ckpt_copy(src, dst, payload):
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    torch.save(payload, dst / "model.ckpt")
    return dst


def test_ckpt_loads_the_same_weights(tiny_single_file_dir, tmp_path):
    state = load_file(tiny_single_file_dir / "model.safetensors")
    folder = _ckpt_copy(tiny_single_file_dir, tmp_path / "ckpt", {"state_dict": state, "global_step": 3})
    from_ckpt = load_stable_audio(folder)
    from_safetensors = load_stable_audio(tiny_single_file_dir)
    for ours, reference in ((from_ckpt.dit, from_safetensors.dit), (from_ckpt.vae, from_safetensors.vae)):
        for (name, a), (_, b) in zip(ours.state_dict().items(), reference.state_dict().items(), strict=True):
            assert torch.equal(a, b), name


def test_ckpt_that_would_unpickle_code_is_refused(tiny_single_file_dir, tmp_path):
    state = load_file(tiny_single_file_dir / "model.safetensors")
    folder = _ckpt_copy(
        tiny_single_file_dir, tmp_path / "unsafe", {"state_dict": state, "hook": NotAWeight()}
    )
    with pytest.raises(CheckpointError, match="weights-only"):
        load_stable_audio(folder)
