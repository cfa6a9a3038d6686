"""A weights file named as the model (`--model ck/finetune.safetensors`) is the one loaded, with
the model_config.json beside it, not the folder's model.safetensors; a file that cannot stand for
a checkpoint is refused by name."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from stable_audio_rt.errors import CheckpointError, ConfigError
from stable_audio_rt.models.checkpoint import locate_checkpoint
from stable_audio_rt.models.loading import load_stable_audio
from stable_audio_rt.models.source import fingerprint

QKV = "model.model.transformer.layers.0.self_attn.to_qkv.weight"


@pytest.fixture
def fine_tuned(tiny_single_file_dir):
    """The tiny checkpoint's weights with one DiT tensor freshly randomized (a fine-tune's)."""
    state = load_file(tiny_single_file_dir / "model.safetensors")
    state[QKV] = torch.randn_like(state[QKV])
    return state


def _dit_state(source) -> dict[str, torch.Tensor]:
    return load_stable_audio(source).dit.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_named_file_is_loaded_not_the_folders(tiny_single_file_dir, fine_tuned, tmp_path):
    folder = shutil.copytree(tiny_single_file_dir, tmp_path / "ck")
    save_file(fine_tuned, folder / "finetune.safetensors")
    # The same weights as a folder's own model.safetensors: what the named file must give.
    expected_folder = shutil.copytree(tiny_single_file_dir, tmp_path / "expected")
    save_file(fine_tuned, expected_folder / "model.safetensors")
    named = _dit_state(folder / "finetune.safetensors")
    assert _same(named, _dit_state(expected_folder))
    assert not _same(named, _dit_state(folder))


@pytest.mark.parametrize("name", ["finetune.safetensors", "finetune.ckpt"])
def test_a_named_file_alone_in_its_folder_loads(tiny_single_file_dir, fine_tuned, tmp_path, name):
    folder = shutil.copytree(tiny_single_file_dir, tmp_path / "ck2")
    (folder / "model.safetensors").unlink()
    if name.endswith(".ckpt"):
        torch.save({"state_dict": fine_tuned}, folder / name)
    else:
        save_file(fine_tuned, folder / name)
    expected_folder = shutil.copytree(tiny_single_file_dir, tmp_path / "expected")
    save_file(fine_tuned, expected_folder / "model.safetensors")
    assert _same(_dit_state(folder / name), _dit_state(expected_folder))


def test_named_files_of_one_folder_have_their_own_fingerprints(tiny_single_file_dir, fine_tuned, tmp_path):
    """An engine folder exported from one weights file is not taken for another in its folder."""
    folder = shutil.copytree(tiny_single_file_dir, tmp_path / "ck")
    save_file(fine_tuned, folder / "finetune.safetensors")
    assert fingerprint(folder / "finetune.safetensors") != fingerprint(folder / "model.safetensors")


def test_a_named_file_without_a_config_beside_it_is_refused(tiny_single_file_dir, tmp_path):
    weights = shutil.copy(tiny_single_file_dir / "model.safetensors", tmp_path / "finetune.safetensors")
    with pytest.raises(CheckpointError, match=r"finetune\.safetensors has no model_config\.json beside it"):
        locate_checkpoint(weights)


def test_named_weights_are_not_taken_for_the_diffusers_layout(tiny_single_file_dir):
    with pytest.raises(ConfigError, match=r"model\.safetensors is a single-file checkpoint's weights"):
        locate_checkpoint(tiny_single_file_dir / "model.safetensors", layout="diffusers")


def test_a_file_that_is_no_checkpoint_file_is_refused(tiny_single_file_dir, tmp_path):
    folder = shutil.copytree(tiny_single_file_dir, tmp_path / "ck")
    (folder / "notes.txt").write_text("not weights")
    with pytest.raises(CheckpointError, match=r"notes\.txt is not a checkpoint file: give the checkpoint"):
        locate_checkpoint(folder / "notes.txt")


def test_a_named_model_index_picks_the_diffusers_layout(tiny_diffusers_dir):
    location = locate_checkpoint(tiny_diffusers_dir / "model_index.json")
    assert (location.root, location.layout) == (tiny_diffusers_dir, "diffusers")
