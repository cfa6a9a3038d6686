"""Random-weight Stable Audio checkpoints in the real file layouts, for CPU tests.

The diffusers layout is written by diffusers' own classes (`save_pretrained`), so file names
and keys are exactly the hub's. The single-file layout is written from the same weights
through reference-spec §8's table, transcribed here independently of the library's loader.
Stable Audio Open Small exists only in the single-file layout: its qk-norm LayerNorms ride on
diffusers' DiT as the `norm_q`/`norm_k` its attention processor applies, and are written under
stable-audio-tools' `q_norm`/`k_norm` names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
)
from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from stable_audio_rt.bench.peer import diffusers_modules
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.random_init import TOKENIZER_VOCAB_SIZE, build_tokenizer


def rerandomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter a non-trivial random value (reference inits zero some layers)."""

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=generator) * std + mean

    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight_g"):
                # Gains near 1 make the random VAE chaotic: its own fp32 and fp64 outputs then
                # differ by ~3e-3. Near 0.5 activations stay O(1) and that floor is ~1e-6.
                value = normal(p.shape, 0.05, 0.5).abs()
            elif re.search(r"(alpha|beta)$", name):
                value = normal(p.shape, 0.5)
            elif re.search(r"norm(\d|_[qk])?\.weight$|layer_norm\.weight$", name) and p.dim() == 1:
                value = normal(p.shape, 0.1, 1.0)
            elif p.dim() >= 2:
                value = normal(p.shape, p[0].numel() ** -0.5)
            else:
                value = normal(p.shape, 0.5 if name.endswith(("weight", "weights")) else 0.1)
            p.copy_(value)


@dataclass
class ReferenceModules:
    transformer: StableAudioDiTModel
    vae: AutoencoderOobleck
    projection_model: StableAudioProjectionModel
    text_encoder: T5EncoderModel
    tokenizer: T5Tokenizer

    def pipeline(self) -> StableAudioPipeline:
        return StableAudioPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            projection_model=self.projection_model,
            tokenizer=self.tokenizer,
            transformer=self.transformer,
            scheduler=CosineDPMSolverMultistepScheduler(),
        )


# stable-audio-tools' Attention(qk_norm="ln"): LayerNorm(dim_heads, eps=qk_norm_eps=1e-6).
_QK_NORM_EPS = 1e-6


def _add_qk_norm(transformer: StableAudioDiTModel, head_dim: int) -> None:
    """Small's per-head LayerNorm on queries and keys, in every self- and cross-attention.
    diffusers' StableAudioDiTModel cannot be configured with it, but its attention processor
    applies `norm_q`/`norm_k` where stable-audio-tools does: per head, before RoPE."""
    for block in transformer.transformer_blocks:
        for attn in (block.attn1, block.attn2):
            attn.norm_q = torch.nn.LayerNorm(head_dim, eps=_QK_NORM_EPS)
            attn.norm_k = torch.nn.LayerNorm(head_dim, eps=_QK_NORM_EPS)


def build_reference(config: StableAudioConfig, generator: torch.Generator) -> ReferenceModules:
    """diffusers' modules with the geometry of `config` and fresh random weights (fp32, eval)."""
    cond = config.conditioning
    transformer, vae, projection_model = diffusers_modules(config, config.latent_frames)
    if config.dit.qk_norm:
        _add_qk_norm(transformer, config.dit.head_dim)
    modules = ReferenceModules(
        transformer=transformer,
        vae=vae,
        projection_model=projection_model,
        text_encoder=T5EncoderModel(
            T5Config(
                vocab_size=TOKENIZER_VOCAB_SIZE,
                d_model=cond.cond_dim,
                d_kv=32,
                d_ff=2 * cond.cond_dim,
                num_layers=2,
                num_heads=cond.cond_dim // 32,
                feed_forward_proj="relu",
            )
        ),
        tokenizer=build_tokenizer(cond.t5_max_length),
    )
    for m in (modules.transformer, modules.vae, modules.projection_model, modules.text_encoder):
        rerandomize(m, generator)
        m.eval()
    return modules


def write_diffusers_checkpoint(reference: ReferenceModules, folder: Path) -> Path:
    if reference.transformer.transformer_blocks[0].attn1.norm_q is not None:
        # diffusers' config has no qk-norm: it would load such a folder without it.
        raise ValueError("the diffusers layout cannot hold a qk-norm DiT (Small): write the single file")
    reference.pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


