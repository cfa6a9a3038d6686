"""The sa-serve tests' one model (the tiny random pipeline on the reference path, loaded once),
and the job board's clock as a test moves it."""

import pytest
from reference_path import REFERENCE_PATH

from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.serve import jobs


@pytest.fixture(scope="session")
def pipe():
    return StableAudio.load("tiny-random", device="cpu", cuda_graph=False, **REFERENCE_PATH)


class Clock:
    """time.monotonic as the job board reads it, advanced by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(jobs, "time", clock)
    return clock
