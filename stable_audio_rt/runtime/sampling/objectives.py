"""The sampler of each model objective."""

from __future__ import annotations

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import DpmPP3MSDE
from stable_audio_rt.runtime.sampling.pingpong import Pingpong
from stable_audio_rt.runtime.sampling.sampler import Sampler

SAMPLERS: dict[str, Sampler] = {s.objective: s for s in (DpmPP3MSDE(), Pingpong())}


def sampler_for(config: StableAudioConfig) -> Sampler:
    try:
        return SAMPLERS[config.objective]
    except KeyError:
        raise ConfigError(
            f"no sampler for the objective {config.objective!r}: this version samples {', '.join(SAMPLERS)}"
        ) from None
