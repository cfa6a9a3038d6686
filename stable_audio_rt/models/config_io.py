"""Build a `StableAudioConfig` from a checkpoint's own config files.

Two layouts (reference-spec §1): stable-audio-tools' `model_config.json`, and the diffusers
`*/config.json` files. Options we do not implement are refused by name rather than ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stable_audio_rt.errors import CheckpointError, ConfigError
from stable_audio_rt.models.config import (
    OBJECTIVES,
    ConditioningConfig,
    DiTConfig,
    NumberConditionerConfig,
    OobleckConfig,
    StableAudioConfig,
)

# stable-audio-tools 0.0.20 DiffusionTransformer / ContinuousTransformer options that we
# accept only at these (its default) values; any other option is refused by name.
_SAT_DIT_DEFAULTS: dict[str, Any] = {
    "patch_size": 1,
    "project_global_cond": True,
    "input_concat_dim": 0,
    "prepend_cond_dim": 0,
    "transformer_type": "continuous_transformer",
    "global_cond_type": "prepend",
    "timestep_cond_type": "global",
    "timestep_embed_dim": None,
    "timestep_features_type": "learned",
    "timestep_features_logsnr": False,
    "modular_local_cond_configs": None,
    "rotary_pos_emb": True,
    "cross_attn_rotary_pos_emb": False,
    "causal": False,
    "conformer": False,
    "use_sinusoidal_emb": False,
    "use_abs_pos_emb": False,
    "num_memory_tokens": 0,
    "sliding_window": None,
}
_SAT_DIT_FIELDS = {
    "io_channels",
    "embed_dim",
    "depth",
    "num_heads",
    "cond_token_dim",
    "global_cond_dim",
    "project_cond_tokens",
    "timestep_features_dim",
}
# Conditioner options accepted only at their defaults (stable-audio-tools 0.0.20 conditioners.py).
_SAT_T5_DEFAULTS: dict[str, Any] = {"enable_grad": False, "project_out": False, "padding_mode": "zero"}
_SAT_NUMBER_DEFAULTS: dict[str, Any] = {"fourier_features_type": "learned"}


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint folder is incomplete (download it again)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); download it again") from e


def _require(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ConfigError(f"{where} has no {key!r}; is this a Stable Audio config?")
    return section[key]


def _check_defaults(options: dict[str, Any], defaults: dict[str, Any], fields: set[str], what: str) -> None:
    for key, value in options.items():
        if key in fields:
            continue
        if key not in defaults:
            raise ConfigError(f"{what} option {key!r} is not supported by stable-audio-rt")
        if value != defaults[key]:
            raise ConfigError(f"{what} option {key}={value!r} is not supported (only {defaults[key]!r})")


def _sat_qk_norm(attn_kwargs: dict[str, Any]) -> bool:
    """attn_kwargs: only qk_norm "ln" (Small) or "none" (1.0, the default) is implemented."""
    unknown = sorted(set(attn_kwargs) - {"qk_norm"})
    if unknown:
        raise ConfigError(f"DiT attn_kwargs {unknown} are not supported by stable-audio-rt")
    qk_norm = attn_kwargs.get("qk_norm", "none")
    if qk_norm not in ("ln", "none"):
        raise ConfigError(f"DiT attn_kwargs qk_norm={qk_norm!r} is not supported (only 'ln' or 'none')")
    return qk_norm == "ln"


def _sat_objective(diffusion: dict[str, Any]) -> str:
    objective = diffusion.get("diffusion_objective", "v")
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"diffusion_objective {objective!r} is not supported (only {', '.join(OBJECTIVES)})"
        )
    if diffusion.get("sampling_distribution_shift_options") is not None:
        # Absent, the reference falls back to LogSNRShift(rate=0, -6.2, 2.0): the one we implement.
        raise ConfigError("sampling_distribution_shift_options is not supported (only the default shift)")
    # stable-audio-tools 0.0.20 adapts the window to the prompt's duration with either on
    # (generate_diffusion_cond's adapt_duration_to_conditioning): a sampling we do not implement.
    for option in ("mask_padding_attention", "use_effective_length_for_schedule"):
        if diffusion.get(option):
            raise ConfigError(f"{option} is not supported (only models sampled over the whole window)")
    return objective


def _sat_dit(diffusion: dict[str, Any]) -> DiTConfig:
    if diffusion.get("type") != "dit":
        raise ConfigError(f"diffusion type {diffusion.get('type')!r} is not supported (only 'dit')")
    cfg = dict(_require(diffusion, "config", "model.diffusion"))
    qk_norm = _sat_qk_norm(cfg.pop("attn_kwargs", {}))
    _check_defaults(cfg, _SAT_DIT_DEFAULTS, _SAT_DIT_FIELDS, "DiT")
    return DiTConfig(
        io_channels=_require(cfg, "io_channels", "diffusion.config"),
        embed_dim=_require(cfg, "embed_dim", "diffusion.config"),
        depth=_require(cfg, "depth", "diffusion.config"),
        num_heads=_require(cfg, "num_heads", "diffusion.config"),
        cond_token_dim=_require(cfg, "cond_token_dim", "diffusion.config"),
        global_cond_dim=_require(cfg, "global_cond_dim", "diffusion.config"),
        project_cond_tokens=cfg.get("project_cond_tokens", True),
        qk_norm=qk_norm,
        timestep_features_dim=cfg.get("timestep_features_dim", 256),
    )


def _sat_vae(pretransform: dict[str, Any]) -> OobleckConfig:
    if pretransform.get("type") != "autoencoder":
        raise ConfigError(f"pretransform type {pretransform.get('type')!r} is not supported")
    cfg = _require(pretransform, "config", "model.pretransform")
    enc, dec = cfg["encoder"], cfg["decoder"]
    for part in (enc, dec):
        if part.get("type") != "oobleck" or not part["config"].get("use_snake", False):
            raise ConfigError("only the Oobleck autoencoder with Snake activations is supported")
    if dec["config"].get("final_tanh", True):
        raise ConfigError("an Oobleck decoder with final_tanh is not supported")
    for option in ("antialias_activation", "use_nearest_upsample"):
        if enc["config"].get(option, False) or dec["config"].get(option, False):
            raise ConfigError(f"an Oobleck autoencoder with {option} is not supported")
    if pretransform.get("scale", 1.0) != 1.0:
        raise ConfigError(f"a latent scale of {pretransform['scale']} is not supported (only 1.0)")
    if cfg.get("bottleneck", {}).get("type") != "vae":
        raise ConfigError(f"bottleneck {cfg.get('bottleneck')!r} is not supported (only 'vae')")
    d, e = dec["config"], enc["config"]
    vae = OobleckConfig(
        audio_channels=d["out_channels"],
        channels=d["channels"],
        channel_multiples=tuple(d["c_mults"]),
        strides=tuple(d["strides"]),
        latent_dim=d["latent_dim"],
    )
    encoder_matches = (
        e["in_channels"] == vae.audio_channels
        and e["channels"] == vae.channels
        and tuple(e["c_mults"]) == vae.channel_multiples
        and tuple(e["strides"]) == vae.strides
        and e["latent_dim"] == 2 * vae.latent_dim
    )
    if not encoder_matches:
        raise ConfigError("the Oobleck encoder and decoder configs do not mirror each other")
    return vae


def _sat_conditioning(conditioning: dict[str, Any], diffusion: dict[str, Any]) -> ConditioningConfig:
    t5_name, t5_length, numbers = None, None, []
    for entry in _require(conditioning, "configs", "model.conditioning"):
        kind, cfg = entry["type"], entry.get("config", {})
        if kind == "t5":
            if entry["id"] != "prompt":
                raise ConfigError(f"the T5 conditioner must have id 'prompt', got {entry['id']!r}")
            _check_defaults(cfg, _SAT_T5_DEFAULTS, {"t5_model_name", "max_length", "model_path"}, "T5")
            t5_name, t5_length = cfg.get("t5_model_name", "t5-base"), cfg.get("max_length", 128)
        elif kind == "number":
            _check_defaults(cfg, _SAT_NUMBER_DEFAULTS, {"min_val", "max_val"}, "number conditioner")
            # stable-audio-tools' NumberConditioner defaults: min_val 0, max_val 1.
            numbers.append(NumberConditionerConfig(entry["id"], cfg.get("min_val", 0), cfg.get("max_val", 1)))
        else:
            raise ConfigError(f"conditioner type {kind!r} (id {entry['id']!r}) is not supported")
    if t5_name is None:
        raise ConfigError("the config has no T5 prompt conditioner")
    return ConditioningConfig(
        cond_dim=_require(conditioning, "cond_dim", "model.conditioning"),
        t5_model_name=t5_name,
        t5_max_length=t5_length,
        numbers=tuple(numbers),
        cross_attention_ids=tuple(diffusion.get("cross_attention_cond_ids", ())),
        global_ids=tuple(diffusion.get("global_cond_ids", ())),
    )


def config_from_sat(model_config: dict[str, Any]) -> StableAudioConfig:
    """From stable-audio-tools' `model_config.json` (already parsed)."""
    if model_config.get("model_type") != "diffusion_cond":
        raise ConfigError(
            f"model_type {model_config.get('model_type')!r} is not supported ('diffusion_cond')"
        )
    model = _require(model_config, "model", "model_config.json")
    diffusion = _require(model, "diffusion", "model")
    return StableAudioConfig(
        sample_rate=_require(model_config, "sample_rate", "model_config.json"),
        sample_size=_require(model_config, "sample_size", "model_config.json"),
        dit=_sat_dit(diffusion),
        vae=_sat_vae(_require(model, "pretransform", "model")),
        conditioning=_sat_conditioning(_require(model, "conditioning", "model"), diffusion),
        objective=_sat_objective(diffusion),
    )


