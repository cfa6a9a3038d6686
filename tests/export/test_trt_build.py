"""CONTRACT TEST, not evidence that TensorRT works: the engine builder runs against a stand-in
of TensorRT's builder API (tests/fakes/tensorrt, written from NVIDIA's docs) up to
build_serialized_network, so its calls, profiles, flags, timing cache and plugin registration
are exercised for real on a machine without TensorRT."""

import json
import sys

import fakes.tensorrt
import fakes.tensorrt.plugin
import pytest

from stable_audio_rt.export.engine_folder import ExportError, ExportSettings, export_engines
from stable_audio_rt.export.trt_build import (
    EngineBuildError,
    EngineBuildSettings,
    build_engine,
    profile_shapes,
)
from stable_audio_rt.manifest import TIMING_CACHE
from stable_audio_rt.models.config import TINY
from stable_audio_rt.trt_import import TensorRTUnavailable


@pytest.fixture
def fake_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fakes.tensorrt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", fakes.tensorrt.plugin)
    return fakes.tensorrt


def _built(plan):
    return json.loads(plan.read_bytes())


@pytest.mark.parametrize("component", ["t5", "dit", "vae_decoder", "vae_encoder"])
def test_every_component_builds_strongly_typed_with_the_manifest_profile(
    engines, fake_tensorrt, tmp_path, component
):
    folder, manifest = engines["fp16"]
    entry = manifest.components[component]
    plan = tmp_path / f"{component}.plan"
    version = build_engine(folder / entry.file, plan, entry, TINY, EngineBuildSettings(optimization_level=5))
    built = _built(plan)
    assert version == fake_tensorrt.__version__
    assert built["strongly_typed"] and built["optimization_level"] == 5
    assert built["workspace"] == 8 * 2**30
    (profile,) = built["profiles"]
    assert profile == {
        name: [list(s) for s in shapes] for name, shapes in profile_shapes(entry, TINY).items()
    }
    assert (tmp_path / TIMING_CACHE).is_file()


def test_dit_profile_spans_the_manifest_ranges(engines):
    _, manifest = engines["fp16"]
    shapes = profile_shapes(manifest.components["dit"], TINY)
    low, opt, high = shapes["x"]
    # The export's profile: rows 1..4 (two clips with CFG), frames 1:16:64 (tests/export/conftest.py).
    assert (low, opt, high) == ((1, 8, 1), (4, 8, 16), (4, 8, 64))


def test_timing_cache_is_reused_between_builds(engines, fake_tensorrt, tmp_path):
    folder, manifest = engines["fp16"]
    entry = manifest.components["vae_decoder"]
    build_engine(folder / entry.file, tmp_path / "a.plan", entry, TINY)
    build_engine(folder / entry.file, tmp_path / "b.plan", entry, TINY)
    assert _built(tmp_path / "a.plan")["cache_bytes_in"] == 0
    assert _built(tmp_path / "b.plan")["cache_bytes_in"] > 0


