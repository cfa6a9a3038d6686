"""Loading in a reduced precision: every tensor lands in the requested dtype, except Snake's
α/β which stay fp32 (and T5's fp16 overflow guard), and the values are the fp32 load's
rounded once."""

import pytest
import torch

from stable_audio_rt.models.loading import load_stable_audio


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_load_in_half_precision(tiny_diffusers_dir, dtype):
    full = load_stable_audio(tiny_diffusers_dir)
    half = load_stable_audio(tiny_diffusers_dir, dtype=dtype)
    for name in ("dit", "vae"):
        full_state = getattr(full, name).state_dict()
        for key, value in getattr(half, name).state_dict().items():
            keeps_fp32 = key.endswith((".alpha", ".beta"))
            assert value.dtype == (torch.float32 if keeps_fp32 else dtype), key
            assert torch.equal(value, full_state[key].to(value.dtype)), key
    # transformers keeps T5's feed-forward output (`wo`) in fp32 under fp16: its overflow guard.
    t5 = half.conditioner.text_encoder.t5
    kept = tuple(t5._keep_in_fp32_modules or ()) if dtype == torch.float16 else ()
    for key, value in half.conditioner.named_parameters():
        expected = torch.float32 if any(f".{m}." in key for m in kept) else dtype
        assert value.dtype == expected, key
    assert not any(p.requires_grad for p in half.dit.parameters())
