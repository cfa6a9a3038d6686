"""Our DiT against diffusers' StableAudioDiTModel on the same random weights (CPU, fp32)."""

import copy
import dataclasses

import pytest
import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from numerics import FP32_REL_TOL, rel_error

from stable_audio_rt.models import dit as dit_module
from stable_audio_rt.models.attention import (
    FP32_SDPA,
    SDPA,
    apply_partial_rope,
    merge_zero_tokens,
    rope_tables,
)
from stable_audio_rt.models.config import TINY
from stable_audio_rt.models.random_init import randomize_


def _inputs(config, batch, frames, generator):
    dit, cond = config.dit, config.conditioning
    x = torch.randn(batch, dit.io_channels, frames, generator=generator)
    t = torch.rand(batch, generator=generator)
    context = torch.randn(batch, cond.context_tokens, dit.cond_token_dim, generator=generator)
    global_cond = torch.randn(batch, dit.global_cond_dim, generator=generator)
    return x, t, context, global_cond


def _reference_v(transformer, x, t, context, global_cond):
    # As StableAudioPipeline calls it: RoPE over the latent frames plus the prepended token.
    rotary = get_1d_rotary_pos_embed(
        transformer.config.attention_head_dim // 2,
        x.shape[2] + 1,
        use_real=True,
        repeat_interleave_real=False,
    )
    return transformer(
        x,
        t,
        encoder_hidden_states=context,
        global_hidden_states=global_cond.unsqueeze(1),
        rotary_embedding=rotary,
        return_dict=False,
    )[0]


@pytest.mark.parametrize("batch,frames", [(1, 1), (2, 7), (1, 33), (2, 64)])
@torch.no_grad()
def test_dit_matches_diffusers(tiny_model, tiny_reference, batch, frames, generator):
    inputs = _inputs(tiny_model.config, batch, frames, generator)
    ours = tiny_model.dit(*inputs)
    reference = _reference_v(tiny_reference.transformer, *inputs)
    assert rel_error(ours, reference) <= FP32_REL_TOL


@torch.no_grad()
def test_dit_split_forward_reuses_the_context_kv_and_equals_diffusers(tiny_model, tiny_reference, generator):
    """The context's K/V computed once and reused for steps of other x and t (as a request's
    steps reuse them), each step's v equal to diffusers' full forward, the K/V left unchanged."""
    _, _, context, global_cond = _inputs(tiny_model.config, 2, 9, generator)
    dit = tiny_model.dit
    context_kv = dit.context_kv(context)
    kept = [t.clone() for pair in context_kv for t in pair]  # per block: (K, V)
    for _ in range(3):
        x, t, _, _ = _inputs(tiny_model.config, 2, 9, generator)
        split = dit.forward_with_context_kv(x, dit.global_token(t, global_cond), context_kv)
        reference = _reference_v(tiny_reference.transformer, x, t, context, global_cond)
        assert rel_error(split, reference) <= FP32_REL_TOL
    assert all(
        torch.equal(a, b) for a, b in zip(kept, torch.utils._pytree.tree_leaves(context_kv), strict=True)
    )


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("attention", [SDPA, FP32_SDPA], ids=["sdpa", "fp32_sdpa"])
@torch.no_grad()
def test_merged_zero_tokens_give_the_same_v(qk_norm, attention, generator):
    """The context's pads (zero in every row) merged into one weighed token: the v of attending to
    each of them, also where qk-norm's bias makes their key non-zero (Small)."""
    dit = randomize_(dit_module.DiT(dataclasses.replace(TINY.dit, qk_norm=qk_norm), attention), generator)
    x, t, context, global_cond = _inputs(TINY, 2, 9, generator)
    prompt = TINY.conditioning.t5_max_length
    used = [int(n) for n in torch.randint(1, prompt, (2,), generator=generator)]
    for row, length in enumerate(used):
        context[row, length:prompt] = 0  # T5's pads: zero, the timing tokens after them not
    merged, key_bias = merge_zero_tokens(context)
    assert merged.shape[1] == context.shape[1] - (prompt - max(used)) + 1
    token = dit.global_token(t, global_cond)
    expected = dit.forward_with_context_kv(x, token, dit.context_kv(context))
    ours = dit.forward_with_context_kv(x, token, dit.context_kv(merged), key_bias)
    assert rel_error(ours, expected) <= FP32_REL_TOL


@torch.no_grad()
def test_a_key_bias_for_attention_that_takes_none_is_refused(tiny_model, generator):
    x, t, context, global_cond = _inputs(tiny_model.config, 1, 3, generator)
    dit = copy.deepcopy(tiny_model.dit)
    dit.set_attention(dataclasses.replace(SDPA, takes_key_bias=False))
    with pytest.raises(ValueError, match="takes no key bias"):
        dit.forward_with_context_kv(
            x, dit.global_token(t, global_cond), dit.context_kv(context), torch.zeros(1, 1, 1, 1)
        )


@torch.no_grad()
def test_rope_tables_are_built_once_per_shape_and_stay_fp32(tiny_model, generator, monkeypatch):
    """Every step of one shape reads the same tables (no allocation per step, nothing new for a
    captured region), equal to `rope_tables`, and a half-precision model keeps them fp32."""
    dit = copy.deepcopy(tiny_model.dit)
    dit.rope_cache.clear()  # the shared model's earlier calls filled it
    built = []

    def counting(*args):
        built.append(args[0])
        return rope_tables(*args)

    monkeypatch.setattr(dit_module, "rope_tables", counting)
    x, t, context, global_cond = _inputs(tiny_model.config, 2, 9, generator)
    first = dit(x, t, context, global_cond)
    tables = dit.rope(10, x.device)
    assert torch.equal(dit(x, t, context, global_cond), first)
    assert built == [10]  # 9 frames + the global token, once for two calls
    assert all(a is b for a, b in zip(dit.rope(10, x.device), tables, strict=True))
    dit(x[..., :5], t, context, global_cond)
    assert built == [10, 6]
    expected = rope_tables(10, dit.config.rotary_dim, dit.config.rope_base)
    assert all(torch.equal(a, b) for a, b in zip(tables, expected, strict=True))

    dit.half()
    assert all(table.dtype == torch.float32 for pair in dit.rope_cache.values() for table in pair)
    half = dit(x.half(), t.half(), context.half(), global_cond.half())
    assert half.dtype == torch.float16 and built == [10, 6]


def test_partial_rope_is_half_split_on_first_dims(generator):
    """Dims j and j + 16 rotate together by position · 10000^(-j/16); dims 32-63 pass through."""
    positions, head_dim, rotary_dim = 5, 64, 32
    x = torch.randn(positions, head_dim, generator=generator)
    given = x.clone()
    cos, sin = rope_tables(positions, rotary_dim, 10000.0)
    out = apply_partial_rope(x, cos, sin)
    assert torch.equal(x, given)  # rotated in a copy: an fp32 input is left as it was
    half = rotary_dim // 2
    for p in range(positions):
        for j in range(half):
            angle = torch.tensor(p * 10000.0 ** (-j / half), dtype=torch.float64)
            a, b = x[p, j].double(), x[p, j + half].double()
            expected = (a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin())
            assert out[p, j].item() == pytest.approx(expected[0].item(), abs=1e-5)
            assert out[p, j + half].item() == pytest.approx(expected[1].item(), abs=1e-5)
    assert torch.equal(out[:, rotary_dim:], x[:, rotary_dim:])