# ---- the single-file layout, from reference-spec §8 -----------------------------------------

_RES_UNIT = {"snake1": "0", "conv1": "1", "snake2": "2", "conv2": "3"}
_ENC_BLOCK = {"res_unit1": "0", "res_unit2": "1", "res_unit3": "2", "snake1": "3", "conv1": "4"}
_DEC_BLOCK = {"snake1": "0", "conv_t1": "1", "res_unit1": "2", "res_unit2": "3", "res_unit3": "4"}


def _sat_vae_key(key: str, num_blocks: int) -> str:
    part, *path = key.split(".")
    if path[0] == "block":
        table = _ENC_BLOCK if part == "encoder" else _DEC_BLOCK
        inner = [table[path[2]]]
        rest = path[3:]
        if path[2].startswith("res_unit"):
            inner += ["layers", _RES_UNIT[rest[0]]]
            rest = rest[1:]
        mapped = ["layers", str(int(path[1]) + 1), "layers", *inner, *rest]
    else:
        top = {"conv1": "0", "snake1": str(num_blocks + 1), "conv2": str(num_blocks + 2)}
        mapped = ["layers", top[path[0]], *path[1:]]
    return "pretransform.model." + ".".join([part, *mapped])


def _sat_dit_state(sd: dict[str, torch.Tensor], rotary_dim: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    simple = {
        "time_proj.weight": "timestep_features.weight",
        "preprocess_conv.weight": "preprocess_conv.weight",
        "postprocess_conv.weight": "postprocess_conv.weight",
        "proj_in.weight": "transformer.project_in.weight",
        "proj_out.weight": "transformer.project_out.weight",
    }
    for key, value in sd.items():
        if key in simple:
            out[simple[key]] = value[:, None] if key == "time_proj.weight" else value
            continue
        head, _, rest = key.partition(".")
        if head in ("timestep_proj", "cross_attention_proj", "global_proj"):
            sat_head = {
                "timestep_proj": "to_timestep_embed",
                "cross_attention_proj": "to_cond_embed",
                "global_proj": "to_global_embed",
            }[head]
            out[f"{sat_head}.{rest}"] = value
            continue
        m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key)
        i, name = m.group(1), m.group(2)
        layer = f"transformer.layers.{i}."
        norms = {"norm1": "pre_norm", "norm2": "cross_attend_norm", "norm3": "ff_norm"}
        if name.split(".")[0] in norms:
            norm, param = name.split(".")
            out[layer + norms[norm] + "." + {"weight": "gamma", "bias": "beta"}[param]] = value
        elif name == "attn1.to_q.weight":
            qkv = [sd[f"transformer_blocks.{i}.attn1.to_{p}.weight"] for p in "qkv"]
            out[layer + "self_attn.to_qkv.weight"] = torch.cat(qkv)
        elif name == "attn2.to_k.weight":
            kv = [sd[f"transformer_blocks.{i}.attn2.to_{p}.weight"] for p in "kv"]
            out[layer + "cross_attn.to_kv.weight"] = torch.cat(kv)
        elif name in ("attn1.to_k.weight", "attn1.to_v.weight", "attn2.to_v.weight"):
            continue
        elif name == "attn2.to_q.weight":
            out[layer + "cross_attn.to_q.weight"] = value
        elif name.startswith(("attn1.to_out.0.", "attn2.to_out.0.")):
            attn = "self_attn" if name.startswith("attn1") else "cross_attn"
            out[layer + f"{attn}.to_out." + name.rsplit(".", 1)[1]] = value
        elif m := re.fullmatch(r"attn([12])\.norm_([qk])\.(weight|bias)", name):
            # stable-audio-tools' Attention names its qk-norm LayerNorms q_norm and k_norm.
            attn = "self_attn" if m.group(1) == "1" else "cross_attn"
            out[layer + f"{attn}.{m.group(2)}_norm.{m.group(3)}"] = value
        elif name.startswith("ff.net.0.proj."):
            out[layer + "ff.ff.0.proj." + name.rsplit(".", 1)[1]] = value
        elif name.startswith("ff.net.2."):
            out[layer + "ff.ff.2." + name.rsplit(".", 1)[1]] = value
        else:
            raise KeyError(f"no §8 mapping for {key}")
    # stable-audio-tools also stores the RoPE frequencies (dropped by §8's table).
    out["transformer.rotary_pos_emb.inv_freq"] = 1.0 / 10000 ** (
        torch.arange(0, rotary_dim, 2).float() / rotary_dim
    )
    return {"model.model." + k: v for k, v in out.items()}


