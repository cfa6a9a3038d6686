"""The onnxruntime backend runs the same pipeline as the torch backend and gives the same
latents; broken, edited or foreign engine folders are refused with the fix named."""

import json
import re
import shlex
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from checkpoints import build_reference, write_diffusers_checkpoint
from reference_path import REFERENCE_PATH

from stable_audio_rt.bench.quality import cosine_distance
from stable_audio_rt.errors import ConfigError
from stable_audio_rt.export import cli as export_cli
from stable_audio_rt.export.engine_folder import ExportError, ExportSettings, export_engines
from stable_audio_rt.manifest import EngineFolderError, Manifest
from stable_audio_rt.models.config import TINY
from stable_audio_rt.models.vae import decoder_receptive_frames
from stable_audio_rt.runtime.backends.engine_backend import EngineDiTStep
from stable_audio_rt.runtime.backends.onnxruntime_backend import OrtComponents
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.region import RequestShape, allocate_request
from stable_audio_rt.runtime.sampling.guidance import CFG
from stable_audio_rt.runtime.vae_decode import plan_windows

RATE = 44100
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def torch_pipe(tiny_diffusers_dir):
    return StableAudio.from_pretrained(tiny_diffusers_dir, device="cpu", **REFERENCE_PATH)


# Latent cosine distance to the torch backend (≈ half the squared relative error): fp32 graphs
# equal it to rounding (measured 7e-13 to 4e-11: a bound of 1e-8 still fails a 0.02 % error);
# fp16 graphs through 6 chaotic random-weight steps measured 1.3e-5 to 4e-5.
BOUNDS = {"fp32": 1e-8, "fp16": 1e-3}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(
    "options",
    [
        dict(prompt=["rain", "drums"], negative_prompt="noise"),
        dict(prompt="guitar", init_audio="tone", init_noise_level=3.0),
        dict(prompt="pad", cfg_scale=1.0, guidance="apg"),
    ],
    ids=["t2a-batch-negative", "a2a", "no-cfg"],
)
def test_same_latents_as_torch(engines, torch_pipe, tiny_diffusers_dir, precision, options):
    folder, _ = engines[precision]
    ort_pipe = StableAudio.from_engines(folder, model=tiny_diffusers_dir)
    options = dict(options)
    if options.get("init_audio") == "tone":
        t = np.arange(RATE) / RATE
        options["init_audio"] = ((0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), RATE)
    prompt = options.pop("prompt")
    common = dict(seconds_total=1.0, steps=6, seed=5, noise="brownian", frames=24, vae_chunk=None)
    ours, reference = (
        ort_pipe.generate(prompt, **common, **options),
        torch_pipe.generate(prompt, **common, **options),
    )
    assert cosine_distance(ours.latents, reference.latents) <= BOUNDS[precision]
    assert ours.audio.shape == reference.audio.shape


def test_chunked_decode_through_onnxruntime(engines, torch_pipe):
    folder, _ = engines["fp32"]
    ort_pipe = StableAudio.from_engines(folder)
    common = dict(seconds_total=2.5, steps=3, seed=2, frames=60)
    chunked = ort_pipe.generate("x", vae_chunk=24, **common).audio
    full = torch_pipe.generate("x", vae_chunk=None, **common).audio
    assert ((chunked - full).abs().max() / full.abs().max()).item() <= 1e-4


