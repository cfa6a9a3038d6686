"""The sa-serve tests' one model: the tiny random pipeline on the reference path, loaded once."""

import pytest
from reference_path import REFERENCE_PATH

from stable_audio_rt.runtime.pipeline import StableAudio


@pytest.fixture(scope="session")
def pipe():
    return StableAudio.load("tiny-random", device="cpu", cuda_graph=False, **REFERENCE_PATH)
