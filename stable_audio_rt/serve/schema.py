"""The body of `POST /v1/audio/generate` and `POST /v1/audio/jobs`: vLLM-Omni's field names, so
its clients work unchanged, plus ours, one name per thing. Unknown fields are refused by name;
the model's own limits are checked by `resolve_request`, as for sa-run. Reference audio is never
a field of the JSON: it is uploaded beside it (multipart/form-data, `bodies.py`)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from stable_audio_rt.errors import RequestError
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.runtime.inpaint_ranges import Range, RangeNames, inpaint_mask
from stable_audio_rt.runtime.requests import SEED_LIMIT, WINDOWS, GenerationRequest
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import DEFAULT_INIT_NOISE_LEVEL
from stable_audio_rt.runtime.sampling.guidance import DEFAULT_APG_SCALE, GUIDANCE_KINDS
from stable_audio_rt.runtime.sampling.noise import NOISE_KINDS
from stable_audio_rt.runtime.sampling.pingpong import RF_DEFAULT_INIT_NOISE_LEVEL

# response_format → (soundfile format, media type). Raw PCM is little-endian (as OpenAI's and
# vLLM-Omni's "pcm"), so not audio/L16, which is big-endian by RFC 2586.
RESPONSE_FORMATS = {
    "wav": ("WAV", "audio/wav"),
    "flac": ("FLAC", "audio/flac"),
    "pcm": ("RAW", "application/octet-stream"),
}
# Clips one request may ask for (`n`): each is a row of the one batch the model runs.
MAX_CLIPS = 8
# The largest CFG scale a client may ask for: the range of stable-audio-tools' own web UI (its
# gradio slider, 0–25); far beyond it the guidance only amplifies noise, and overflows.
MAX_GUIDANCE_SCALE = 25.0
# The longest prompt (or negative prompt) taken, in characters: T5 reads 128 tokens (reference-spec
# §1), a few hundred characters of text; a longer one runs truncated (and is warned of), but one of
# megabytes held the model for seconds while the tokenizer read it all.
MAX_PROMPT_CHARS = 4000
# The upload fields: audio-to-audio's and inpainting's reference audio.
AUDIO_FIELDS = ("init_audio", "inpaint_audio")
SERVE_RANGES = RangeNames("an inpaint_audio upload", "keep_ranges", "inpaint_ranges")
# The request fields this body names otherwise, for refusals in its terms.
BODY_NAMES = {
    "seconds_total": "audio_length",
    "seconds_start": "audio_start",
    "cfg_scale": "guidance_scale",
    "num_outputs": "n",
    "steps": "num_inference_steps",
    "inpaint_mask": "keep_ranges/inpaint_ranges",
}


class GenerateBody(BaseModel):
    # NaN and ±Infinity (which Python's JSON reads) are refused as numbers; `strict` numbers take
    # no bool (true ran as 1 step) nor text (the seed alone is text too: the page sends it so,
    # exact past 2**53).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(None, description="the served model's id (GET /v1/models); may be left out")
    input: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="the text prompt")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    audio_length: float | None = Field(
        None, strict=True, gt=0, description="seconds (default: the model's window)"
    )
    audio_start: float = Field(0.0, strict=True, ge=0, description="seconds_start conditioning")
    guidance_scale: float | None = Field(
        None, strict=True, ge=0, le=MAX_GUIDANCE_SCALE, description="CFG scale (default: the model's)"
    )
    num_inference_steps: int | None = Field(
        None,
        strict=True,
        ge=1,
        description="sampler steps (default: the model's; at most sa-serve --max-steps)",
    )
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="default: random, returned in X-Seed")
    response_format: Literal[tuple(RESPONSE_FORMATS)] = "wav"  # type: ignore[valid-type]
    guidance: Literal[GUIDANCE_KINDS] = "cfg"  # type: ignore[valid-type]
    apg_scale: float | None = Field(
        None,
        strict=True,
        ge=0,
        le=1,
        description=f"with guidance apg: 0 = plain CFG … 1 = full APG (default: {DEFAULT_APG_SCALE:g})",
    )
    noise: Literal[NOISE_KINDS] = "gaussian"  # type: ignore[valid-type]
    window: Literal[WINDOWS] = "full"  # type: ignore[valid-type]
    n: int = Field(
        1,
        strict=True,
        ge=1,
        le=MAX_CLIPS,
        description="clips (num_outputs); more than one through the job API only",
    )
    init_noise_level: float | None = Field(
        None,
        strict=True,
        gt=0,
        description="with an init_audio upload: its starting noise, σmax for SAO 1.0 (default: "
        f"{DEFAULT_INIT_NOISE_LEVEL:g}), the time t in (0, 1] for Small (default: "
        f"{RF_DEFAULT_INIT_NOISE_LEVEL:g})",
    )
    keep_ranges: list[Range] | None = Field(
        None, description="with an inpaint_audio upload: [start, end] seconds kept, the rest regenerated"
    )
    inpaint_ranges: list[Range] | None = Field(
        None, description="with an inpaint_audio upload: [start, end] seconds regenerated, the rest kept"
    )

    @model_validator(mode="before")
    @classmethod
    def _audio_is_uploaded(cls, data: Any) -> Any:
        """A path (or anything) given as audio in the JSON is refused with where audio goes."""
        given = [name for name in AUDIO_FIELDS if isinstance(data, dict) and name in data]
        if given:
            raise PydanticCustomError(
                "audio_in_json",
                f"{given[0]} is not a JSON field: upload the audio as the file field {given[0]} of a "
                "multipart/form-data body (the server reads no paths)",
            )
        return data

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_is_no_bool(cls, value: Any) -> Any:
        """The seed alone is lax (text is taken: the page sends it so), but true is not a seed."""
        if isinstance(value, bool):
            raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
        return value

    def request(
        self, uploads: dict[str, tuple[np.ndarray, int]], config: StableAudioConfig
    ) -> GenerationRequest:
        """The request these fields and decoded uploads (field → (samples, rate)) ask for."""
        init, inpaint = uploads.get("init_audio"), uploads.get("inpaint_audio")
        if self.init_noise_level is not None and init is None:
            raise RequestError("init_noise_level needs an init_audio upload (audio-to-audio)")
        reference = None if inpaint is None else (inpaint[0].shape[-1], inpaint[1])
        mask = inpaint_mask(
            reference, self.keep_ranges, self.inpaint_ranges, config, SERVE_RANGES, "inpaint_audio"
        )
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
            num_outputs=self.n,
            init_audio=init,
            init_noise_level=self.init_noise_level,
            inpaint_audio=inpaint,
            inpaint_mask=mask,
        )


# The generation endpoints' body for /docs: they read it themselves, as JSON or multipart.
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": GenerateBody.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request"],
                    "properties": {
                        "request": {"type": "string", "description": "the JSON body, as above"},
                        **{name: {"type": "string", "format": "binary"} for name in AUDIO_FIELDS},
                    },
                }
            },
        },
    }
}

# What the endpoints answer besides their success, for /docs.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong API key (sa-serve --api-key): send Authorization: Bearer <key>"},
    422: {"description": "a bad body, value or upload: the detail names the field and the problem"},
}
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    413: {"description": "the body is over the upload limit (sa-serve --max-upload-mb)"},
    415: {"description": "a Content-Type other than application/json or multipart/form-data"},
    429: {"description": "the queue is full: retry after the Retry-After header's seconds"},
    503: {"description": "the server is stopping (draining): send new work elsewhere"},
}
AUDIO_CONTENT = {
    "description": (
        "the clip's bytes; its seed in X-Seed, its sample rate in X-Sample-Rate, a file name in "
        "Content-Disposition, and what the request asks that runs but likely not as meant in "
        "X-Warnings (a JSON list, absent if none; from POST /v1/audio/generate only: a job's status "
        "lists them in warnings)"
    ),
    "content": {media_type: {} for _, media_type in RESPONSE_FORMATS.values()},
}
