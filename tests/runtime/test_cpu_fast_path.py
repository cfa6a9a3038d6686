"""The CPU's default path: `dtype="auto"` picks bf16 from what torch reports of the CPU, and
`kernels="auto"` (compiled Snake, channels-last VAE convolutions, packed linears) computes the
reference maths."""

import copy
import math

import pytest
import torch
from numerics import FP32_REL_TOL, rel_error
from reference_path import REFERENCE_PATH

from stable_audio_rt import precision
from stable_audio_rt.errors import ConfigError
from stable_audio_rt.models.config import TINY
from stable_audio_rt.models.vae import OobleckVAE
from stable_audio_rt.runtime import load
from stable_audio_rt.runtime.backends.torch_backend import (
    MERGED_KEYS_MULTIPLE,
    TorchComponents,
    TorchDiTStep,
)
from stable_audio_rt.runtime.pipeline import StableAudio

CPU = torch.device("cpu")
NO_BF16 = {name: False for name in precision.BF16_MATRIX_FEATURES} | {"cpu_name": "Old CPU", "avx2": True}


@pytest.mark.parametrize("feature", precision.BF16_MATRIX_FEATURES)
def test_auto_is_bf16_where_the_cpu_multiplies_bf16(feature):
    choice = precision.choose_dtype("auto", CPU, NO_BF16 | {feature: True, "cpu_name": "New CPU"})
    assert choice.dtype == torch.bfloat16
    assert choice.line() == f"dtype bf16: auto: New CPU multiplies bf16 in hardware ({feature})"


def test_auto_is_fp32_without_bf16_units_and_on_cuda():
    choice = precision.choose_dtype("auto", CPU, NO_BF16)
    assert choice.dtype == torch.float32
    assert "Old CPU has no bf16 matrix units" in choice.reason
    assert precision.choose_dtype("auto", torch.device("cuda"), NO_BF16 | {"avx512_bf16": True}).dtype == (
        torch.float32
    )


def test_a_named_dtype_is_kept_and_bad_ones_refused():
    assert precision.choose_dtype(torch.float16, CPU).dtype == torch.float16
    with pytest.raises(ConfigError, match="dtype must be a torch dtype or 'auto'"):
        precision.choose_dtype("fast", CPU)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        precision.choose_dtype(torch.int8, CPU)


def test_the_plan_reads_the_capability_from_torch(monkeypatch):
    for answer, dtype in ((NO_BF16, torch.float32), (NO_BF16 | {"amx_bf16": True}, torch.bfloat16)):
        monkeypatch.setattr(precision, "cpu_capabilities", lambda answer=answer: answer)
        plan = load.plan_load("tiny-random", device="cpu")
        assert (plan.options.dtype, plan.dtype_choice.dtype) == (dtype, dtype)
        assert plan.options.kernels == "compiled"
    # What this machine's torch says, whatever it is, is a bool per feature.
    monkeypatch.undo()
    answer = precision.cpu_capabilities()
    assert all(isinstance(answer.get(f, False), bool) for f in ("avx512_bf16", "amx_bf16"))


@torch.no_grad()
def test_channels_last_vae_is_the_same_maths(tiny_model):
    vae = tiny_model.vae
    fast = copy.deepcopy(vae).use_channels_last_()
    latents = torch.randn(2, vae.config.latent_dim, 7)
    audio = torch.randn(2, vae.config.audio_channels, 7 * vae.config.downsampling_ratio)
    assert rel_error(fast.decode(latents), vae.decode(latents)) <= FP32_REL_TOL
    for ours, reference in zip(fast.encode_moments(audio), vae.encode_moments(audio), strict=True):
        assert rel_error(ours, reference) <= FP32_REL_TOL


def test_channels_last_keeps_weights_and_refits_every_convolution():
    vae = OobleckVAE(TINY.vae)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    vae.use_channels_last_()
    after = vae.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name].reshape(tensor.shape), tensor), name
    assert not any(isinstance(m, torch.nn.Conv1d | torch.nn.ConvTranspose1d) for m in vae.modules())


