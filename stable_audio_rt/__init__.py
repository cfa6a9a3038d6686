"""stable-audio-rt: fast inference for Stable Audio Open."""

from stable_audio_rt.errors import CheckpointError, ConfigError, ModelAccessError, StableAudioError

__all__ = ["CheckpointError", "ConfigError", "ModelAccessError", "StableAudioError"]
__version__ = "0.1.0"
