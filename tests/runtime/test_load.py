"""StableAudio.load's one entry point (runtime/load.py, models/source.py): every model name
each CLI accepts, the config read before any weights, the backend and kernel checks, and the
fingerprint that ties an engine folder to a random model's weights."""

import pytest
import torch
from reference_path import REFERENCE_PATH

from stable_audio_rt.bench import cli as bench_cli
from stable_audio_rt.errors import ConfigError
from stable_audio_rt.export import cli as export_cli
from stable_audio_rt.models import source
from stable_audio_rt.models.random_init import RANDOM_MODELS
from stable_audio_rt.runtime import cli as run_cli
from stable_audio_rt.runtime import load
from stable_audio_rt.runtime.pipeline import StableAudio


@pytest.mark.parametrize("parser", [run_cli.build_parser, bench_cli.build_parser, export_cli.build_parser])
def test_every_cli_teaches_the_same_model_names(parser):
    text = "".join(parser().format_help().split())  # argparse wraps lines at hyphens too
    assert all(name in text for name in RANDOM_MODELS) and "Hubrepoid,localfolder" in text


@pytest.mark.parametrize("name", list(RANDOM_MODELS))
def test_a_random_model_is_planned_from_its_name_alone(name, monkeypatch):
    monkeypatch.setattr(source, "random_model", lambda *a, **k: pytest.fail("no weights before the load"))
    plan = load.plan_load(name, device="cpu")
    assert plan.config is RANDOM_MODELS[name] and plan.model == name
    assert (plan.choice.backend, plan.device, plan.options.kernels) == (
        "torch",
        torch.device("cpu"),
        "compiled",
    )


def test_load_gives_the_same_model_as_from_pretrained():
    loaded = StableAudio.load("tiny-random", device="cpu", cuda_graph=False, **REFERENCE_PATH)
    named = StableAudio.from_pretrained("tiny-random", device="cpu", cuda_graph=False, **REFERENCE_PATH)
    options = dict(steps=3, seed=7, seconds_total=0.5)
    assert torch.equal(loaded.generate("x", **options).audio, named.generate("x", **options).audio)


@pytest.mark.parametrize(
    "options,message",
    [
        (
            dict(backend="onnxruntime"),
            r"--backend onnxruntime runs an engine folder: give --engines DIR \(in Python",
        ),
        (
            dict(backend="torch", engines="."),
            r"--engines is for --backend onnxruntime, tensorrt or auto, not torch",
        ),
        (dict(backend="bogus", engines="."), r"unknown backend 'bogus'"),
        (
            dict(engines="no/such/folder", options=load.WeightOptions(kernels="triton")),
            r"--kernels triton applies",
        ),
        (
            dict(engines="no/such/folder", options=load.WeightOptions(kernels="compiled")),
            r"--kernels compiled applies to --backend torch; exported engines carry their own",
        ),
        (
            dict(engines="no/such/folder", options=load.WeightOptions(layout="diffusers")),
            r"layout 'diffusers' names a checkpoint's layout for the torch backend",
        ),
        (dict(options=load.WeightOptions(layout="single-file")), r"unknown layout 'single-file': use one of"),
        (
            dict(options=load.WeightOptions(t5_dtype=torch.int8)),
            r"must be one of .*, got torch.int8",
        ),
        (dict(options=load.WeightOptions(t5_dtype="fp16")), r"t5_dtype must be one of .*, got 'fp16'"),
        (
            # The test suite runs Triton's interpreter (conftest): triton kernels resolve on the CPU.
            dict(device="cpu", options=load.WeightOptions(dtype=torch.bfloat16, kernels="triton")),
            r"kernels='triton' on the CPU runs in Triton's interpreter, whose bf16 matrix products",
        ),
        (dict(model=""), r"the model name is empty: give a Hub repo id"),
        (dict(model="  "), r"the model name is empty"),
        (dict(device="tpu"), r"device tpu is not supported|unknown device"),
        (dict(device="cpu:1"), r"device cpu:1: the CPU has no index .*; use cpu"),
    ],
)
def test_bad_load_arguments_are_refused_before_any_weights(options, message, monkeypatch):
    monkeypatch.setattr(source, "random_model", lambda *a, **k: pytest.fail("no weights"))
    model = options.pop("model", "tiny-random")
    with pytest.raises(ConfigError, match=message):
        load.plan_load(model, **options)


def test_a_cuda_device_past_the_machines_is_refused_naming_those_it_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert load.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(
        ConfigError, match=r"device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"
    ):
        load.resolve_device("cuda:2")


def test_a_random_models_fingerprint_is_its_weights():
    first = source.fingerprint("tiny-random")
    assert first == source.fingerprint("tiny-random", source.load_model("tiny-random"))
    assert first != source.fingerprint("tiny-random-small")
    assert len(first) == 64 and int(first, 16) >= 0
    other = source.load_model("tiny-random")
    with torch.no_grad():
        next(other.dit.parameters()).view(-1)[0] += 1e-3  # one weight changed
    assert source.fingerprint("tiny-random", other) != first
