"""Same seed, same latents as stable-audio-tools 0.0.20 itself, on a random-weight single-file
checkpoint (CPU, fp32, T5 in fp16 as the reference runs it).

Skipped unless stable-audio-tools 0.0.20 is importable; `bash scripts/test` installs it. By hand:

    .venv/bin/pip install --no-deps --ignore-requires-python stable-audio-tools==0.0.20 \\
        alias-free-torch einops-exts vector-quantize-pytorch dill importlib-resources
    .venv/bin/pip install einops PyWavelets pytorch_lightning sentencepiece
    .venv/bin/python -m pytest tests/reference -v

stable-audio-tools imports torchaudio, which cannot be installed beside torch 2.13; it only
uses it for resampling and spectrograms, so a stand-in module is installed below.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import build_reference, write_single_file_checkpoint
from numerics import rel_error
from reference_path import REFERENCE_PATH

from stable_audio_rt.models.config import TINY, StableAudioConfig
from stable_audio_rt.runtime.audio_io import to_model_audio
from stable_audio_rt.runtime.pipeline import StableAudio

# The reference's T5 conditioner sizes itself from the model name: "t5-small" is 512 wide, so
# the test model is 512 wide in its conditioning, with GQA 16:8 in its two DiT blocks.
REFERENCE_T5_NAME = "t5-small"
SAT_CONFIG = dataclasses.replace(
    TINY,
    dit=dataclasses.replace(TINY.dit, embed_dim=1024, num_heads=16, cond_token_dim=512, global_cond_dim=1024),
    conditioning=dataclasses.replace(TINY.conditioning, cond_dim=512),
)
FRAMES = 16
# fp32 on the CPU with T5 in fp16 on both sides: the remaining differences are summation order
# (fused vs split projections, guidance through v and back in the reference); 1e-4 relative is
# the bound, measured 4e-6 to 8e-6 (T2A, negative prompt, APG, A2A).
LATENT_REL_TOL = 1e-4


def _import_reference():
    import transformers  # noqa: F401  (transformers probes for torchaudio; import it first)

    try:
        import torchaudio  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("torchaudio")
        transforms = types.ModuleType("torchaudio.transforms")

        def placeholder(name):
            # Dunder lookups (inspect reads __file__ of every module) must fail as on a module.
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None})

        transforms.__getattr__ = placeholder
        stand_in.transforms = transforms
        stand_in.__getattr__ = placeholder
        sys.modules.setdefault("torchaudio", stand_in)
        sys.modules.setdefault("torchaudio.transforms", transforms)
    try:
        from stable_audio_tools.inference.generation import generate_diffusion_cond
        from stable_audio_tools.models.factory import create_model_from_config
    except ImportError as e:
        pytest.skip(f"stable-audio-tools 0.0.20 is not importable ({e}); see this file's docstring")
    return create_model_from_config, generate_diffusion_cond


def write_reference_checkpoint(config: StableAudioConfig, seed: int, folder: Path) -> dict:
    """`write_single_file_checkpoint` of `config` with random weights from `seed`, its T5 named
    for the reference (REFERENCE_T5_NAME, read from the checkpoint's text_encoder/); returns
    the model_config.json written."""
    reference = build_reference(config, torch.Generator().manual_seed(seed))
    write_single_file_checkpoint(reference, config, folder)
    # stable-audio-tools loads T5 and its tokenizer from one folder (`model_path`).
    reference.tokenizer.save_pretrained(folder / "text_encoder")
    model_config = json.loads((folder / "model_config.json").read_text())
    prompt_config = model_config["model"]["conditioning"]["configs"][0]["config"]
    prompt_config.update(t5_model_name=REFERENCE_T5_NAME, model_path=str(folder / "text_encoder"))
    (folder / "model_config.json").write_text(json.dumps(model_config))
    return model_config


def load_reference_model(folder: Path, model_config: dict) -> torch.nn.Module:
    """stable-audio-tools' model built from `model_config`, the checkpoint's weights loaded strictly:
    every key of the file is one of its parameters, and every parameter is in the file."""
    create_model_from_config, _ = _import_reference()
    from safetensors.torch import load_file

    model = create_model_from_config(model_config)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sat")
    return folder, write_reference_checkpoint(SAT_CONFIG, 1234, folder)


@pytest.fixture(scope="module")
def reference_model(checkpoint):
    return load_reference_model(*checkpoint), _import_reference()[1]


@pytest.fixture(scope="module")
def ours(checkpoint):
    return StableAudio.from_pretrained(checkpoint[0], device="cpu", t5_dtype=torch.float16, **REFERENCE_PATH)


CASES = {
    "t2a": dict(prompts=["rain on a tin roof", "warm synth pad"], negative=None, init=False, apg=0.0),
    "t2a-negative": dict(
        prompts=["rain on a tin roof", "drum loop"], negative="bird song", init=False, apg=0.0
    ),
    "t2a-apg": dict(prompts=["solo acoustic guitar", "deep sub bass"], negative=None, init=False, apg=1.0),
    "a2a": dict(prompts=["ambient drone", "field recording"], negative=None, init=True, apg=0.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_latents_match_stable_audio_tools(case, reference_model, ours, generator):
    model, generate = reference_model
    spec = CASES[case]
    seed = int(torch.randint(0, 2**31, (), generator=generator))
    start, total, steps, cfg_scale = 0.2, 0.7, 8, 6.0
    init = (0.3 * torch.randn(2, FRAMES * 2048, generator=generator)).clamp(-1, 1) if spec["init"] else None

    def conditioning(prompt):
        return {"prompt": prompt, "seconds_start": start, "seconds_total": total}

    with torch.random.fork_rng():
        expected = generate(
            model,
            steps=steps,
            cfg_scale=cfg_scale,
            conditioning=[conditioning(p) for p in spec["prompts"]],
            negative_conditioning=[conditioning(spec["negative"])] * 2 if spec["negative"] else None,
            batch_size=2,
            sample_size=FRAMES * 2048,
            seed=seed,
            device="cpu",
            init_audio=(44100, init) if init is not None else None,
            init_noise_level=3.0,
            return_latents=True,
            apg_scale=spec["apg"],
            sampler_type="dpmpp-3m-sde",
            sigma_min=0.3,
            sigma_max=500.0,
        )
    result = ours.generate(
        spec["prompts"],
        negative_prompt=spec["negative"],
        seconds_start=start,
        seconds_total=total,
        steps=steps,
        cfg_scale=cfg_scale,
        seed=seed,
        sample_size=FRAMES * 2048,
        noise="brownian",
        guidance="apg",
        apg_scale=spec["apg"],
        init_audio=(init.numpy(), 44100) if init is not None else None,
        init_noise_level=3.0 if init is not None else None,  # audio-to-audio's alone
    )
    assert np.isfinite(result.latents.numpy()).all()
    assert rel_error(result.latents, expected.float()) <= LATENT_REL_TOL


@pytest.mark.parametrize("given,model", [(1, 2), (2, 2), (5, 2), (1, 1), (2, 1), (5, 1)])
def test_a_reference_clip_takes_the_models_channels_as_stable_audio_tools_does(given, model):
    """For a stereo model mono duplicated and more than two cut to the first two, for a mono one
    every channel averaged: `set_audio_channels`."""
    _import_reference()
    from stable_audio_tools.inference.utils import set_audio_channels

    rate = 44100
    clip = np.random.default_rng().uniform(-1, 1, (given, rate)).astype(np.float32)
    ours = to_model_audio(clip, rate, rate, rate, channels=model)
    theirs = set_audio_channels(torch.from_numpy(clip)[None], model)[0]
    # numpy and torch sum a mean of several channels in different orders: a few float32 steps of 1.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