# The diffusers port names the two number conditioners of Stable Audio Open 1.0 this way.
DIFFUSERS_NUMBER_IDS = {
    "seconds_start": "start_number_conditioner",
    "seconds_total": "end_number_conditioner",
}


def config_from_diffusers(root: Path) -> StableAudioConfig:
    """From a diffusers StableAudioPipeline folder (transformer/, vae/, projection_model/, ...)."""
    tr = read_json(root / "transformer" / "config.json")
    vae = read_json(root / "vae" / "config.json")
    proj = read_json(root / "projection_model" / "config.json")
    t5 = read_json(root / "text_encoder" / "config.json")
    tok = read_json(root / "tokenizer" / "tokenizer_config.json")

    embed_dim = tr["num_attention_heads"] * tr["attention_head_dim"]
    if tr["in_channels"] != tr["out_channels"]:
        raise ConfigError("transformer in_channels != out_channels is not supported")
    dit = DiTConfig(
        io_channels=tr["in_channels"],
        embed_dim=embed_dim,
        depth=tr["num_layers"],
        num_heads=tr["num_attention_heads"],
        cond_token_dim=tr["cross_attention_input_dim"],
        global_cond_dim=tr["global_states_input_dim"],
        project_cond_tokens=tr["cross_attention_dim"] != tr["cross_attention_input_dim"],
        timestep_features_dim=tr["time_proj_dim"],
    )
    if (
        dit.context_dim != tr["cross_attention_dim"]
        or dit.num_kv_heads != tr["num_key_value_attention_heads"]
    ):
        raise ConfigError(
            f"transformer cross_attention_dim {tr['cross_attention_dim']} with "
            f"{tr['num_key_value_attention_heads']} KV heads is not a Stable Audio geometry"
        )
    if vae["encoder_hidden_size"] != vae["decoder_channels"]:
        raise ConfigError("a VAE whose encoder and decoder widths differ is not supported")
    # diffusers' encoder emits encoder_hidden_size channels: mean | scale of the latents.
    if vae["encoder_hidden_size"] != 2 * vae["decoder_input_channels"]:
        raise ConfigError(
            f"VAE encoder_hidden_size {vae['encoder_hidden_size']} is not 2 × latent channels "
            f"{vae['decoder_input_channels']}, so its encoder cannot feed the VAE bottleneck"
        )
    vae_config = OobleckConfig(
        audio_channels=vae["audio_channels"],
        channels=vae["decoder_channels"],
        channel_multiples=tuple(vae["channel_multiples"]),
        strides=tuple(vae["downsampling_ratios"]),
        latent_dim=vae["decoder_input_channels"],
    )
    if proj["text_encoder_dim"] != proj["conditioning_dim"] or t5["d_model"] != proj["text_encoder_dim"]:
        raise ConfigError("a text projection between T5 and the DiT is not supported")
    numbers = tuple(
        NumberConditionerConfig(i, proj["min_value"], proj["max_value"]) for i in DIFFUSERS_NUMBER_IDS
    )
    conditioning = ConditioningConfig(
        cond_dim=proj["conditioning_dim"],
        t5_model_name=str(root / "text_encoder"),
        t5_max_length=tok["model_max_length"],
        numbers=numbers,
    )
    return StableAudioConfig(
        sample_rate=vae["sampling_rate"],
        sample_size=tr["sample_size"] * vae_config.downsampling_ratio,
        dit=dit,
        vae=vae_config,
        conditioning=conditioning,
    )
