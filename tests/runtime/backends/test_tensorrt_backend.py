"""CONTRACT TESTS, not evidence that TensorRT works: the TensorRT backend runs plans built by
sa-export's builder against the stand-in of TensorRT's Python API in tests/fakes/tensorrt
(written from NVIDIA's docs), whose runtime executes the plan's ONNX graph with onnxruntime on
the CPU. They check our calls (plan checks before deserializing, engine I/O and profile checks,
one execution context per shape bucket, profile 0, the addresses bound, type conversions, the
DiT step's preallocated buffers) and that the backend feeds every graph exactly what the
onnxruntime backend feeds it. Equal outputs here say nothing about TensorRT's numerics: the same
onnxruntime runs underneath both."""

import dataclasses
import json
import shutil
import sys

import fakes.tensorrt
import fakes.tensorrt.plugin
import numpy as np
import pytest
import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.export import trt_build
from stable_audio_rt.export.trt_build import build_folder_engines
from stable_audio_rt.manifest import EngineFolderError, Manifest, file_record
from stable_audio_rt.models.config import TINY
from stable_audio_rt.models.io_spec import COMPONENTS, axis_sizes, component_specs, sample_inputs
from stable_audio_rt.runtime.backends import tensorrt_backend
from stable_audio_rt.runtime.backends.onnxruntime_backend import OrtComponents, OrtGraph
from stable_audio_rt.runtime.backends.tensorrt_backend import (
    EngineRunError,
    TrtComponents,
    TrtGraph,
    check_aligned,
    torch_dtype,
)
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.trt_import import TensorRTUnavailable, gpu_identity

CPU = torch.device("cpu")
STAND_IN_GPU = ("Stand-in GPU", "9.0")
RATE = 44100
# The same onnxruntime CPU session type runs both backends on the same bytes: measured
# bit-identical; the bound leaves room only for onnxruntime's own run-to-run variation.
MAX_REL = 1e-6


def _install(patch) -> None:
    patch.setitem(sys.modules, "tensorrt", fakes.tensorrt)
    patch.setitem(sys.modules, "tensorrt.plugin", fakes.tensorrt.plugin)


@pytest.fixture(scope="module")
def plans(engines, tmp_path_factory):
    """{precision: folder}: copies of the session's engine folders with stand-in plans built by
    sa-export's builder for the stand-in GPU."""
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        _install(patch)
        patch.setattr(trt_build, "build_gpu", lambda: STAND_IN_GPU)
        for precision in ("fp32", "fp16"):
            folder = shutil.copytree(engines[precision][0], tmp_path_factory.mktemp("trt") / precision)
            build_folder_engines(folder, Manifest.read(folder))
            out[precision] = folder
    return out


@pytest.fixture
def deserialized(monkeypatch):
    """The stand-in TensorRT as `tensorrt`, the CPU as the stand-in GPU; returns the list of
    plans deserialized so far."""
    _install(monkeypatch)
    monkeypatch.setattr(tensorrt_backend, "gpu_identity", lambda device: STAND_IN_GPU)
    calls = []
    original = fakes.tensorrt.Runtime.deserialize_cuda_engine

    def recording(self, serialized_engine):
        calls.append(len(serialized_engine))
        return original(self, serialized_engine)

    monkeypatch.setattr(fakes.tensorrt.Runtime, "deserialize_cuda_engine", recording)
    return calls


@pytest.fixture
def folder_copy(plans, tmp_path):
    return shutil.copytree(plans["fp32"], tmp_path / "engines")


