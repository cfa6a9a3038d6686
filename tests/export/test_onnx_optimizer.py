"""The export leaves onnxscript's quadratic SlicesSplit rewrite out (onnx_export.without_slices_split):
the rule list is restored afterwards, and the DiT's graph, of both model families, is the one the
full optimizer writes. The DiT holds most of the graphs' Slice nodes (the VAE's none, so the rule
cannot apply there; T5's six gave the same graph too, measured, not repeated here for time), and
every exported component's numbers are checked against PyTorch in test_export.py."""

import contextlib

import onnx
import pytest
import torch

from stable_audio_rt.export import onnx_export
from stable_audio_rt.export.onnx_export import Profile, export_component
from stable_audio_rt.models.config import TINY, TINY_SMALL
from stable_audio_rt.models.io_spec import component_specs
from stable_audio_rt.models.random_init import random_model

rewriter = pytest.importorskip("onnxscript.rewriter")
rules_module = pytest.importorskip("onnxscript.rewriter.rules.common")


@pytest.fixture
def default_rules():
    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if rules is None or rules_module.slice_split_rule not in rules:
        pytest.skip(
            "this onnxscript has no default rule list with SlicesSplit: the export runs its optimizer as is"
        )
    return rules


def test_the_rule_is_left_out_inside_and_restored_after(default_rules):
    slices_split = rules_module.slice_split_rule
    with onnx_export.without_slices_split():
        inside = rewriter._DEFAULT_REWRITE_RULES
    assert slices_split not in inside
    assert len(inside) == len(default_rules) - 1
    assert rewriter._DEFAULT_REWRITE_RULES is default_rules
    with pytest.raises(RuntimeError), onnx_export.without_slices_split():
        raise RuntimeError("an export that fails")
    assert rewriter._DEFAULT_REWRITE_RULES is default_rules


def _graph(path) -> tuple[list[tuple[str, str]], list[tuple[str, tuple[int, ...]]]]:
    graph = onnx.load(str(path)).graph
    nodes = [(n.domain, n.op_type) for n in graph.node]
    weights = sorted((t.name, tuple(t.dims)) for t in graph.initializer)
    return nodes, weights


@pytest.mark.parametrize("config", [TINY, TINY_SMALL], ids=["sao-1.0", "small"])
def test_the_dit_exports_to_the_full_optimizers_graph(
    config, default_rules, tmp_path, monkeypatch, generator
):
    model = random_model(config, seed=int(torch.randint(0, 2**31, (), generator=generator)))
    profile = Profile(batch=(1, 2, 2), frames=(1, 16, config.latent_frames))
    spec = component_specs(config)["dit"]
    export_component(model.dit, spec, "fp32", profile, config, tmp_path / "left_out.onnx")
    monkeypatch.setattr(onnx_export, "without_slices_split", contextlib.nullcontext)
    export_component(model.dit, spec, "fp32", profile, config, tmp_path / "full.onnx")
    nodes, weights = _graph(tmp_path / "left_out.onnx")
    assert ("", "Slice") in nodes  # what the rule looks at is there
    assert (nodes, weights) == _graph(tmp_path / "full.onnx")