def test_frames_outside_the_profile(engines):
    folder, manifest = engines["fp32"]
    pipe = StableAudio.from_engines(folder)
    # The fix is the whole command: the folder's source, itself and its options, one changed.
    quoted = (re.escape(shlex.quote(str(p))) for p in (manifest.source, folder))
    exported = "sa-export --model {} --out {} --fp32".format(*quoted)
    with pytest.raises(
        ConfigError,
        match=r"65 latent frames are outside the dit engine's profile 1–64: re-export with "
        rf"`{exported} --max-batch 2 --frames 1:16:65 --opset \d+`",
    ):
        pipe.components.check_request(batch=1, uses_cfg=True, frames=65, decode_frames=16, encodes=False)
    too_many = rf"dit engine takes batch 1–4 rows, this request needs 6: re-export with `{exported}"
    takes = r" --max-batch 3 --frames 1:16:64 --opset \d+` \(clips with CFG, 2 rows each; the folder takes 2 "
    takes += r"with CFG, 4 without\)"
    with pytest.raises(ConfigError, match=too_many + takes):
        pipe.generate(["a", "b", "c"], steps=2, seconds_total=1.0)
    # sa-serve refuses such a body before it queues (422), through the same check.
    from stable_audio_rt.serve.app import ServeSettings, create_app
    from stable_audio_rt.serve.background import BackgroundServer

    server = BackgroundServer(create_app(pipe, ServeSettings("engines")))
    try:
        body = {"input": "x", "n": 3, "num_inference_steps": 2, "audio_length": 1.0}
        refused = httpx.post(f"{server.url}/v1/audio/jobs", json=body, timeout=60)
    finally:
        server.stop()
    assert refused.status_code == 422 and "--max-batch 3 --frames 1:16:64" in refused.json()["detail"]
    # The VAE's engines are built for one clip: a batch decodes clip by clip.
    two_clips = torch.zeros(2, pipe.components.config.dit.io_channels, 16)
    with pytest.raises(ConfigError, match=r"vae_decoder engine takes batch 1–1 rows, .* one clip at a time"):
        pipe.components.decode(two_clips)


@pytest.fixture
def folder_copy(engines, tmp_path):
    return shutil.copytree(engines["fp32"][0], tmp_path / "engines")


def test_a_decode_chunk_outside_the_decoders_profile_is_named_as_the_chunk(engines, monkeypatch):
    import dataclasses

    pipe = StableAudio.from_engines(engines["fp32"][0])
    decoder = pipe.components.graphs["vae_decoder"]
    monkeypatch.setattr(decoder, "entry", dataclasses.replace(decoder.entry, frames=(24, 32, 32)))
    check = dict(batch=1, uses_cfg=False, frames=30, encodes=False)
    chunk = r"a decode chunk of 21 latent frames is outside the vae_decoder engine's profile 24–32: "
    with pytest.raises(ConfigError, match=chunk + r"give vae_chunk \(sa-run --vae-chunk\) within it"):
        pipe.components.check_request(decode_frames=21, **check)
    pipe.components.check_request(decode_frames=24, **check)
    pipe.components.check_request(decode_frames=30, **check)  # the whole window in one call
    with pytest.raises(ConfigError, match=r"20 latent frames are outside the vae_decoder engine's profile"):
        pipe.components.check_request(decode_frames=20, **(check | dict(frames=20)))
    # A stream's own pieces (no vae_chunk given) are made long enough for the decoder's profile:
    # its default pieces shorter than the profile's least frames are stretched to them.
    from stable_audio_rt.runtime import pipeline

    monkeypatch.setattr(pipeline, "DEFAULT_STREAM_CHUNK_FRAMES", 24)
    monkeypatch.setattr(decoder, "entry", dataclasses.replace(decoder.entry, frames=(40, 64, 64)))
    whole = pipe.generate("x", frames=64, seconds_total=2.0, steps=2, seed=3, vae_chunk=None).audio
    pieces = list(pipe.generate_stream("x", frames=64, seconds_total=2.0, steps=2, seed=3))
    assert len(pieces) == len(plan_windows(64, 40, decoder_receptive_frames(TINY.vae)))
    torch.testing.assert_close(torch.cat(pieces, -1), whole, rtol=0, atol=1e-4)


def test_corrupt_graph_is_refused(folder_copy):
    path = folder_copy / "t5.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineFolderError, match=r"t5\.onnx does not match manifest\.json .* rebuild"):
        StableAudio.from_engines(folder_copy)


def test_missing_external_data_is_refused(folder_copy):
    (folder_copy / "dit.onnx.data").unlink()
    with pytest.raises(EngineFolderError, match=r"dit\.onnx\.data is missing: rebuild the engines"):
        StableAudio.from_engines(folder_copy)


def test_a_missing_tokenizer_is_refused_without_asking_the_hub(folder_copy, monkeypatch):
    shutil.rmtree(folder_copy / "tokenizer")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a lookup online would be tried (and retried)
    with pytest.raises(EngineFolderError, match=r"tokenizer/\S+ is missing: rebuild the engines with"):
        StableAudio.from_engines(folder_copy)