def sat_state_dict(reference: ReferenceModules, config: StableAudioConfig) -> dict[str, torch.Tensor]:
    state = _sat_dit_state(reference.transformer.state_dict(), config.dit.rotary_dim)
    num_blocks = len(config.vae.strides)
    for key, value in reference.vae.state_dict().items():
        is_snake = key.endswith(("alpha", "beta"))
        state[_sat_vae_key(key, num_blocks)] = value.reshape(-1) if is_snake else value
    names = {"start_number_conditioner": "seconds_start", "end_number_conditioner": "seconds_total"}
    # diffusers' projection always holds both; Small has seconds_total alone.
    wanted = {n.id for n in config.conditioning.numbers}
    for key, value in reference.projection_model.state_dict().items():
        head, _, rest = key.partition(".time_positional_embedding.")
        if names[head] in wanted:
            state[f"conditioner.conditioners.{names[head]}.embedder.embedding.{rest}"] = value
    return {k: v.contiguous().clone() for k, v in state.items()}


def sat_model_config(config: StableAudioConfig) -> dict:
    """`model_config.json` in stable-audio-tools' format, as the hub's file is laid out."""
    vae, dit, cond = config.vae, config.dit, config.conditioning
    oobleck = {"channels": vae.channels, "c_mults": list(vae.channel_multiples), "strides": list(vae.strides)}
    numbers = [
        {"id": n.id, "type": "number", "config": {"min_val": n.min_value, "max_val": n.max_value}}
        for n in cond.numbers
    ]
    return {
        "model_type": "diffusion_cond",
        "sample_size": config.sample_size,
        "sample_rate": config.sample_rate,
        "audio_channels": vae.audio_channels,
        "model": {
            "pretransform": {
                "type": "autoencoder",
                "iterate_batch": True,
                "config": {
                    "encoder": {
                        "type": "oobleck",
                        "requires_grad": False,
                        "config": {
                            "in_channels": vae.audio_channels,
                            **oobleck,
                            "latent_dim": 2 * vae.latent_dim,
                            "use_snake": True,
                        },
                    },
                    "decoder": {
                        "type": "oobleck",
                        "config": {
                            "out_channels": vae.audio_channels,
                            **oobleck,
                            "latent_dim": vae.latent_dim,
                            "use_snake": True,
                            "final_tanh": False,
                        },
                    },
                    "bottleneck": {"type": "vae"},
                    "latent_dim": vae.latent_dim,
                    "downsampling_ratio": vae.downsampling_ratio,
                    "io_channels": vae.audio_channels,
                },
            },
            "conditioning": {
                "configs": [
                    {
                        "id": "prompt",
                        "type": "t5",
                        "config": {"t5_model_name": "t5-base", "max_length": cond.t5_max_length},
                    },
                    *numbers,
                ],
                "cond_dim": cond.cond_dim,
            },
            "diffusion": {
                "cross_attention_cond_ids": list(cond.cross_attention_ids),
                "global_cond_ids": list(cond.global_ids),
                "type": "dit",
                "diffusion_objective": config.objective,
                "config": {
                    "io_channels": dit.io_channels,
                    "embed_dim": dit.embed_dim,
                    "depth": dit.depth,
                    "num_heads": dit.num_heads,
                    "cond_token_dim": dit.cond_token_dim,
                    "global_cond_dim": dit.global_cond_dim,
                    "project_cond_tokens": dit.project_cond_tokens,
                    "transformer_type": "continuous_transformer",
                    **({"attn_kwargs": {"qk_norm": "ln"}} if dit.qk_norm else {}),
                },
            },
            "io_channels": dit.io_channels,
        },
    }


def write_single_file_checkpoint(
    reference: ReferenceModules, config: StableAudioConfig, folder: Path
) -> Path:
    """model.safetensors + model_config.json, with T5 and tokenizer in their diffusers subfolders."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sat_state_dict(reference, config), folder / "model.safetensors")
    (folder / "model_config.json").write_text(json.dumps(sat_model_config(config), indent=2))
    reference.text_encoder.save_pretrained(folder / "text_encoder")
    reference.tokenizer.save_pretrained(folder / "tokenizer")
    return folder
