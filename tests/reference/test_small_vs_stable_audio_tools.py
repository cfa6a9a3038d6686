"""Stable Audio Open Small's path against stable-audio-tools 0.0.20 itself: its own DiT with
qk-norm and projected context tokens, rf_denoiser, the pingpong sampler on its LogSNR-shifted
schedule, seconds_total-only conditioning. The reference model is built by stable-audio-tools
from a Small-shaped config and filled with seeded random weights; its own state_dict is the
checkpoint we load, so our key mapping is checked against its real parameter names. A second
checkpoint comes from the tests' single-file writer (tests/checkpoints.py), which
stable-audio-tools must load strictly, as the 1.0 tests' checkpoint.

Skipped unless stable-audio-tools 0.0.20 is importable (`bash scripts/test` installs it).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from checkpoints import sat_model_config
from numerics import rel_error
from reference_path import REFERENCE_PATH
from safetensors.torch import save_file
from seeding import SEED
from test_vs_stable_audio_tools import (
    REFERENCE_T5_NAME,
    _import_reference,
    load_reference_model,
    write_reference_checkpoint,
)

from stable_audio_rt.models.config import TINY_SMALL
from stable_audio_rt.models.random_init import random_model, randomize_
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.sampling.pingpong import LOGSNR_END, LOGSNR_START, logsnr_shifted_times

# Small's structure (TINY_SMALL) with 512-wide conditioning, because the reference sizes its T5
# conditioner from the name "t5-small".
SMALL_CONFIG = dataclasses.replace(
    TINY_SMALL,
    dit=dataclasses.replace(
        TINY_SMALL.dit, embed_dim=512, num_heads=8, cond_token_dim=512, global_cond_dim=512
    ),
    conditioning=dataclasses.replace(TINY_SMALL.conditioning, cond_dim=512),
)
FRAMES = 16
# fp32, T5 in fp16 on both sides; without CFG the sampler arithmetic is the reference's own, so
# only the DiT's summation order differs. With CFG the guidance runs on D rather than v.
# The 1.0 tests' bound; measured 4e-6 with CFG and a negative prompt on the written checkpoint.
LATENT_REL_TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    create_model_from_config, generate = _import_reference()
    folder = tmp_path_factory.mktemp("sat_small")
    # T5 and tokenizer: a random small T5 of the conditioning width, where both sides read it.
    text = random_model(SMALL_CONFIG, seed=5).conditioner
    text.text_encoder.t5.save_pretrained(folder / "text_encoder")
    # The reference reads its tokenizer from the T5 folder (model_path); we read tokenizer/.
    for sub in ("text_encoder", "tokenizer"):
        text.tokenizer.save_pretrained(folder / sub)
    config = sat_model_config(SMALL_CONFIG)
    config["model"]["conditioning"]["configs"][0]["config"].update(
        t5_model_name=REFERENCE_T5_NAME, model_path=str(folder / "text_encoder")
    )
    (folder / "model_config.json").write_text(json.dumps(config))
    model = create_model_from_config(config)
    randomize_(model.model, torch.Generator().manual_seed(11))
    randomize_(model.pretransform, torch.Generator().manual_seed(12))
    randomize_(model.conditioner, torch.Generator().manual_seed(13))
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("conditioner.conditioners.prompt")
    }
    save_file(state, folder / "model.safetensors")
    return folder, model.eval(), generate


@pytest.fixture(scope="module")
def ours(checkpoint):
    return StableAudio.from_pretrained(checkpoint[0], device="cpu", t5_dtype=torch.float16, **REFERENCE_PATH)


def test_config_parses_to_small_structure(ours):
    conditioning = dataclasses.replace(SMALL_CONFIG.conditioning, t5_model_name=REFERENCE_T5_NAME)
    assert ours.config == dataclasses.replace(SMALL_CONFIG, conditioning=conditioning)


CASES = {
    "t2a": dict(cfg_scale=1.0, negative=None, init=False, apg=0.0),
    "t2a-cfg-negative": dict(cfg_scale=5.0, negative="bird song", init=False, apg=0.0),
    "t2a-apg": dict(cfg_scale=5.0, negative=None, init=False, apg=1.0),
    "a2a": dict(cfg_scale=1.0, negative=None, init=True, apg=0.0),
}


def _assert_latents_match(case, model, generate, ours, generator):
    """`case` of CASES run by stable-audio-tools' `model` and by `ours` from the same seed."""
    spec = CASES[case]
    seed = int(torch.randint(0, 2**31, (), generator=generator))
    prompts, total, steps, level = ["rain on a tin roof", "warm synth pad"], 0.6, 8, 0.7
    init = (0.3 * torch.randn(2, FRAMES * 2048, generator=generator)).clamp(-1, 1) if spec["init"] else None
    with torch.random.fork_rng():
        expected = generate(
            model,
            steps=steps,
            cfg_scale=spec["cfg_scale"],
            conditioning=[{"prompt": p, "seconds_total": total} for p in prompts],
            negative_conditioning=[{"prompt": spec["negative"], "seconds_total": total}] * 2
            if spec["negative"]
            else None,
            batch_size=2,
            sample_size=FRAMES * 2048,
            seed=seed,
            device="cpu",
            init_audio=(44100, init) if init is not None else None,
            init_noise_level=level,
            return_latents=True,
            sampler_type="pingpong",
            apg_scale=spec["apg"],
        )
    result = ours.generate(
        prompts,
        negative_prompt=spec["negative"],
        seconds_total=total,
        steps=steps,
        cfg_scale=spec["cfg_scale"],
        seed=seed,
        sample_size=FRAMES * 2048,
        init_audio=(init.numpy(), 44100) if init is not None else None,
        init_noise_level=level if init is not None else None,  # audio-to-audio's alone
        guidance="apg",
        apg_scale=spec["apg"],
    )
    assert np.isfinite(result.latents.numpy()).all()
    assert rel_error(result.latents, expected.float()) <= LATENT_REL_TOL


