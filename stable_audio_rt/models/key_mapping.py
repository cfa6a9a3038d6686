"""Where each of our parameters comes from in the two checkpoint layouts (reference-spec §8).

A `Rule` names the source tensors of one of our tensors and how to combine them. Rules are
derived from our own parameter names, so every parameter has exactly one rule and a missing
source is reported by its checkpoint name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from stable_audio_rt.models.config_io import DIFFUSERS_NUMBER_IDS

Combine = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def _only(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


def _concat_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(tensors), dim=0)


def _flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0].reshape(-1)


def fold_weight_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Legacy weight norm with dim 0: w = g · v / ‖v‖, the norm over all dims but the first.

    Computed in fp32; the result keeps v's dtype.
    """
    g, v = tensors
    v32 = v.float()
    norm = v32.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return (g.float() * v32 / norm).to(v.dtype)


@dataclass(frozen=True)
class Rule:
    sources: tuple[str, ...]
    combine: Combine = _only


def _sub(key: str, table: Sequence[tuple[str, str]]) -> str:
    for pattern, replacement in table:
        key = re.sub(pattern, replacement, key)
    return key


# ---- DiT -----------------------------------------------------------------------------------

_DIT_DIFFUSERS = (
    (r"^timestep_freqs$", "time_proj.weight"),
    (r"^timestep_embed\.", "timestep_proj."),
    (r"^cond_embed\.", "cross_attention_proj."),
    (r"^global_embed\.", "global_proj."),
    (r"^project_in\.", "proj_in."),
    (r"^project_out\.", "proj_out."),
    (r"^blocks\.", "transformer_blocks."),
    (r"\.self_attn_norm\.", ".norm1."),
    (r"\.cross_attn_norm\.", ".norm2."),
    (r"\.ff_norm\.", ".norm3."),
    (r"\.self_attn\.", ".attn1."),
    (r"\.cross_attn\.", ".attn2."),
    (r"\.to_out\.", ".to_out.0."),
    (r"\.ff\.proj_in\.", ".ff.net.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.net.2."),
)


def dit_rule_diffusers(key: str) -> Rule:
    name = _sub(key, _DIT_DIFFUSERS)
    if name.endswith(".to_qkv.weight"):
        stem = name.removesuffix("to_qkv.weight")
        return Rule(tuple(f"{stem}to_{p}.weight" for p in "qkv"), _concat_rows)
    if name.endswith(".to_kv.weight"):
        stem = name.removesuffix("to_kv.weight")
        return Rule(tuple(f"{stem}to_{p}.weight" for p in "kv"), _concat_rows)
    return Rule((name,))


SAT_DIT_PREFIX = "model.model."
_DIT_SAT_NAMES = (
    (r"^timestep_freqs$", "timestep_features.weight"),
    (r"^timestep_embed\.", "to_timestep_embed."),
    (r"^cond_embed\.", "to_cond_embed."),
    (r"^global_embed\.", "to_global_embed."),
    (r"^project_(in|out)\.", r"transformer.project_\1."),
    (r"^blocks\.", "transformer.layers."),
    (r"\.self_attn_norm\.", ".pre_norm."),
    (r"\.cross_attn_norm\.", ".cross_attend_norm."),
    (r"\.ff\.proj_in\.", ".ff.ff.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.ff.2."),
    (r"\.qk_norm\.", "."),
)
# stable-audio-tools' own LayerNorm (block norms) names its affine gamma/beta; the qk-norm
# LayerNorms are torch's (weight/bias).
_DIT_SAT_GAMMA_BETA = ((r"_norm\.weight$", "_norm.gamma"), (r"_norm\.bias$", "_norm.beta"))
_QK_NORM = re.compile(r"\.qk_norm\.")
# Derived from the config at load time; not a weight.
SAT_DIT_IGNORED = re.compile(r"rotary_pos_emb\.inv_freq$")


def dit_rule_sat(key: str) -> Rule:
    table = _DIT_SAT_NAMES if _QK_NORM.search(key) else _DIT_SAT_NAMES + _DIT_SAT_GAMMA_BETA
    name = SAT_DIT_PREFIX + _sub(key, table)
    return Rule((name,), _flatten if key == "timestep_freqs" else _only)


# ---- Oobleck VAE -----------------------------------------------------------------------------


def _vae_rule(key: str, rename: Callable[[str], str]) -> Rule:
    """Our conv weights are folded from weight_g/weight_v; Snake α, β are stored as (1, C, 1)
    (diffusers) or (C,) (stable-audio-tools). `rename` maps our dotted names to the layout's."""
    stem, _, param = key.rpartition(".")
    if param == "weight" and re.search(r"conv\w*$", stem):
        return Rule((f"{rename(stem)}.weight_g", f"{rename(stem)}.weight_v"), fold_weight_norm)
    if param in ("alpha", "beta"):
        return Rule((f"{rename(stem)}.{param}",), _flatten)
    return Rule((f"{rename(stem)}.{param}",))


def vae_rule_diffusers(key: str) -> Rule:
    return _vae_rule(key, lambda name: name)


SAT_VAE_PREFIX = "pretransform.model."
_RES_UNIT_SAT = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}
_ENCODER_BLOCK_SAT = {"res_unit1": 0, "res_unit2": 1, "res_unit3": 2, "snake1": 3, "conv1": 4}
_DECODER_BLOCK_SAT = {"snake1": 0, "conv_t1": 1, "res_unit1": 2, "res_unit2": 3, "res_unit3": 4}


def _sat_vae_name(name: str, num_blocks: int) -> str:
    """Our module path → stable-audio-tools' nn.Sequential indices (reference-spec §8)."""
    part, *path = name.split(".")
    out = [part, "layers"]
    if path[0] == "block":
        block_table = _ENCODER_BLOCK_SAT if part == "encoder" else _DECODER_BLOCK_SAT
        out += [str(int(path[1]) + 1), "layers", str(block_table[path[2]])]
        if path[2].startswith("res_unit"):
            out += ["layers", str(_RES_UNIT_SAT[path[3]])]
    else:
        out.append(str({"conv1": 0, "snake1": num_blocks + 1, "conv2": num_blocks + 2}[path[0]]))
    return SAT_VAE_PREFIX + ".".join(out)


def vae_rule_sat(key: str, num_blocks: int) -> Rule:
    return _vae_rule(key, lambda name: _sat_vae_name(name, num_blocks))


# ---- number conditioners -------------------------------------------------------------------

_NUMBER_PARTS = {"freqs": "0.weights", "proj.weight": "1.weight", "proj.bias": "1.bias"}


def _number_split(key: str) -> tuple[str, str]:
    cond_id, param = key.split(".", 1)
    return cond_id, _NUMBER_PARTS[param]


def numbers_rule_diffusers(key: str) -> Rule:
    cond_id, part = _number_split(key)
    return Rule((f"{DIFFUSERS_NUMBER_IDS[cond_id]}.time_positional_embedding.{part}",))


SAT_CONDITIONER_PREFIX = "conditioner.conditioners."


def numbers_rule_sat(key: str) -> Rule:
    cond_id, part = _number_split(key)
    return Rule((f"{SAT_CONDITIONER_PREFIX}{cond_id}.embedder.embedding.{part}",))