def test_default_cpu_path_in_fp32_equals_the_reference_path():
    options = dict(seconds_total=0.5, steps=3, seed=torch.randint(2**31, ()).item())
    fast = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.float32)
    reference = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    assert fast.components.model.vae.channels_last and not reference.components.model.vae.channels_last
    ours, theirs = fast.generate("rain", **options), reference.generate("rain", **options)
    # The same maths; where oneDNN's packed fp32 product runs (faster than MKL here), its sums
    # in another order. Each stage is compared on the same input: the random decoder amplifies
    # the latents' ~1e-6 differences (1.6e-4 measured in the audio).
    assert rel_error(ours.latents, theirs.latents) <= FP32_REL_TOL
    with torch.inference_mode():
        decoded = fast.components.decode(theirs.latents)[..., : theirs.audio.shape[-1]]
    assert rel_error(decoded, theirs.audio) <= FP32_REL_TOL


@torch.no_grad()
def test_cpu_steps_attend_to_the_prompt_tokens_only(tiny_model, generator):
    """The torch backend on the CPU binds the context with its pads merged (as few weighed zero
    tokens as make a multiple of MERGED_KEYS_MULTIPLE keys): shorter K/V, contiguous, and the
    same v as the step that attends to every pad."""
    config, steps, rows = tiny_model.config, 2, 2
    step = TorchComponents(tiny_model).step_model(steps, rows)
    prompt, tokens = config.conditioning.t5_max_length, config.conditioning.context_tokens
    plain = TorchDiTStep(tiny_model.dit, steps, rows, tokens)
    assert step.merge_zero_tokens and not plain.merge_zero_tokens
    context = torch.randn(rows, tokens, config.dit.cond_token_dim, generator=generator)
    used = int(torch.randint(1, prompt - 1, (), generator=generator))
    context[:, used:prompt] = 0
    t = torch.rand(steps, generator=generator)
    global_cond = torch.randn(rows, config.dit.global_cond_dim, generator=generator)
    for denoiser in (step, plain):
        denoiser.bind(t, context, global_cond)
    k, v = step.bound_kv[0]
    kept = tokens - (prompt - used)
    merged = math.ceil((kept + 1) / MERGED_KEYS_MULTIPLE) * MERGED_KEYS_MULTIPLE
    assert k.shape[2] == v.shape[2] == min(merged, tokens)  # left whole where it would not shorten
    assert k.is_contiguous() and v.is_contiguous()
    x = torch.randn(rows, config.dit.io_channels, 5, generator=generator)
    for i in range(steps):
        assert rel_error(step(x, i), plain(x, i)) <= FP32_REL_TOL


def test_an_fp16_t5_conditions_exactly_as_the_reference_path_on_the_cpus_default_path():
    """fp16 T5 is the reference-exact choice: the fast path keeps its whole padded length there
    (over the prompts' tokens only, fp16 sums fewer keys and rounds otherwise: 1e-3 measured)."""
    fast = StableAudio.from_pretrained(
        "tiny-random", device="cpu", dtype=torch.float32, t5_dtype=torch.float16
    )
    reference = StableAudio.from_pretrained(
        "tiny-random", device="cpu", t5_dtype=torch.float16, **REFERENCE_PATH
    )
    assert not fast.components.conditioner.text_encoder.skips_padding
    words = ["rain", "soft piano in a hall", "deep bass drone with slow filter sweeps and tape hiss"]
    prompts = [words[i] for i in torch.randint(len(words), (3,)).tolist()]
    with torch.inference_mode():
        ours = fast.components.conditioner.text_encoder(*fast.components.conditioner.tokenize(prompts))
        theirs = reference.components.conditioner.text_encoder(
            *reference.components.conditioner.tokenize(prompts)
        )
    assert ours.dtype == torch.float16 and torch.equal(ours, theirs)
