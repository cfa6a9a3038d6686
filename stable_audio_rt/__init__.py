"""stable-audio-rt: fast inference for Stable Audio Open."""

from stable_audio_rt.errors import CheckpointError, ConfigError, ModelAccessError, StableAudioError
from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio

__all__ = [
    "CheckpointError",
    "ConfigError",
    "GenerationResult",
    "ModelAccessError",
    "StableAudio",
    "StableAudioError",
]
__version__ = "0.1.0"
