"""stable-audio-rt: fast inference for Stable Audio Open.

One request, from `sa-run "rain on a tin roof" -o rain.wav` to the WAV, through each module once:

1. `runtime/cli.py` parses the flags; `runtime/load.py` (`plan_load`) picks the backend and
   device (`runtime/backends/choice.py` for `auto`), resolves the kernels (`kernels/switch.py`)
   and reads the model's config without its weights (`models/source.py`: a Hub id, a folder, or
   a seeded random model; `manifest.py` for an engine folder).
2. `runtime/requests.py` checks the request against that config and makes it concrete (window,
   seed, reference audio via `runtime/audio_io.py`); the model's sampler
   (`runtime/sampling/objectives.py`: `dpmpp_3m_sde.py` or `pingpong.py`) fills its defaults and
   refuses what it cannot do. Nothing heavy has happened yet.
3. `LoadPlan.components()` loads the weights (`models/loading.py`, `models/checkpoint.py`) into
   the torch backend (`runtime/backends/torch_backend.py`), or opens the engines
   (`runtime/backends/engine_backend.py` with `onnxruntime_backend.py` or `tensorrt_backend.py`).
4. `runtime/pipeline.py` (`StableAudio`) asks `runtime/planning.py` for the request's shape and
   writes its host part (tokens, seeded draws from `runtime/sampling/noise.py`, the sampler's
   step table from `runtime/sampling/table.py`) into static buffers (`runtime/region.py`,
   `runtime/sampling/state.py`).
5. The region runs: conditioning (`models/conditioners.py`), every step of
   `runtime/sampling/step.py` over the DiT (`models/dit.py`, attention from `kernels/`) with
   guidance (`runtime/sampling/guidance.py`), and the VAE decode (`models/vae.py`,
   `runtime/vae_decode.py`): on a GPU as one CUDA graph per shape (`runtime/cuda_graph.py`),
   replayed for every later request of that shape.
6. The audio is cropped and written atomically (`runtime/audio_io.py`, `atomic.py`); any
   `errors.py` error becomes one line and exit status 2, with nothing written.

`export/` (sa-export) writes the engine folders step 3 opens; `bench/` (sa-bench) times step 5;
`serve/` (sa-serve) runs steps 2 to 6 for HTTP requests on a model loaded once.
"""

from stable_audio_rt.errors import (
    CheckpointError,
    ConfigError,
    ModelAccessError,
    RequestError,
    StableAudioError,
)
from stable_audio_rt.runtime.audio_io import AudioFileError
from stable_audio_rt.runtime.pipeline import AudioStream, GenerationResult, StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, ResolvedRequest, resolve_request

__all__ = [
    "AudioFileError",
    "AudioStream",
    "CheckpointError",
    "ConfigError",
    "GenerationRequest",
    "GenerationResult",
    "ModelAccessError",
    "RequestError",
    "ResolvedRequest",
    "StableAudio",
    "StableAudioError",
    "resolve_request",
]
__version__ = "0.1.0"