@pytest.mark.parametrize("case", list(CASES))
def test_latents_match_stable_audio_tools(case, checkpoint, ours, generator):
    _, model, generate = checkpoint
    _assert_latents_match(case, model, generate, ours, generator)


@pytest.fixture(scope="module")
def written_small(tmp_path_factory):
    """Small written by the tests' own single-file writer, with fresh random weights each run,
    and stable-audio-tools' model built from its model_config.json, the weights loaded strictly."""
    folder = tmp_path_factory.mktemp("written_small")
    reference = load_reference_model(folder, write_reference_checkpoint(SMALL_CONFIG, SEED + 2, folder))
    return folder, reference


def test_written_single_file_small_matches_stable_audio_tools(written_small, generator):
    """The checkpoint above, loaded by us, against stable-audio-tools on the same weights: its
    qk-norm names and seconds_total-only conditioner are ones both sides read. With CFG and a
    negative prompt, so every DiT weight is used on both passes."""
    folder, model = written_small
    ours = StableAudio.from_pretrained(folder, device="cpu", t5_dtype=torch.float16, **REFERENCE_PATH)
    assert ours.config.dit.qk_norm and [n.id for n in ours.config.conditioning.numbers] == ["seconds_total"]
    _assert_latents_match("t2a-cfg-negative", model, _import_reference()[1], ours, generator)


def test_exported_small_runs_in_onnxruntime_like_torch(checkpoint, tmp_path):
    # The same checkpoint through sa-export's ONNX graphs and the onnxruntime backend, against
    # the torch backend with T5 in fp32 as the export has it.
    from stable_audio_rt.export.engine_folder import ExportSettings, export_engines

    folder = checkpoint[0]
    export_engines(
        folder, tmp_path / "engines", ExportSettings("fp32", max_batch=2, frames=(1, FRAMES, FRAMES))
    )
    engines = StableAudio.from_engines(tmp_path / "engines", backend="onnxruntime", model=folder)
    options = dict(
        seconds_total=0.6, seed=3, sample_size=FRAMES * 2048, cfg_scale=4.0, negative_prompt="hiss"
    )
    from_graphs = engines.generate(["rain on a tin roof", "warm synth pad"], **options)
    torch_backend = StableAudio.from_pretrained(folder, device="cpu", **REFERENCE_PATH)
    from_torch = torch_backend.generate(["rain on a tin roof", "warm synth pad"], **options)
    assert rel_error(from_graphs.latents, from_torch.latents) <= LATENT_REL_TOL


# Fresh each run from the run's seed (replayed by SA_TEST_SEED).
RANDOM_STEPS = int(np.random.default_rng(SEED).integers(1, 200))
RANDOM_T_MAX = float(np.random.default_rng(SEED + 1).uniform(0.05, 1.0))


@pytest.mark.parametrize("steps", [8, RANDOM_STEPS])
@pytest.mark.parametrize("t_max", [1.0, 0.7, RANDOM_T_MAX])
def test_the_rf_times_equal_the_references_bit_for_bit(steps, t_max):
    """Small's schedule (its default run, an audio-to-audio one, a random one) against
    stable-audio-tools' build_schedule with the LogSNRShift Small's config names."""
    _import_reference()
    from stable_audio_tools.inference.sampling import LogSNRShift, build_schedule

    shift = LogSNRShift(rate=0.0, anchor_logsnr=LOGSNR_START, logsnr_end=LOGSNR_END)  # rate 0: any length
    reference = build_schedule(steps, t_max, dist_shift=shift, fallback_seq_len=SMALL_CONFIG.latent_frames)
    assert logsnr_shifted_times(steps, t_max).tolist() == reference.tolist()