def _same_size_edit(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["number_conditioners.safetensors", "tokenizer/tokenizer.json"])
def test_an_edited_tokenizer_or_number_conditioner_is_refused(folder_copy, name):
    """Their files are checked like the graphs': an edit would run, with other audio."""
    _same_size_edit(folder_copy / name)
    with pytest.raises(EngineFolderError, match=rf"{re.escape(name)} does not match manifest\.json"):
        StableAudio.from_engines(folder_copy)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda data: data.pop("shared_files"), r"records no number_conditioners\.safetensors or tokenizer/ "
         r"\(written by an sa-export before 2026-11-30, or edited\)"),
        (lambda data: data["shared_files"].pop("number_conditioners.safetensors"),
         r"records no number_conditioners\.safetensors \("),
        (lambda data: data["shared_files"].pop("tokenizer/tokenizer.json"), r"json is not recorded"),
        (lambda data: data["shared_files"].update({"../x": {"sha256": "0" * 64, "bytes": 1}}),
         r'shared_files\["\.\./x"\] must be a path inside the folder'),
        (lambda data: data["components"]["vae_decoder"].update(batch=[1, 1, 0]),
         r"components\.vae_decoder\.batch is \[1, 1, 0\]: not 1 ≤ min ≤ opt ≤ max"),
    ],
    ids=["records-dropped", "numbers-record-dropped", "record-dropped", "outside", "profile"],
)  # fmt: skip
def test_a_manifest_edited_around_its_shared_files_or_profiles_is_refused(folder_copy, edit, message):
    path = folder_copy / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(EngineFolderError, match=message):
        StableAudio.from_engines(folder_copy)


def test_auto_passes_over_onnxruntime_for_a_folder_it_cannot_run(folder_copy, monkeypatch):
    """A bf16 folder (or one of TensorRT plugin nodes): auto chose onnxruntime, which then refused
    it; torch runs the checkpoint it was exported from instead, as on a GPU without onnxruntime-gpu."""
    from stable_audio_rt.runtime.backends import choice as backend_choice

    path = folder_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["components"]["t5"]["precision"] = "bf16"
    path.write_text(json.dumps(data))
    source = Manifest.read(folder_copy).source
    chosen = backend_choice.choose_backend(folder_copy, CPU)
    assert chosen.backend == "torch" and chosen.model == source
    assert chosen.reason == f"not onnxruntime (t5 is bf16, which onnxruntime cannot feed); loading {source}"
    monkeypatch.setattr(backend_choice, "tensorrt_unusable", lambda *args: "TensorRT is not usable here")
    monkeypatch.setattr(backend_choice, "onnxruntime_has_cuda", lambda: True)
    chosen = backend_choice.choose_backend(folder_copy, torch.device("cuda"))
    assert chosen.backend == "torch" and chosen.model == source
    assert "not onnxruntime (t5 is bf16, which onnxruntime cannot feed)" in chosen.reason


def test_truncated_external_data_is_refused(folder_copy):
    path = folder_copy / "dit.onnx.data"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(EngineFolderError, match=r"dit\.onnx\.data does not match manifest\.json"):
        StableAudio.from_engines(folder_copy)


def test_hand_edited_manifest_is_refused(folder_copy):
    path = folder_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["components"]["dit"]["files"]["dit.onnx"]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(EngineFolderError, match=r"dit\.onnx does not match manifest\.json"):
        StableAudio.from_engines(folder_copy)
    path.write_text("{ not json")
    with pytest.raises(EngineFolderError, match=r"manifest\.json is not a valid manifest"):
        StableAudio.from_engines(folder_copy)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda dit: dit.update(precision="fp16"), r"dit\.onnx has the inputs .*'tensor\(float\)'.* but "
         r"manifest\.json records .*'tensor\(float16\)'.* \(edited\?\)"),
        (lambda dit: dit["inputs"][0].update(name="zzz"), r"config gives the dit graph other inputs"),
        (lambda dit: dit["inputs"][2]["axes"].__setitem__(1, 35), r"config gives the dit graph other inputs"),
        (lambda dit: dit.update(precision="banana"), r"components\.dit\.precision must be one of fp32"),
        (lambda dit: dit["files"].pop("dit.onnx.data"), r"dit\.onnx\.data is not recorded in manifest\.json"),
    ],
    ids=["precision", "input-name", "input-size", "unknown-precision", "record-deleted"],
)  # fmt: skip
def test_a_manifest_edited_away_from_its_graph_is_refused(folder_copy, edit, message):
    path = folder_copy / "manifest.json"
    data = json.loads(path.read_text())
    edit(data["components"]["dit"])
    path.write_text(json.dumps(data))
    with pytest.raises(EngineFolderError, match=message):
        StableAudio.from_engines(folder_copy)


