"""sa-run and the Python API: sampler, generation modes, backends, static buffers, audio I/O."""

from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio

__all__ = ["GenerationResult", "StableAudio"]
