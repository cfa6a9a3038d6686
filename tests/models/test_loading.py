"""Loading in a reduced precision: every tensor lands in the requested dtype, except Snake's
α/β which stay fp32, and the values are the fp32 load's rounded once; T5's dtype is separate."""

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
    assert all(p.dtype == dtype for p in half.conditioner.numbers.parameters())
    # T5 stays fp32 unless asked otherwise; asked for fp16, every weight is cast (as the reference).
    assert all(p.dtype == torch.float32 for p in half.conditioner.text_encoder.parameters())
    t5_half = load_stable_audio(
        tiny_diffusers_dir, dtype=dtype, t5_dtype=torch.float16
    ).conditioner.text_encoder
    t5_full = full.conditioner.text_encoder.state_dict()
    for key, value in t5_half.state_dict().items():
        assert value.dtype == torch.float16 and torch.equal(value, t5_full[key].half()), key
    assert not any(p.requires_grad for p in half.dit.parameters())
