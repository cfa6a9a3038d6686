"""The custom ops are registered as torch expects (torch.library.opcheck: schema, fake
implementation, dispatch under AOT), and trace whole under torch.compile."""

import pytest
import torch
from numerics import rel_error

import stable_audio_rt.kernels.ops  # noqa: F401  (registers the ops)
from stable_audio_rt.models.attention import rope_tables


def _cases(generator):
    qkv = torch.randn(2, 9, 3, 4, 64, generator=generator).permute(2, 0, 3, 1, 4).unbind(0)
    cos, sin = rope_tables(9, 32, 10000.0)
    kv = torch.randn(2, 2, 2, 11, 64, generator=generator).unbind(0)
    x = torch.randn(2, 5, 300, generator=generator)
    return [
        (torch.ops.stable_audio_rt.rope_self_attention.default, (*qkv, cos, sin)),
        (torch.ops.stable_audio_rt.gqa_cross_attention.default, (qkv[0], *kv)),
        (torch.ops.stable_audio_rt.snake.default, (x, torch.rand(5) + 0.5, torch.rand(5) + 0.5)),
    ]


@pytest.mark.parametrize("index", range(3))
def test_opcheck(index, generator):
    op, args = _cases(generator)[index]
    # test_autograd_registration is skipped: the ops are inference-only (no backward).
    torch.library.opcheck(
        op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    )


def test_ops_trace_whole_under_torch_compile(generator):
    (self_op, self_args), (cross_op, cross_args), (snake_op, snake_args) = _cases(generator)

    def block(self_args, cross_args, snake_args):
        return self_op(*self_args), cross_op(*cross_args), snake_op(*snake_args)

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    outputs = compiled(self_args, cross_args, snake_args)
    expected = block(self_args, cross_args, snake_args)
    for ours, eager in zip(outputs, expected, strict=True):
        assert ours.stride() == eager.stride()
        assert rel_error(ours, eager) == 0.0
