"""Our Oobleck VAE against diffusers' AutoencoderOobleck on the same random weights (CPU, fp32)."""

import pytest
import torch
from numerics import FP32_REL_TOL, rel_error

from stable_audio_rt.models.config import TINY
from stable_audio_rt.models.random_init import random_model
from stable_audio_rt.models.vae import bottleneck_sample


@pytest.mark.parametrize("batch,frames", [(1, 1), (2, 3), (1, 8)])
@torch.no_grad()
def test_decoder_matches_diffusers(tiny_model, tiny_reference, batch, frames, generator):
    latents = torch.randn(batch, tiny_model.config.vae.latent_dim, frames, generator=generator)
    ours = tiny_model.vae.decode(latents)
    reference = tiny_reference.vae.decode(latents).sample
    assert ours.shape == (batch, 2, frames * tiny_model.config.vae.downsampling_ratio)
    assert rel_error(ours, reference) <= FP32_REL_TOL


@pytest.mark.parametrize("batch,samples", [(1, 2048), (2, 3 * 2048), (1, 5 * 2048 + 777)])
@torch.no_grad()
def test_encoder_matches_diffusers(tiny_model, tiny_reference, batch, samples, generator):
    audio = torch.randn(batch, 2, samples, generator=generator).clamp(-1, 1)
    mean, std = tiny_model.vae.encode_moments(audio)
    posterior = tiny_reference.vae.encode(audio).latent_dist
    assert rel_error(mean, posterior.mean) <= FP32_REL_TOL
    assert rel_error(std, posterior.std) <= FP32_REL_TOL

    seed = int(torch.randint(0, 2**31, (), generator=generator))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    reference_sample = posterior.sample(generator=torch.Generator().manual_seed(seed))
    assert rel_error(bottleneck_sample(mean, std, noise), reference_sample) <= FP32_REL_TOL


@torch.no_grad()
def test_snake_stays_fp32_in_half_precision(tiny_model):
    """Snake's α/β remain fp32 parameters and a bf16 input gives the fp32 result, rounded once."""
    snake = tiny_model.vae.decoder.snake1
    assert snake.alpha.dtype == snake.beta.dtype == torch.float32
    x = torch.linspace(-3, 3, 2 * snake.alpha.numel() * 11).view(2, -1, 11).to(torch.bfloat16)
    out = snake(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, snake(x.float()).to(torch.bfloat16))


def test_a_lower_precision_model_keeps_the_fp32_values_it_keeps_in_fp32():
    """bf16 random models are the fp32 ones cast once: T5 (run in fp32) and Snake's α, β hold
    exactly the fp32 model's values, not values rounded through bf16 and back."""
    seed = torch.randint(2**31, ()).item()
    fp32 = random_model(TINY, seed=seed)
    bf16 = random_model(TINY, seed=seed, dtype=torch.bfloat16)
    snake32, snake16 = fp32.vae.decoder.snake1, bf16.vae.decoder.snake1
    assert snake16.alpha.dtype == torch.float32 and torch.equal(snake16.alpha, snake32.alpha)
    assert not torch.equal(snake32.alpha, snake32.alpha.bfloat16().float())  # rounding would show
    t5_32, t5_16 = fp32.conditioner.text_encoder, bf16.conditioner.text_encoder
    for (name, ours), reference in zip(t5_16.state_dict().items(), t5_32.state_dict().values(), strict=True):
        assert ours.dtype == torch.float32 and torch.equal(ours, reference), name
    assert bf16.vae.decoder.conv1.weight.dtype == torch.bfloat16