def test_a_config_edited_away_from_the_graphs_is_refused(folder_copy):
    path = folder_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["config"]["conditioning"]["t5_max_length"] //= 2
    path.write_text(json.dumps(data))
    with pytest.raises(EngineFolderError, match=r"config gives the t5 graph other inputs or outputs"):
        StableAudio.from_engines(folder_copy)


def _engines_without(folder: Path, copy: Path, *names: str) -> Path:
    """A copy of `folder` as an export of its other components writes it (each component's
    export takes ~9 s, even at the tiny size)."""
    shutil.copytree(folder, copy)
    manifest = Manifest.read(copy)
    for name in names:
        for file in manifest.components.pop(name).files:
            (copy / file).unlink()
    manifest.write(copy)
    return copy


def test_missing_folder_and_missing_encoder(tmp_path, tiny_diffusers_dir, engines):
    with pytest.raises(EngineFolderError, match="does not exist: build it with `sa-export"):
        StableAudio.from_engines(tmp_path / "nothing")
    spaced = tmp_path / "my engines"  # the command it suggests pastes into a shell as it is
    with pytest.raises(EngineFolderError, match=re.escape(f"`sa-export --out '{spaced}'`")):
        StableAudio.from_engines(spaced)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(EngineFolderError, match=r"a-file is a file: give the engine folder sa-export wrote"):
        StableAudio.from_engines(tmp_path / "a-file")
    with pytest.raises(ExportError, match=r"cannot write .*a-file/sub: .*a-file is a file, not a folder"):
        export_engines(tiny_diffusers_dir, tmp_path / "a-file" / "sub", ExportSettings())
    folder = _engines_without(engines["fp32"][0], tmp_path / "no-encoder", "vae_encoder")
    pipe = StableAudio.from_engines(folder)
    # The command adds the encoder and keeps the rest: an export writes only the components given,
    # and reuses the unchanged ones only when exported with the folder's own options.
    with pytest.raises(EngineFolderError, match=r"needs the VAE encoder .*`(sa-export [^`]*)`") as refused:
        pipe.generate("x", steps=2, init_audio=(np.zeros(RATE, np.float32), RATE))
    command = shlex.split(re.search(r"`(sa-export [^`]*)`", str(refused.value)).group(1))[1:]
    args = export_cli.build_parser().parse_args(command)
    assert (args.model, args.out, args.components) == (
        str(tiny_diffusers_dir),
        folder,
        ("t5", "dit", "vae_decoder", "vae_encoder"),
    )
    reused = []
    settings = ExportSettings(args.precision, args.components, args.max_batch, args.frames, args.opset)
    export_engines(args.model, args.out, settings, on_reused=reused.append)
    assert reused == ["t5", "dit", "vae_decoder"]
    no_dit = _engines_without(engines["fp32"][0], tmp_path / "no-dit", "dit", "vae_encoder")
    for load in (lambda: StableAudio.from_engines(no_dit), lambda: StableAudio.load(engines=no_dit)):
        with pytest.raises(EngineFolderError, match=r"no-dit lacks dit, which every request runs: .*dit"):
            load()  # was a KeyError from load's plan


def test_engines_from_other_weights_are_refused(engines, tmp_path):
    other = write_diffusers_checkpoint(
        build_reference(TINY, torch.Generator().manual_seed(99)), tmp_path / "other"
    )
    with pytest.raises(
        EngineFolderError, match="was built from other weights than .* rebuild it with `sa-export"
    ):
        StableAudio.from_engines(engines["fp32"][0], model=other)


def test_components_dtype_is_the_dit_engines_and_the_plan_feeds_it(engines):
    """fp16 engines get their DiT input allocated fp16 (no cast per step); the state stays fp32."""
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        components = OrtComponents(engines[precision][0], CPU)
        assert components.dtype == dtype
        shape = RequestShape(1, 8, 2, "text", True, False, CFG, decode_chunk=None, decode_overlap=None)
        state = allocate_request(shape, components, []).state
        assert state.model_input.dtype == dtype and state.x.dtype == state.denoised.dtype == torch.float32


