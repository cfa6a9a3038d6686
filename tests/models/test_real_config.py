"""The real Stable Audio Open 1.0 geometry: config parsing from both layouts' config files,
parameter counts of reference-spec §1, and shapes of a full-size forward on the meta device."""

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from stable_audio_rt.models.conditioners import NumberConditioners
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0
from stable_audio_rt.models.config_io import config_from_diffusers, config_from_sat
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.vae import OobleckVAE

DATA = Path(__file__).parent.parent / "data"

# reference-spec §1
DIT_PARAMS = 1_056_828_544
VAE_ENCODER_PARAMS = 77_989_888
VAE_DECODER_PARAMS = 78_122_626
NUMBER_CONDITIONER_PARAMS = 198_272


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sat_model_config_parses_to_preset():
    config = config_from_sat(json.loads((DATA / "stable-audio-open-1.0_model_config.json").read_text()))
    assert config == STABLE_AUDIO_OPEN_1_0
    assert config.latent_frames == 1024
    assert config.conditioning.context_tokens == 130


def test_diffusers_configs_parse_to_preset(tmp_path):
    files = {
        "transformer": {
            "attention_head_dim": 64,
            "cross_attention_dim": 768,
            "cross_attention_input_dim": 768,
            "global_states_input_dim": 1536,
            "in_channels": 64,
            "num_attention_heads": 24,
            "num_key_value_attention_heads": 12,
            "num_layers": 24,
            "out_channels": 64,
            "sample_size": 1024,
            "time_proj_dim": 256,
        },
        "vae": {
            "audio_channels": 2,
            "channel_multiples": [1, 2, 4, 8, 16],
            "decoder_channels": 128,
            "decoder_input_channels": 64,
            "downsampling_ratios": [2, 4, 4, 8, 8],
            "encoder_hidden_size": 128,
            "sampling_rate": 44100,
        },
        "projection_model": {
            "text_encoder_dim": 768,
            "conditioning_dim": 768,
            "min_value": 0,
            "max_value": 512,
        },
        "text_encoder": {"d_model": 768},
    }
    for folder, config in files.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    config = config_from_diffusers(tmp_path)
    assert config.conditioning.t5_model_name == str(tmp_path / "text_encoder")
    expected_conditioning = dataclasses.replace(
        STABLE_AUDIO_OPEN_1_0.conditioning, t5_model_name=config.conditioning.t5_model_name
    )
    assert config == dataclasses.replace(STABLE_AUDIO_OPEN_1_0, conditioning=expected_conditioning)


def test_parameter_counts_match_reference():
    config = STABLE_AUDIO_OPEN_1_0
    with torch.device("meta"):
        dit, vae, numbers = DiT(config.dit), OobleckVAE(config.vae), NumberConditioners(config.conditioning)
    # stable-audio-tools keeps LayerNorm's (zero) bias as a buffer, so its count excludes it.
    layer_norm_biases = sum(m.bias.numel() for m in dit.modules() if isinstance(m, nn.LayerNorm))
    assert _count(dit) - layer_norm_biases == DIT_PARAMS

    # The reference counts weight norm's g (one per output channel) beside each folded weight.
    def with_weight_norm_gains(module):
        convs = [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
        return _count(module) + sum(m.weight.shape[0] for m in convs)

    assert with_weight_norm_gains(vae.encoder) == VAE_ENCODER_PARAMS
    assert with_weight_norm_gains(vae.decoder) == VAE_DECODER_PARAMS
    assert [_count(m) for m in numbers.values()] == [NUMBER_CONDITIONER_PARAMS] * 2


def test_full_size_shapes_on_meta_device():
    config = STABLE_AUDIO_OPEN_1_0
    batch, frames = 2, config.latent_frames
    with torch.device("meta"):
        dit, vae = DiT(config.dit), OobleckVAE(config.vae)
        x = torch.empty(batch, config.dit.io_channels, frames)
        context = torch.empty(batch, config.conditioning.context_tokens, config.conditioning.cond_dim)
        v = dit(x, torch.empty(batch), context, torch.empty(batch, config.conditioning.global_dim))
        audio = vae.decode(v)
        mean, std = vae.encode_moments(audio)
    assert v.shape == x.shape
    assert audio.shape == (batch, 2, config.sample_size)
    assert mean.shape == std.shape == x.shape
