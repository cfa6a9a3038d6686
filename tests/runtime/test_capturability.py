"""The whole executed region of a request (conditioning, every step with guidance, the sampler
update and the RePaint blend, the VAE decode) is capturable as one CUDA graph: proven on the CPU
at the dispatch level, after a warm-up, for every mode and both samplers (tiny random models),
and with what CUDA runs by default: the Triton kernels (interpreted here) and an fp16 T5.

What capture needs and the watch checks (tests/runtime/capture_watch.py): no host sync, one
device, the request's inputs only read, no tensor created inside the region outliving it (the
state lives in buffers allocated before it), and one op sequence for every step and for two
requests of one shape with different prompts and seeds. Each check is broken on purpose below.
"""

import numpy as np
import pytest
import torch
from reference_path import REFERENCE_PATH
from runtime.capture_watch import RegionWatch

from stable_audio_rt.runtime import region
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request

RATE = 44100


@pytest.fixture(scope="module")
def pipes():
    pipes = {
        name: StableAudio.from_pretrained(name, device="cpu", **REFERENCE_PATH)
        for name in ("tiny-random", "tiny-random-small")
    }
    # What runs on CUDA by default, fp32 (auto there) and the Triton kernels (here under the
    # interpreter, which refuses bf16), with an fp16 T5 as stable-audio-tools casts it.
    pipes["tiny-random, triton, fp16 T5"] = StableAudio.from_pretrained(
        "tiny-random", device="cpu", dtype=torch.float32, kernels="triton", t5_dtype=torch.float16
    )
    for pipe in pipes.values():
        # As on CUDA: the whole context, not the CPU's prompt-length K/V (a shape per prompt).
        pipe.components.merge_zero_tokens = False
    return pipes


def _audio(generator, seconds=1.0):
    return (0.3 * torch.randn(2, int(seconds * RATE), generator=generator)).numpy()