def _edit_manifest(folder, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for name, entry in data["components"].items():
        edit(name, entry)
    path.write_text(json.dumps(data))


def _random_inputs(name: str, generator: torch.Generator, batch: int, frames: int) -> dict[str, torch.Tensor]:
    spec = component_specs(TINY)[name]
    values = sample_inputs(spec, axis_sizes(TINY, batch, frames), torch.float32, generator, vocab_size=64)
    return {t.name: v for t, v in zip(spec.inputs, values, strict=True)}


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", COMPONENTS)
def test_every_graph_gives_what_onnxruntime_gives(plans, deserialized, generator, precision, name):
    folder = plans[precision]
    manifest = Manifest.read(folder)
    trt_graph, ort_graph = TrtGraph(folder, manifest, name, CPU), OrtGraph(folder, manifest, name, CPU)
    assert trt_graph.float_type == ort_graph.float_type
    assert (
        trt_graph.float_type
        == {"fp32": torch.float32, "fp16": torch.float16}[manifest.components[name].precision]
    )
    batch = 1 if component_specs(TINY)[name].one_clip_per_run else 2  # the VAE's plans take one clip
    inputs = _random_inputs(name, generator, batch, frames=7)  # float32: fp16 graphs convert them
    ours, reference = trt_graph.run(inputs), ort_graph.run(inputs)
    assert len(ours) == len(reference) == len(manifest.components[name].outputs)
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert torch.isfinite(b).all() and b.abs().max() > 0
        assert _max_rel(a, b) <= MAX_REL


@pytest.mark.parametrize(
    "options",
    [
        dict(prompt=["rain", "drums"], negative_prompt="noise"),
        dict(prompt="guitar", inpaint="tone"),
        dict(prompt="pad", init_audio="tone", init_noise_level=3.0),
    ],
    ids=["t2a-cfg-batch-negative", "inpaint", "a2a"],
)
def test_pipeline_gives_the_onnxruntime_latents(plans, deserialized, options):
    """Needs the pipeline's allocate-before / bind protocol (`step_model(steps, rows)` then `bind`)."""
    folder = plans["fp32"]
    trt_components = TrtComponents(folder, CPU)
    assert trt_components.capturable and not OrtComponents.capturable
    ours, reference = StableAudio(trt_components), StableAudio(OrtComponents(folder, CPU))
    options = dict(options)
    tone = (0.3 * np.sin(2 * np.pi * 330 * np.arange(RATE) / RATE)).astype(np.float32), RATE
    if options.pop("inpaint", None):
        keep = np.ones(RATE, np.float32)
        keep[RATE // 4 : RATE * 3 // 5] = 0  # regenerate the middle
        options.update(inpaint_audio=tone, inpaint_mask=keep)
    if options.get("init_audio") == "tone":
        options["init_audio"] = tone
    prompt = options.pop("prompt")
    common = dict(seconds_total=1.0, steps=5, seed=11, frames=24, vae_chunk=None)
    a, b = ours.generate(prompt, **common, **options), reference.generate(prompt, **common, **options)
    assert torch.isfinite(b.latents).all()
    assert _max_rel(a.latents, b.latents) <= 1e-5
    assert a.audio.shape == b.audio.shape and _max_rel(a.audio, b.audio) <= 1e-5


def test_dit_step_fills_buffers_allocated_before_bind(plans, deserialized, generator):
    folder = plans["fp16"]
    trt_components, ort_components = TrtComponents(folder, CPU), OrtComponents(folder, CPU)
    steps, rows = 3, 4
    step = trt_components.step_model(steps, rows)
    tokens, width, global_width = (
        TINY.conditioning.context_tokens,
        TINY.dit.cond_token_dim,
        TINY.dit.global_cond_dim,
    )
    assert [(b.shape, b.dtype) for b in step.buffers()] == [
        ((steps, rows), torch.float32),
        ((rows,), torch.float32),
        ((rows, tokens, width), torch.float16),
        ((rows, global_width), torch.float16),
    ]
    addresses = [b.data_ptr() for b in step.buffers()]
    t = torch.rand(steps, generator=generator)
    context = torch.randn(rows, tokens, width, generator=generator)
    global_cond = torch.randn(rows, global_width, generator=generator)
    step.bind(t, context, global_cond)
    assert [b.data_ptr() for b in step.buffers()] == addresses  # filled in place
    assert torch.equal(step.t, t[:, None].expand(steps, rows))
    assert torch.equal(step.context, context.half()) and torch.equal(step.global_cond, global_cond.half())

    reference = ort_components.step_model(steps, rows)
    reference.bind(t, context, global_cond)
    x = torch.randn(rows, TINY.dit.io_channels, 9, generator=generator)
    engine = trt_components.graphs["dit"].engine
    for i in range(steps):
        v = step(x, i)
        assert _max_rel(v, reference(x, i)) <= MAX_REL
        # The engine read the step's own buffers (what a captured CUDA graph replays), not copies.
        bound = engine.contexts[-1].executions[-1]["addresses"]
        # t from a buffer of its own holding step i's row (a view of the table would start
        # mid-allocation, where TensorRT takes no address), each step the same
        assert bound["t"] == step.t_step.data_ptr() and step.t_step.storage_offset() == 0
        assert torch.equal(step.t_step, step.t[i])
        assert bound["context"] == step.context.data_ptr()
        assert bound["global_cond"] == step.global_cond.data_ptr()
    # New values bound in place change what the engine sees (a copy: the step overwrites its v).
    before = step(x, 0).clone()
    step.bind(t, -context, global_cond)
    assert not torch.equal(step(x, 0), before)


def test_dit_step_binds_fp16_input_and_output_by_address(plans, deserialized, generator):
    """With fp16 engines the sampler state's fp16 model input is bound as it is (no cast per step) and v
    lands in one fp16 tensor per shape, allocated by the first run (before any capture)."""
    components = TrtComponents(plans["fp16"], CPU)
    assert components.dtype == torch.float16
    steps, rows = 2, 2
    step = components.step_model(steps, rows)
    step.bind(
        torch.rand(steps, generator=generator),
        torch.randn(rows, TINY.conditioning.context_tokens, TINY.dit.cond_token_dim, generator=generator),
        torch.randn(rows, TINY.dit.global_cond_dim, generator=generator),
    )
    x = torch.randn(rows, TINY.dit.io_channels, 9, generator=generator).half()
    engine = components.graphs["dit"].engine
    outputs = []
    for i in range(steps):
        outputs.append(step(x, i))
        bound = engine.contexts[-1].executions[-1]["addresses"]
        assert bound["x"] == x.data_ptr() and bound["v"] == outputs[0].data_ptr()
    assert outputs[0] is outputs[1] and outputs[0].dtype == torch.float16


def test_addresses_off_trts_alignment_are_refused_by_name():
    """setTensorAddress takes 256-byte aligned pointers only: a view that starts elsewhere is refused
    with the tensor named, one that starts on the boundary passes."""
    base = torch.zeros(1024)
    aligned = next(
        i for i in range(64) if (base.data_ptr() + 4 * i) % tensorrt_backend.TENSOR_ADDRESS_ALIGNMENT == 0
    )
    check_aligned("dit", "t", base[aligned:])
    with pytest.raises(EngineRunError, match="dit's t starts at an address TensorRT does not take"):
        check_aligned("dit", "t", base[aligned + 2 :])


def test_one_execution_context_per_shape_bucket_on_profile_zero(plans, deserialized, generator):
    folder = plans["fp32"]
    graph = TrtGraph(folder, Manifest.read(folder), "dit", CPU)
    engine = graph.engine
    graph.run(_random_inputs("dit", generator, 1, 5))
    graph.run(_random_inputs("dit", generator, 1, 5))  # same shape, fresh tensors
    assert len(engine.contexts) == len(graph.contexts) == 1
    graph.run(_random_inputs("dit", generator, 1, 9))
    graph.run(_random_inputs("dit", generator, 2, 5))
    assert len(engine.contexts) == len(graph.contexts) == 3
    graph.run(_random_inputs("dit", generator, 1, 5))
    assert len(engine.contexts) == 3
    first, second, third = engine.contexts
    assert [len(c.executions) for c in engine.contexts] == [3, 1, 1]
    latents = (TINY.dit.io_channels,)
    assert [c.executions[0]["shapes"]["x"] for c in engine.contexts] == [
        (1, *latents, 5),
        (1, *latents, 9),
        (2, *latents, 5),
    ]
    for context in engine.contexts:
        assert context.profile_set == 0
        assert {e["stream"] for e in context.executions} == {0}  # the CPU: no stream
    # One scratch buffer of the engine's size for all of them (the default gives each context its
    # own, at the largest profile's size), made once and 256-byte aligned.
    assert {c.strategy for c in engine.contexts} == {
        fakes.tensorrt.ExecutionContextAllocationStrategy.USER_MANAGED
    }
    memory = {e["device_memory"] for c in engine.contexts for e in c.executions}
    assert len(memory) == 1 and memory.pop() % tensorrt_backend.TENSOR_ADDRESS_ALIGNMENT == 0
    scratch = graph.scratch
    assert scratch.numel() >= engine.device_memory_size_v2
    graph.run(_random_inputs("dit", generator, 2, 9))
    assert len(engine.contexts) == 4 and graph.scratch is scratch


def test_addresses_are_those_of_the_tensors_passed_and_returned(plans, deserialized, generator):
    folder = plans["fp32"]
    graph = TrtGraph(folder, Manifest.read(folder), "vae_encoder", CPU)
    inputs = _random_inputs("vae_encoder", generator, 1, 6)
    mean, scale = graph.run(inputs)
    bound = graph.engine.contexts[-1].executions[-1]["addresses"]
    assert bound == {
        "audio": inputs["audio"].data_ptr(),
        "mean": mean.data_ptr(),
        "scale": scale.data_ptr(),
    }
    # A non-contiguous input is bound as a contiguous copy, and gives the same result.
    audio = inputs["audio"]
    strided = torch.empty(audio.shape[0], audio.shape[2], audio.shape[1]).transpose(1, 2).copy_(audio)
    again = graph.run({"audio": strided})
    assert graph.engine.contexts[-1].executions[-1]["addresses"]["audio"] != strided.data_ptr()
    assert torch.equal(again[0], mean)


def test_engine_types_map_to_torch(plans, deserialized):
    trt = fakes.tensorrt
    assert {d: torch_dtype(trt, d) for d in trt.DataType if d is not trt.DataType.INT8} == {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }
    with pytest.raises(EngineFolderError, match="INT8"):
        torch_dtype(trt, trt.DataType.INT8)
    folder = plans["fp16"]
    engine = TrtGraph(folder, Manifest.read(folder), "t5", CPU).engine
    assert torch_dtype(trt, engine.get_tensor_dtype("input_ids")) == torch.int64
    engine = TrtGraph(folder, Manifest.read(folder), "dit", CPU).engine
    assert [torch_dtype(trt, engine.get_tensor_dtype(n)) for n in ("x", "t", "context", "v")] == [
        torch.float16,
        torch.float32,
        torch.float16,
        torch.float16,
    ]


def test_a_plan_of_other_types_than_the_manifest_is_refused(folder_copy, deserialized):
    _edit_manifest(folder_copy, lambda name, entry: entry.update(precision="fp16"))
    with pytest.raises(
        EngineFolderError, match=r"t5\.plan takes hidden_states as torch\.float32, the manifest"
    ):
        TrtComponents(folder_copy, CPU)


def _rebuild(folder) -> str:
    return f"`sa-export --model {Manifest.read(folder).source} --out {folder}` on this machine"


def _no_plan(folder):
    _edit_manifest(folder, lambda name, entry: entry.update(engine={}))


def _plan_missing(folder):
    for plan in folder.glob("*.plan"):
        plan.unlink()


def _plan_changed(folder):
    for plan in folder.glob("*.plan"):
        data = bytearray(plan.read_bytes())
        data[len(data) // 2] ^= 0x01  # same size: only the hash can tell
        plan.write_bytes(bytes(data))


def _engine_field(key, value):
    return lambda folder: _edit_manifest(folder, lambda name, entry: entry["engine"].update({key: value}))


@pytest.mark.parametrize(
    "break_folder, message",
    [
        (
            _no_plan,
            r"has no TensorRT plan for t5 \(exported without TensorRT or a GPU\): build the plans with",
        ),
        (_plan_missing, r"t5\.plan is missing: rebuild the plans with"),
        (_plan_changed, r"t5\.plan does not match manifest\.json .* rebuild the plans with"),
        (
            _engine_field("tensorrt", "10.8.0"),
            r"built by TensorRT 10\.8\.0, this is TensorRT 0\.0\.0\+contract-stand-in: .* rebuild the plans",
        ),
        (
            _engine_field("gpu", "NVIDIA A100-SXM4-80GB"),
            r"built for NVIDIA A100-SXM4-80GB \(compute capability 9\.0\), this device is Stand-in GPU",
        ),
        (
            _engine_field("compute_capability", "8.0"),
            r"built for Stand-in GPU \(compute capability 8\.0\), this device is Stand-in GPU \(9\.0\)",
        ),
    ],
    ids=["no-plan", "plan-missing", "plan-changed", "other-tensorrt", "other-gpu", "other-capability"],
)
def test_foreign_or_broken_plans_are_refused_before_deserializing(
    folder_copy, deserialized, break_folder, message
):
    break_folder(folder_copy)
    with pytest.raises(EngineFolderError, match=message) as error:
        TrtComponents(folder_copy, CPU)
    assert _rebuild(folder_copy) in str(error.value)
    assert deserialized == []


def _rewrite_plan(folder, name, edit) -> None:
    """Replace a plan's bytes and record them in the manifest, so only its content is wrong."""
    plan = folder / f"{name}.plan"
    plan.write_bytes(edit(plan.read_bytes()))
    record = dataclasses.asdict(file_record(plan))
    _edit_manifest(folder, lambda n, entry: entry["engine"].update(record) if n == name else None)


def test_a_plan_tensorrt_cannot_deserialize_is_refused(folder_copy, deserialized):
    _rewrite_plan(folder_copy, "t5", lambda data: b"not a plan")
    with pytest.raises(EngineFolderError, match=r"t5\.plan cannot be deserialized by TensorRT .* rebuild"):
        TrtComponents(folder_copy, CPU)
    assert len(deserialized) == 1


def test_a_plan_of_another_graph_is_refused(folder_copy, deserialized):
    _rewrite_plan(folder_copy, "t5", lambda data: (folder_copy / "vae_decoder.plan").read_bytes())
    with pytest.raises(EngineFolderError, match=r"t5\.plan has inputs \['latents'\] and outputs \['audio'\]"):
        TrtComponents(folder_copy, CPU)


def test_a_plan_whose_profile_misses_the_manifest_range_is_refused(folder_copy, deserialized):
    def shrink(data: bytes) -> bytes:
        built = json.loads(data)
        built["profiles"][0]["x"][2][2] = 32  # max frames 32 where the manifest says 64
        return json.dumps(built).encode()

    _rewrite_plan(folder_copy, "dit", shrink)
    with pytest.raises(
        EngineFolderError, match=r"dit\.plan's profile for x .* does not cover the manifest's"
    ):
        TrtComponents(folder_copy, CPU)


def test_the_cpu_is_refused_without_a_gpu_identity(plans, monkeypatch):
    _install(monkeypatch)
    with pytest.raises(ConfigError, match=r"^TensorRT runs on a CUDA GPU, not on cpu: use device 'cuda'"):
        TrtComponents(plans["fp32"], CPU)


def test_gpu_identity_reads_the_device_and_the_builder_uses_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA RTX A6000")
    assert gpu_identity(torch.device("cuda:0")) == ("NVIDIA RTX A6000", "8.6")
    assert trt_build.build_gpu() == ("NVIDIA RTX A6000", "8.6")


def test_requests_outside_the_profile_are_refused(plans, deserialized, generator):
    components = TrtComponents(plans["fp32"], CPU)
    with pytest.raises(ConfigError, match=r"dit engine takes batch 1–4 rows, this request needs 6"):
        components.check_request(batch=3, uses_cfg=True, frames=16, decode_frames=16, encodes=False)
    with pytest.raises(ConfigError, match=r"65 latent frames are outside the dit engine's profile 1–64"):
        components.check_request(batch=1, uses_cfg=True, frames=65, decode_frames=16, encodes=False)
    # Past the shape check, TensorRT's own set_input_shape refuses it, and nothing runs.
    graph = components.graphs["vae_decoder"]
    with pytest.raises(ConfigError, match=r"vae_decoder engine cannot take latents of shape \(1, 8, 65\)"):
        graph.run(_random_inputs("vae_decoder", generator, 1, 65))
    assert graph.contexts == {} and all(c.executions == [] for c in graph.engine.contexts)


def test_an_execution_tensorrt_refuses_is_an_error(plans, deserialized, generator, monkeypatch):
    folder = plans["fp32"]
    graph = TrtGraph(folder, Manifest.read(folder), "vae_decoder", CPU)
    monkeypatch.setattr(
        fakes.tensorrt.IExecutionContext, "execute_async_v3", lambda self, stream_handle: False
    )
    with pytest.raises(EngineRunError, match="could not run the vae_decoder engine"):
        graph.run(_random_inputs("vae_decoder", generator, 1, 5))


def test_without_tensorrt_the_backend_is_one_clear_line(plans, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, fake or not
    with pytest.raises(TensorRTUnavailable, match=r"pip install 'stable-audio-rt\[trt\]'") as error:
        TrtComponents(plans["fp32"], CPU)
    assert "\n" not in str(error.value)


# ---- sa-run with engines: --backend tensorrt, --backend auto


def _sa_run(capsys, *arguments):
    from stable_audio_rt.runtime import cli

    code = cli.main(["a synth pad", "--seconds", "1", "--steps", "3", "--seed", "7", *map(str, arguments)])
    return code, capsys.readouterr()


def test_sa_run_tensorrt_writes_what_onnxruntime_writes(plans, deserialized, tmp_path, capsys):
    import soundfile as sf

    common = ("--engines", plans["fp32"], "--device", "cpu", "--format", "float")
    trt_code, _ = _sa_run(capsys, "--backend", "tensorrt", *common, "-o", tmp_path / "trt.wav")
    ort_code, _ = _sa_run(capsys, "--backend", "onnxruntime", *common, "-o", tmp_path / "ort.wav")
    assert trt_code == ort_code == 0 and deserialized, "the plans must have been deserialized"
    trt_audio, ort_audio = sf.read(tmp_path / "trt.wav")[0], sf.read(tmp_path / "ort.wav")[0]
    assert np.array_equal(trt_audio, ort_audio)


def test_sa_run_tensorrt_without_tensorrt_is_one_line_and_exit_2(plans, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, out = _sa_run(capsys, "--backend", "tensorrt", "--engines", plans["fp32"], "-o", tmp_path / "x.wav")
    assert code == 2 and "Traceback" not in out.err
    assert out.err.count("\n") == 1 and out.err.startswith("sa-run: error: TensorRT is not usable here")
    assert "pip install 'stable-audio-rt[trt]'" in out.err and not (tmp_path / "x.wav").exists()


def test_sa_run_refuses_plans_built_for_another_gpu(folder_copy, deserialized, tmp_path, capsys):
    _edit_manifest(folder_copy, lambda name, entry: entry["engine"].update(gpu="NVIDIA A100-SXM4-80GB"))
    code, out = _sa_run(
        capsys, "--backend", "tensorrt", "--engines", folder_copy, "--device", "cpu", "-o", tmp_path / "x.wav"
    )
    assert code == 2 and "built for NVIDIA A100-SXM4-80GB" in out.err and "sa-export --model" in out.err
    assert not deserialized and not (tmp_path / "x.wav").exists()


def test_auto_prefers_tensorrt_then_onnxruntime_gpu_then_torch(folder_copy, deserialized, monkeypatch):
    from stable_audio_rt import trt_import
    from stable_audio_rt.runtime.backends import choice as backend_choice

    cuda = torch.device("cuda")
    monkeypatch.setattr(trt_import, "gpu_identity", lambda device: STAND_IN_GPU)
    assert backend_choice.choose_backend(None, cuda).backend == "torch"
    assert backend_choice.choose_backend(folder_copy, CPU).backend == "onnxruntime"
    chosen = backend_choice.choose_backend(folder_copy, cuda)
    assert chosen.backend == "tensorrt" and "built for this GPU" in chosen.line()

    _edit_manifest(folder_copy, lambda name, entry: entry["engine"].update(tensorrt="10.0.1"))
    monkeypatch.setattr(backend_choice, "onnxruntime_has_cuda", lambda: True)
    chosen = backend_choice.choose_backend(folder_copy, cuda)
    assert chosen.backend == "onnxruntime" and "built by TensorRT 10.0.1" in chosen.reason
    monkeypatch.setattr(backend_choice, "onnxruntime_has_cuda", lambda: False)
    chosen = backend_choice.choose_backend(folder_copy, cuda)
    manifest = Manifest.read(folder_copy)
    assert chosen.backend == "torch" and chosen.model == manifest.source
    assert "onnxruntime-gpu is not installed" in chosen.reason


def test_sa_run_auto_says_which_backend_it_runs(plans, tmp_path, capsys):
    code, out = _sa_run(capsys, "--engines", plans["fp32"], "--device", "cpu", "-o", tmp_path / "x.wav")
    assert code == 0 and "sa-run: backend onnxruntime on cpu" in out.err


def test_sa_bench_measures_the_plans(plans, deserialized, tiny_diffusers_dir, tmp_path):
    from stable_audio_rt.bench import cli as bench_cli

    argv = ["--model", str(tiny_diffusers_dir), "--backend", "tensorrt", "--engines", str(plans["fp32"]),
            "--device", "cpu", "--frames", "8", "--steps", "2", "--repeats", "1", "--warmup", "0",
            "--json", str(tmp_path / "b.json")]  # fmt: skip
    assert bench_cli.main(argv) == 0 and deserialized
    runs = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert [r["backend"] for r in runs] == ["torch", "tensorrt"]
    assert runs[1]["quality"]["latent_cosine_distance"] <= 1e-8  # fp32 vs fp32: rounding
