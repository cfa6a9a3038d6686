"""PyTorch definitions of the Stable Audio family: the single source of the maths."""

from stable_audio_rt.models.attention import SDPA, AttentionFunctions
from stable_audio_rt.models.conditioners import Conditioner
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0, TINY, StableAudioConfig
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.loading import StableAudioModel, load_stable_audio
from stable_audio_rt.models.vae import OobleckVAE

__all__ = [
    "SDPA",
    "STABLE_AUDIO_OPEN_1_0",
    "TINY",
    "AttentionFunctions",
    "Conditioner",
    "DiT",
    "OobleckVAE",
    "StableAudioConfig",
    "StableAudioModel",
    "load_stable_audio",
]
