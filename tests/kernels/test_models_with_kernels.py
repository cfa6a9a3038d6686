"""The models and the pipeline with the Triton kernels switched on equal them with the torch
maths (tiny config, CPU, Triton's interpreter)."""

import pytest
import torch
from numerics import rel_error

from stable_audio_rt import StableAudio
from stable_audio_rt.errors import ConfigError
from stable_audio_rt.kernels.switch import CompiledSnake, resolve_kernels, use_kernels
from stable_audio_rt.models.random_init import TINY_RANDOM, random_model
from stable_audio_rt.models.vae import snake_eager

# fp32 throughout; the kernels differ from SDPA/eager only in summation order.
FP32_TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return random_model(seed=3)


def _torch_then(model, kernels, run):
    """`run()` with the torch maths, then with `kernels` (the model is left on the torch maths)."""
    use_kernels("torch", model.dit, model.vae)
    reference = run()
    use_kernels(kernels, model.dit, model.vae)
    try:
        return reference, run()
    finally:
        use_kernels("torch", model.dit, model.vae)


@torch.no_grad()
@pytest.mark.parametrize("batch,frames", [(1, 1), (2, 13), (2, 64)])
def test_dit_with_kernels_equals_dit_with_sdpa(model, batch, frames, generator):
    dit, cond = model.config.dit, model.config.conditioning
    x = torch.randn(batch, dit.io_channels, frames, generator=generator)
    t = torch.rand(batch, generator=generator)
    context = torch.randn(batch, cond.context_tokens, dit.cond_token_dim, generator=generator)
    global_cond = torch.randn(batch, dit.global_cond_dim, generator=generator)
    reference, ours = _torch_then(model, "triton", lambda: model.dit(x, t, context, global_cond))
    assert rel_error(ours, reference) <= FP32_TOL


@torch.no_grad()
def test_vae_decode_with_snake_kernel_equals_eager(model, generator):
    latents = torch.randn(1, model.config.vae.latent_dim, 3, generator=generator)
    reference, ours = _torch_then(model, "triton", lambda: model.vae.decode(latents))
    assert rel_error(ours, reference) <= FP32_TOL


def test_pipeline_with_kernels_equals_torch_maths():
    options = dict(seconds_total=0.1, steps=3, seed=11, frames=4)
    pipes = {
        kernels: StableAudio.from_pretrained(TINY_RANDOM, device="cpu", dtype=torch.float32, kernels=kernels)
        for kernels in ("torch", "triton")
    }
    runs = {kernels: pipe.generate("a", **options) for kernels, pipe in pipes.items()}
    assert rel_error(runs["triton"].latents, runs["torch"].latents) <= FP32_TOL
    # Each decoder on the same latents: the random-weight VAE multiplies the latents' ~5e-6
    # differences by ~20 (1e-4 seen), which would measure its gain, not the kernels.
    with torch.inference_mode():
        decoded = pipes["torch"].components.decode(runs["triton"].latents)
    assert rel_error(runs["triton"].audio, decoded[..., : runs["triton"].audio.shape[-1]]) <= FP32_TOL


def test_auto_takes_the_compiled_snake_on_the_cpu():
    assert resolve_kernels("auto", torch.device("cpu")) == "compiled"
    assert resolve_kernels("triton", torch.device("cpu")) == "triton"  # the interpreter is on here
    with pytest.raises(ConfigError, match="kernels must be one of"):
        resolve_kernels("fast", torch.device("cpu"))


@torch.no_grad()
def test_vae_decode_with_compiled_snake_equals_eager(model, generator):
    latents = torch.randn(1, model.config.vae.latent_dim, 3, generator=generator)
    reference, ours = _torch_then(model, "compiled", lambda: model.vae.decode(latents))
    # Inductor's vectorised sin may differ from eager's in the last ulp.
    assert rel_error(ours, reference) <= FP32_TOL


def test_compiled_snake_falls_back_to_eager_with_a_warning(generator):
    snake = CompiledSnake()

    def broken(*args):
        raise RuntimeError("no C compiler")

    snake._compiled = {False: broken, True: broken}
    x, alpha, inv_beta = torch.randn(1, 3, 50, generator=generator), torch.rand(3) + 0.5, torch.rand(3) + 0.5
    with pytest.warns(UserWarning, match="no C compiler"):
        out = snake(x, alpha, inv_beta)
    expected = snake_eager(x, alpha, inv_beta)
    assert torch.equal(out, expected)
    target = x.clone()
    assert snake.in_place(target, alpha, inv_beta) is target and torch.equal(target, expected)