@pytest.fixture(scope="module")
def plugin_dit(tiny_diffusers_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt-plugins") / "engines"
    settings = ExportSettings("fp16", components=("dit",), frames=(1, 8, 16), trt_plugins=True)
    return folder, export_engines(tiny_diffusers_dir, folder, settings).components["dit"]


def test_plugins_are_registered_before_the_parser_meets_their_nodes(plugin_dit, fake_tensorrt, tmp_path):
    folder, entry = plugin_dit
    build_engine(folder / entry.file, tmp_path / "dit.plan", entry, TINY)
    nodes = _built(tmp_path / "dit.plan")["plugin_nodes"]
    assert sorted(set(nodes)) == entry.plugins and len(nodes) == 2 * TINY.dit.depth


def test_an_unregistered_plugin_is_a_named_parse_error(plugin_dit, fake_tensorrt, tmp_path, monkeypatch):
    folder, entry = plugin_dit
    monkeypatch.setattr(fakes.tensorrt.plugin, "REGISTRY", {})
    unannounced = type(entry)(**{**entry.__dict__, "plugins": []})  # a manifest that hides them
    with pytest.raises(EngineBuildError, match="plugin stable_audio_rt::.* not found"):
        build_engine(folder / entry.file, tmp_path / "dit.plan", unannounced, TINY)
    assert not (tmp_path / "dit.plan").exists()


def test_without_tensorrt_the_build_is_one_clear_error(engines, tmp_path):
    folder, manifest = engines["fp32"]
    entry = manifest.components["dit"]
    with pytest.raises(TensorRTUnavailable, match="pip install 'stable-audio-rt\\[trt\\]'"):
        build_engine(folder / entry.file, tmp_path / "dit.plan", entry, TINY)


def test_sa_export_says_onnx_only_in_one_line_without_tensorrt(tiny_diffusers_dir, tmp_path, capsys):
    from stable_audio_rt.export import cli

    out = tmp_path / "engines"
    assert (
        cli.main(["--model", str(tiny_diffusers_dir), "--out", str(out), "--components", "vae_decoder"]) == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"wrote {out}: ONNX only (TensorRT is not installed")
    assert not list(out.glob("*.plan"))


def test_sa_export_builds_plans_and_records_them_with_tensorrt_and_a_gpu(
    tiny_diffusers_dir, tmp_path, capsys, fake_tensorrt, monkeypatch
):
    from stable_audio_rt.export import cli, trt_build
    from stable_audio_rt.manifest import Manifest, PlanRecord
    from stable_audio_rt.models.checkpoint import sha256_file

    # No GPU here: the builder is told it has one (the stand-in TensorRT never touches it).
    monkeypatch.setattr(trt_build, "build_gpu", lambda: ("Stand-in GPU", "9.0"))
    out = tmp_path / "engines"
    argv = ["--model", str(tiny_diffusers_dir), "--out", str(out), "--components", "vae_decoder", "--fp16"]
    assert cli.main(argv) == 0
    assert (
        capsys.readouterr().out.strip().splitlines()[-1]
        == f"wrote {out}: ONNX and TensorRT engines for Stand-in GPU"
    )
    engine = Manifest.read(out).components["vae_decoder"].engine
    assert engine == PlanRecord(
        file="vae_decoder.plan",
        sha256=sha256_file(out / "vae_decoder.plan"),
        bytes=(out / "vae_decoder.plan").stat().st_size,
        tensorrt=fake_tensorrt.__version__,
        gpu="Stand-in GPU",
        compute_capability="9.0",
    )


@pytest.mark.parametrize(
    "raised,status,said",
    [
        (KeyboardInterrupt(), 130, "interrupted; {out} holds the new export's ONNX graphs, but not all "
         "its TensorRT plans: the same command builds them, reusing the graphs"),
        (ExportError("the builder ran out of GPU memory"), 2, "error: the builder ran out of GPU memory"),
    ],
)  # fmt: skip
def test_a_stop_or_an_error_while_the_plans_build_is_one_line_saying_what_is_written(
    raised, status, said, tiny_diffusers_dir, tmp_path, capsys, fake_tensorrt, monkeypatch
):
    """The plans were built outside the CLI's error policy: Ctrl-C in the build (minutes on a GPU)
    or a build error ended in a traceback, with nothing said of the graphs already in place."""
    from stable_audio_rt.export import cli, trt_build
    from stable_audio_rt.manifest import Manifest

    def build(folder, manifest, settings=None):
        raise raised

    monkeypatch.setattr(trt_build, "build_gpu", lambda: ("Stand-in GPU", "9.0"))
    monkeypatch.setattr(trt_build, "build_folder_engines", build)
    out = tmp_path / "engines"
    argv = ["--model", str(tiny_diffusers_dir), "--out", str(out), "--components", "vae_decoder"]
    assert cli.main(argv) == status
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"sa-export: {said.format(out=out)}"
    Manifest.read(out).check_files(out, "vae_decoder")  # the graphs, whole