def test_dit_step_output_is_allocated_once_per_shape(engines, generator):
    """The step returns v in the engine's type into one tensor per input shape, overwritten by the
    next step; `run` still returns fresh float32 tensors, which callers may keep."""
    graph = OrtComponents(engines["fp16"][0], CPU).graphs["dit"]
    steps, rows, channels = 2, 2, TINY.dit.io_channels
    step = EngineDiTStep(graph, steps, rows)
    step.bind(
        torch.rand(steps, generator=generator),
        torch.randn(rows, TINY.conditioning.context_tokens, TINY.dit.cond_token_dim, generator=generator),
        torch.randn(rows, TINY.dit.global_cond_dim, generator=generator),
    )
    x = torch.randn(rows, channels, 9, generator=generator).half()
    v = step(x, 0)
    first = v.clone()
    assert v.dtype == torch.float16 and v.shape == x.shape
    assert step(x, 1) is v and not torch.equal(v, first)  # the same tensor, step 1's values
    other = step(x[..., :5].contiguous(), 0)
    assert other is not v and other.shape == (rows, channels, 5)
    assert step(x, 0) is v and torch.equal(v, first)
    feeds = {"x": x, "t": step.t[0], "context": step.context, "global_cond": step.global_cond}
    kept, fresh = graph.run(feeds)[0], graph.run(feeds)[0]
    assert kept.dtype == torch.float32 and kept.data_ptr() != fresh.data_ptr()
    assert torch.equal(kept, first.float()) and torch.equal(fresh, kept)


def test_cuda_sessions_run_on_the_pipelines_gpu(monkeypatch):
    """The CUDA provider runs on GPU 0 unless told: a pipeline on cuda:N gives it device_id N."""
    import onnxruntime as ort

    from stable_audio_rt.runtime.backends import onnxruntime_backend

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert onnxruntime_backend.provider_for(torch.device("cuda", 1)) == (
        "CUDAExecutionProvider",
        {"device_id": 1},
    )
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert onnxruntime_backend.provider_for(torch.device("cuda")) == (
        "CUDAExecutionProvider",
        {"device_id": 3},
    )
    assert onnxruntime_backend.provider_for(CPU) == "CPUExecutionProvider"


def test_a_precision_other_than_the_folders_is_refused_not_ignored(engines):
    from stable_audio_rt.runtime import load

    folder = engines["fp32"][0]
    with pytest.raises(
        ConfigError,
        match=r"--dtype fp16: the engine folder .* runs its dit in fp32, as exported; leave --dtype out "
        r"\(in Python: dtype=\)",
    ):
        load.plan_load(engines=folder, options=load.WeightOptions(dtype=torch.float16))
    with pytest.raises(
        ConfigError,
        match=r"--t5-dtype bf16: .* runs its t5 in fp32.*\(in Python: t5_dtype=\).*\(sa-export --bf16\)",
    ):
        load.plan_load(engines=folder, options=load.WeightOptions(t5_dtype=torch.bfloat16))
    # fp32 asked for by name is refused too where the folder's T5 is fp16 (it once passed as the
    # default), and nothing given is the folder's own.
    half = engines["fp16"][0]
    with pytest.raises(ConfigError, match=r"--t5-dtype fp32: .* runs its t5 in fp16"):
        load.plan_load(engines=half, options=load.WeightOptions(t5_dtype=torch.float32))
    assert load.plan_load(engines=half).dtype_choice.dtype == torch.float16
    # Its own precision, or none given, is what it runs.
    own = load.plan_load(engines=folder, options=load.WeightOptions(dtype=torch.float32))
    assert own.dtype_choice.dtype == load.plan_load(engines=folder).dtype_choice.dtype == torch.float32


def test_onnxruntime_runs_on_as_many_threads_as_torch(engines):
    """One setting (OMP_NUM_THREADS, torch.set_num_threads) sizes both backends: onnxruntime's
    own default was every physical core, whatever the process was given."""
    before = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            for graph in OrtComponents(engines["fp32"][0], CPU).graphs.values():
                assert graph.session.get_session_options().intra_op_num_threads == threads
    finally:
        torch.set_num_threads(before)
