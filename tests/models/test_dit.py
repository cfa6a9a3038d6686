"""Our DiT against diffusers' StableAudioDiTModel on the same random weights (CPU, fp32)."""

import copy

import pytest
import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from numerics import FP32_REL_TOL, rel_error

from stable_audio_rt.models import dit as dit_module
from stable_audio_rt.models.attention import apply_partial_rope, rope_tables


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
def test_dit_split_forward_equals_forward(tiny_model, generator):
    """The σ-only and context-only parts computed once, then reused, give the same v."""
    x, t, context, global_cond = _inputs(tiny_model.config, 2, 9, generator)
    dit = tiny_model.dit
    split = dit.forward_with_context_kv(x, dit.global_token(t, global_cond), dit.context_kv(context))
    assert torch.equal(split, dit(x, t, context, global_cond))


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
