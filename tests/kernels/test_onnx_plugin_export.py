"""sa-export --trt-plugins: the kernel ops become TensorRT plugin nodes in their own ONNX
domain, pass onnx.checker, and are refused by onnxruntime with the fix."""

import os
import subprocess
import sys

import onnx
import pytest
from torch import nn

from stable_audio_rt.errors import StableAudioError
from stable_audio_rt.export.engine_folder import ExportSettings, export_engines
from stable_audio_rt.kernels.onnx_plugins import PLUGIN_DOMAIN, PLUGIN_VERSION
from stable_audio_rt.models.config import TINY
from stable_audio_rt.models.vae import OobleckDecoder, OobleckEncoder, Snake
from stable_audio_rt.runtime.pipeline import StableAudio

PLUGGED = ("dit", "vae_decoder", "vae_encoder")


def _count_snakes(module: nn.Module) -> int:
    return sum(isinstance(m, Snake) for m in module.modules())


@pytest.fixture(scope="module")
def plugin_folder(tiny_diffusers_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins") / "fp16"
    settings = ExportSettings("fp16", components=("t5", *PLUGGED), frames=(1, 8, 16), trt_plugins=True)
    return folder, export_engines(tiny_diffusers_dir, folder, settings)


def _nodes(folder, name):
    return onnx.load(str(folder / f"{name}.onnx"), load_external_data=False).graph.node


def test_dit_attention_becomes_plugin_nodes(plugin_folder):
    folder, manifest = plugin_folder
    nodes = _nodes(folder, "dit")
    plugin = [n for n in nodes if n.domain == PLUGIN_DOMAIN]
    assert sorted(n.op_type for n in plugin) == sorted(
        ["rope_self_attention", "gqa_cross_attention"] * TINY.dit.depth
    )
    assert not [n for n in nodes if n.op_type == "Softmax"], "a standard attention is left in the graph"
    for node in plugin:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes == {
            "plugin_namespace": b"stable_audio_rt",
            "plugin_version": PLUGIN_VERSION.encode(),
            "aot": 1,
        }
    assert manifest.components["dit"].plugins == [
        "stable_audio_rt::gqa_cross_attention",
        "stable_audio_rt::rope_self_attention",
    ]


def test_vae_snakes_become_plugin_nodes(plugin_folder):
    folder, manifest = plugin_folder
    for name, module in (
        ("vae_decoder", OobleckDecoder(TINY.vae)),
        ("vae_encoder", OobleckEncoder(TINY.vae)),
    ):
        snakes = [n for n in _nodes(folder, name) if n.domain == PLUGIN_DOMAIN]
        assert [n.op_type for n in snakes] == ["snake"] * _count_snakes(module)
        assert manifest.components[name].verification.status == "skipped"
    assert manifest.components["t5"].plugins == []


def test_plugin_graphs_pass_the_checker_in_a_fresh_process(plugin_folder):
    # Without our schemas registered, as a user's onnx or TensorRT sees the file.
    folder, _ = plugin_folder
    paths = [str(folder / f"{name}.onnx") for name in PLUGGED]
    script = "import sys, onnx\nfor p in sys.argv[1:]:\n    onnx.checker.check_model(p, full_check=True)\n"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script, *paths], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_onnxruntime_refuses_plugin_graphs_with_the_fix(plugin_folder):
    folder, _ = plugin_folder
    with pytest.raises(StableAudioError, match="re-export without --trt-plugins"):
        StableAudio.from_engines(folder, backend="onnxruntime")


def test_plugin_and_standard_exports_are_not_reused_for_each_other(plugin_folder, tiny_diffusers_dir):
    folder, manifest = plugin_folder
    every = tuple(manifest.components)  # an export writes exactly its components
    standard = export_engines(tiny_diffusers_dir, folder, ExportSettings("fp16", every, frames=(1, 8, 16)))
    for name in PLUGGED:
        assert standard.components[name].plugins == []
        assert not [n for n in _nodes(folder, name) if n.domain == PLUGIN_DOMAIN]