def _cases(generator):
    keep = np.ones(RATE)
    keep[RATE // 4 : RATE // 2] = 0
    return {
        "text, cfg, negative prompt": ("tiny-random", dict(negative_prompt="noise", num_outputs=2)),
        "text, no cfg": ("tiny-random", dict(cfg_scale=1.0)),
        "audio-to-audio": ("tiny-random", dict(init_audio=(_audio(generator), RATE), init_noise_level=3.0)),
        "inpainting, apg with threshold": (
            "tiny-random",
            dict(
                inpaint_audio=(_audio(generator), RATE),
                inpaint_mask=keep,
                guidance="apg",
                apg_scale=0.5,
                cfg_norm_threshold=1.0,
            ),
        ),
        "rf pingpong (Small), cfg": ("tiny-random-small", dict(cfg_scale=3.0)),
        # A shorter window: the interpreted Snake kernel's decode took 26 s a run at 24 frames.
        "triton kernels, fp16 T5": (
            "tiny-random, triton, fp16 T5",
            dict(negative_prompt="noise", seconds_total=0.3, frames=8),
        ),
    }


CASE_NAMES = list(_cases(torch.Generator()).keys())


def _resolved(pipe, prompt, seed, options):
    """A one-second clip in a 24-frame window unless the case says; 4 steps (Small: its default 8)."""
    steps = {} if pipe.config.objective == "rf_denoiser" else {"steps": 4}
    request = GenerationRequest(
        (prompt,), seed=seed, **{"seconds_total": 1.0, "frames": 24, **steps, **options}
    )
    return resolve_request(request, pipe.config)


def _watch(pipe, buffers) -> RegionWatch:
    watch = RegionWatch(pipe.device, buffers.buffers(), buffers.input_buffers())
    with watch:
        region.sample(buffers, pipe.components, watch.stage, watch.mark_step)
        region.decode(buffers, pipe.components, watch.stage)
    return watch


def _problems(watch: RegionWatch) -> dict[str, list]:
    steps = watch.steps()
    return {
        "syncs": watch.syncs,
        "foreign": watch.foreign,
        "input_writes": watch.input_writes,
        "outliving": watch.outliving(),
        "steps_differ": [i for i, ops in enumerate(steps) if ops != steps[0]],
    }


@pytest.mark.parametrize("case", CASE_NAMES)
def test_region_is_capturable_and_replays_with_new_inputs(pipes, generator, case):
    name, options = _cases(generator)[case]
    pipe = pipes[name]
    seeds = torch.randint(0, 2**31, (2,), generator=generator).tolist()
    first = _resolved(pipe, "warm analog pad", seeds[0], options)
    buffers = pipe.prepare(first)
    region.run_region(buffers, pipe.components)  # the warm-up before capture
    storages = [t.untyped_storage().data_ptr() for t in buffers.buffers()]

    watches = []
    for prompt, seed in (("warm analog pad", seeds[0]), ("rain on a tin roof", seeds[1])):
        resolved = _resolved(pipe, prompt, seed, options)
        pipe.write_inputs(buffers, resolved)  # what a replay does with the next request
        watch = _watch(pipe, buffers)
        assert _problems(watch) == {k: [] for k in _problems(watch)}
        assert len(watch.steps()) == buffers.state.steps
        assert {"aten.mm.default", "aten.addmm.default"} & set(watch.ops), "the DiT ran in the watch"
        watches.append(watch)
    assert watches[0].ops == watches[1].ops, "two requests of one shape must run one op sequence"
    # The reused buffers give what a fresh eager request gives.
    fresh = pipe.run_resolved(resolved)
    clip = resolved.clip(pipe.config.sample_rate)
    assert torch.equal(buffers.state.x, fresh.latents)
    assert torch.equal(buffers.audio[:, :, clip], fresh.audio)
    assert [t.untyped_storage().data_ptr() for t in buffers.buffers()] == storages


def test_a_non_finite_value_left_by_one_request_does_not_reach_the_next(pipes, generator):
    """A replay reuses the last request's buffers; the history slots the first steps weigh by zero
    must not carry its NaN or inf (an fp16 overflow, say) into the next request."""
    pipe = pipes["tiny-random"]
    seeds = torch.randint(0, 2**31, (2,), generator=generator).tolist()
    buffers = pipe.prepare(_resolved(pipe, "warm analog pad", seeds[0], {}))
    region.run_region(buffers, pipe.components)
    buffers.state.denoised[0].fill_(float("nan"))
    buffers.state.denoised[1:].fill_(float("inf"))
    resolved = _resolved(pipe, "rain on a tin roof", seeds[1], {})
    pipe.write_inputs(buffers, resolved)
    region.run_region(buffers, pipe.components)
    assert torch.equal(buffers.state.x, pipe.run_resolved(resolved).latents)


def _sync_in_guidance(monkeypatch):
    guide = region.sampler_step.__globals__["guide"]

    def guide_with_item(d_cond, d_uncond, scale, guidance):
        float(scale)  # a host read: .item()
        return guide(d_cond, d_uncond, scale, guidance)

    monkeypatch.setitem(region.sampler_step.__globals__, "guide", guide_with_item)


def _wrap_step(monkeypatch, extra):
    step = region.sampler_step

    def wrapped(state, i):
        step(state, i)
        extra(state, i)

    monkeypatch.setattr(region, "sampler_step", wrapped)


def _cache_a_tensor(state, i):
    state.last_update = state.x * 1  # state kept in a tensor the region created


def _write_an_input(state, i):
    state.step_noise[i].mul_(1.0)


def _extra_op_on_last_step(state, i):
    if i == state.steps - 1:
        state.x.add_(0.0)


@pytest.mark.parametrize(
    "breakage,check",
    [
        (_sync_in_guidance, "syncs"),
        (lambda m: _wrap_step(m, _cache_a_tensor), "outliving"),
        (lambda m: _wrap_step(m, _write_an_input), "input_writes"),
        (lambda m: _wrap_step(m, _extra_op_on_last_step), "steps_differ"),
    ],
    ids=["item in a step", "tensor outlives the region", "input written", "last step differs"],
)
def test_each_check_catches_its_breakage(pipes, monkeypatch, breakage, check):
    pipe = pipes["tiny-random"]
    buffers = pipe.prepare(_resolved(pipe, "x", 3, {}))
    region.run_region(buffers, pipe.components)
    breakage(monkeypatch)
    problems = _problems(_watch(pipe, buffers))
    assert problems[check], f"the {check} check missed its breakage"
    assert [k for k, v in problems.items() if v] == [check]
