"""What a sampler is to the pipeline: one per model objective, owning its defaults, the checks
of what it cannot do, the start of its schedule, and the host part of a request that depends on
it (the step table, the DiT's times, its random draws after the initial ones). The step itself
(`step.py`) is shared: every sampler here is linear per step with a precomputed table
(`table.py`). A new sampler is one file and one line in `objectives.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from stable_audio_rt.runtime.region import RequestBuffers
    from stable_audio_rt.runtime.requests import GenerationRequest, ResolvedRequest
    from stable_audio_rt.runtime.sampling.noise import RequestRandomness


class Sampler(ABC):
    objective: ClassVar[str]  # the model config's objective this sampler is for
    name: ClassVar[str]
    default_steps: ClassVar[int]
    default_cfg_scale: ClassVar[float]
    default_init_noise_level: ClassVar[float]  # audio-to-audio's start when the request gives none

    @abstractmethod
    def check(self, request: GenerationRequest) -> None:
        """Refuse, by name and before any work, what this sampler cannot do."""

    def warnings(self, request: GenerationRequest) -> list[str]:
        """What this sampler runs as asked but likely not as meant (said once the request stands)."""
        return []

    @abstractmethod
    def start_level(self, request: GenerationRequest) -> float:
        """Where the schedule starts: σmax, or the first time t."""

    @abstractmethod
    def write(
        self,
        request: RequestBuffers,
        resolved: ResolvedRequest,
        randomness: RequestRandomness,
        rows: slice = slice(None),
    ) -> None:
        """Into the request's inputs and sampler state, after the initial (and posterior) noise
        draws: the start and reference scales, the step noise (and RePaint's), the DiT's times
        and the step table, in the reference's order of draws. `rows`: the batch rows that are
        this request's (a batch of requests shares the schedule, each draws its own noise)."""
