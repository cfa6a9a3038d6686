"""The quality measures sa-bench reports against the fp32 reference."""

import math

import pytest
import torch

from stable_audio_rt.bench.quality import cosine_distance, max_relative_error, snr_db


@pytest.mark.parametrize("shape", [(2, 64, 33), (1, 2, 4097)])
def test_cosine_distance_stays_in_its_range_on_equal_and_opposite_tensors(shape):
    # Equal tensors' float64 cosine rounded to either side of 1 (a report printed -2.2e-16);
    # equal tensors are at distance 0 exactly, opposite ones at 2, never past it.
    for _ in range(20):
        x = torch.randn(shape) * 10 ** torch.empty(()).uniform_(-3, 3)
        assert cosine_distance(x, x.clone()) == 0.0
        assert 2.0 - 1e-12 <= cosine_distance(-x, x) <= 2.0


def test_cosine_distance_matches_the_angle_between_tensors():
    a, b = torch.randn(2, 5000, dtype=torch.float64)
    expected = 1 - torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    assert cosine_distance(a.float(), b.float()) == pytest.approx(expected, abs=1e-6)
    small = a + 1e-5 * b  # a distance near 5e-11, where 1 − cos keeps only ~6 digits
    assert cosine_distance(small, a) == pytest.approx(
        1 - torch.nn.functional.cosine_similarity(small, a, dim=0).item(), rel=1e-4
    )


def test_snr_and_relative_error_against_a_known_noise_level():
    reference = torch.randn(10_000, dtype=torch.float64)
    noise = torch.randn(10_000, dtype=torch.float64)
    noise *= 0.01 * reference.norm() / noise.norm()  # ‖noise‖ / ‖reference‖ = 0.01: 40 dB
    assert snr_db(reference + noise, reference) == pytest.approx(40.0, abs=1e-9)
    assert snr_db(reference, reference) == math.inf
    expected = noise.abs().max().item() / reference.abs().max().item()
    assert max_relative_error(reference + noise, reference) == pytest.approx(expected, rel=1e-12)
