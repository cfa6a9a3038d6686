"""The body of `POST /v1/audio/generate`: vLLM-Omni's field names, so its clients work unchanged,
plus ours, one name per thing. Unknown fields are refused by name; the model's own limits are
checked by `resolve_request`, as for sa-run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stable_audio_rt.runtime.requests import WINDOWS, GenerationRequest
from stable_audio_rt.runtime.sampling.guidance import DEFAULT_APG_SCALE, GUIDANCE_KINDS
from stable_audio_rt.runtime.sampling.noise import NOISE_KINDS

# The seed range sa-run accepts (requests.py): [0, 2**63).
SEED_LIMIT = 2**63
# response_format → (soundfile format, media type). Raw PCM is little-endian (as OpenAI's and
# vLLM-Omni's "pcm"), so not audio/L16, which is big-endian by RFC 2586.
RESPONSE_FORMATS = {
    "wav": ("WAV", "audio/wav"),
    "flac": ("FLAC", "audio/flac"),
    "pcm": ("RAW", "application/octet-stream"),
}


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, description="the text prompt")
    negative_prompt: str | None = None
    audio_length: float | None = Field(None, gt=0, description="seconds (default: the model's window)")
    audio_start: float = Field(0.0, ge=0, description="seconds_start conditioning")
    guidance_scale: float | None = Field(None, ge=0, description="CFG scale (default: the model's)")
    num_inference_steps: int | None = Field(None, ge=1, description="sampler steps (default: the model's)")
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="default: random, returned in X-Seed")
    response_format: Literal[tuple(RESPONSE_FORMATS)] = "wav"  # type: ignore[valid-type]
    guidance: Literal[GUIDANCE_KINDS] = "cfg"  # type: ignore[valid-type]
    apg_scale: float = Field(DEFAULT_APG_SCALE, ge=0, le=1)
    noise: Literal[NOISE_KINDS] = "gaussian"  # type: ignore[valid-type]
    window: Literal[WINDOWS] = "full"  # type: ignore[valid-type]

    def request(self) -> GenerationRequest:
        return GenerationRequest(
            prompts=(self.input,),
            negative_prompt=self.negative_prompt,
            seconds_total=self.audio_length,
            seconds_start=self.audio_start,
            cfg_scale=self.guidance_scale,
            steps=self.num_inference_steps,
            seed=self.seed,
            guidance=self.guidance,
            apg_scale=self.apg_scale,
            noise=self.noise,
            window=self.window,
        )
