"""Bad checkpoints and unreachable repos raise our errors, with messages that name the fix."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from stable_audio_rt.errors import CheckpointError, ConfigError, ModelAccessError
from stable_audio_rt.models import checkpoint
from stable_audio_rt.models.loading import load_stable_audio

QKV = "model.model.transformer.layers.0.self_attn.to_qkv.weight"


@pytest.fixture
def single_file_copy(tiny_single_file_dir, tmp_path):
    return shutil.copytree(tiny_single_file_dir, tmp_path / "ckpt")


@pytest.fixture
def diffusers_copy(tiny_diffusers_dir, tmp_path):
    return shutil.copytree(tiny_diffusers_dir, tmp_path / "ckpt")


def _rewrite(path, edit):
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_missing_key_is_named(single_file_copy):
    _rewrite(single_file_copy / "model.safetensors", lambda s: s.pop(QKV))
    with pytest.raises(CheckpointError, match=f"missing key '{QKV}'.*incomplete"):
        load_stable_audio(single_file_copy)


def test_missing_weight_norm_half_is_named(diffusers_copy):
    key = "decoder.block.1.conv_t1.weight_v"
    _rewrite(diffusers_copy / "vae" / "diffusion_pytorch_model.safetensors", lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        load_stable_audio(diffusers_copy)


def test_wrong_shape_is_named(single_file_copy):
    def shrink(state):
        state[QKV] = state[QKV][:-3]

    _rewrite(single_file_copy / "model.safetensors", shrink)
    with pytest.raises(CheckpointError, match=r"to_qkv\.weight has shape \(765, 256\).*needs \(768, 256\)"):
        load_stable_audio(single_file_copy)


def test_unexpected_key_is_reported(diffusers_copy):
    def add(state):
        state["transformer_blocks.9.attn1.to_q.weight"] = torch.zeros(2, 2)

    _rewrite(diffusers_copy / "transformer" / "diffusion_pytorch_model.safetensors", add)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(transformer_blocks\.9\.attn1"):
        load_stable_audio(diffusers_copy)


def test_missing_file_is_named(diffusers_copy):
    (diffusers_copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"vae/diffusion_pytorch_model\.safetensors is missing"):
        load_stable_audio(diffusers_copy)


def test_corrupt_safetensors_says_download_again(single_file_copy):
    weights = single_file_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file.*download it again"):
        load_stable_audio(single_file_copy)


@pytest.mark.parametrize("layout", ["single_file", "diffusers"])
def test_a_corrupt_t5_file_says_download_again(request, layout):
    root = request.getfixturevalue(f"{layout}_copy")
    (weights,) = (root / "text_encoder").glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(
        CheckpointError, match=r"T5 encoder's weights file in .* probably truncated or corrupt"
    ):
        load_stable_audio(root)


def test_a_broken_tokenizer_is_refused_before_the_dits_weights_load(single_file_copy, monkeypatch):
    from stable_audio_rt.models import loading

    for file in (single_file_copy / "tokenizer").iterdir():
        file.write_text("{ not json")
    monkeypatch.setattr(loading, "load_state", lambda *a, **k: pytest.fail("the DiT loaded first"))
    with pytest.raises(CheckpointError, match=r"cannot load the T5 tokenizer from .*tokenizer"):
        load_stable_audio(single_file_copy)


def test_config_inconsistent_with_weights(single_file_copy):
    config_path = single_file_copy / "model_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["diffusion"]["config"]["depth"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing key 'model\.model\.transformer\.layers\.2\."):
        load_stable_audio(single_file_copy)


@pytest.mark.parametrize(
    "attn_kwargs,message",
    [
        ({"qk_norm": "rms"}, r"qk_norm='rms' is not supported \(only 'ln' or 'none'\)"),
        ({"differential": True}, r"attn_kwargs \['differential'\] are not supported"),
    ],
)
def test_unsupported_config_option_is_refused(single_file_copy, attn_kwargs, message):
    config_path = single_file_copy / "model_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["diffusion"]["config"]["attn_kwargs"] = attn_kwargs
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        load_stable_audio(single_file_copy)


@pytest.mark.parametrize("option", ["mask_padding_attention", "use_effective_length_for_schedule"])
def test_a_sampling_adapted_to_the_duration_is_refused_not_ignored(single_file_copy, option):
    # stable-audio-tools shortens the window to the prompt's duration with either set.
    config_path = single_file_copy / "model_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["diffusion"][option] = False  # its default: loads
    config_path.write_text(json.dumps(config))
    load_stable_audio(single_file_copy)
    config["model"]["diffusion"][option] = True
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=rf"{option} is not supported \(only models sampled over the whole"):
        load_stable_audio(single_file_copy)


def test_qk_norm_config_on_weights_without_it_names_the_key(single_file_copy):
    config_path = single_file_copy / "model_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["diffusion"]["config"]["attn_kwargs"] = {"qk_norm": "ln"}
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing key '.*self_attn\.q_norm\.weight'"):
        load_stable_audio(single_file_copy)


def test_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="neither model_index.json .* nor model_config.json"):
        load_stable_audio(tmp_path)


def test_nonexistent_path_is_not_taken_for_a_repo(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing file or folder nor a Hub repo id"):
        load_stable_audio(tmp_path / "no" / "such" / "folder")


def test_offline_without_cache_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelAccessError, match="not in the local cache.*pass a local folder"):
        load_stable_audio("stabilityai/stable-audio-open-1.0")


def test_gated_repo_without_token_names_the_fix(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    # What huggingface_hub raises for a gated repo without an accepted licence (no network
    # here); the error only reads the response's headers and request.
    response = SimpleNamespace(status_code=403, headers={}, request=None)

    def refuse(*args, **kwargs):
        raise GatedRepoError("403 Client Error: access to this model is restricted", response=response)

    monkeypatch.setattr("huggingface_hub.snapshot_download", refuse)
    with pytest.raises(ModelAccessError, match="gated: accept its licence.*HF_TOKEN"):
        checkpoint.locate_checkpoint("stabilityai/stable-audio-open-1.0")
