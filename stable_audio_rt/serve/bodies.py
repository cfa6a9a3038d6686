"""A generation body as it arrives: JSON, or multipart/form-data holding the same JSON in its
`request` field beside the reference audio as file fields (`init_audio` for audio-to-audio,
`inpaint_audio` for inpainting). The body is read whole into memory under the upload limit, split
by python-multipart (the parser FastAPI's forms use) and the audio decoded from those bytes:
nothing on the server's disks is read or written, and no path a client names is opened."""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from python_multipart import FormParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import Field, File, parse_options_header
from starlette.requests import Request

from stable_audio_rt.errors import RequestError
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.runtime.audio_io import samples_read_for
from stable_audio_rt.runtime.requests import ResolvedRequest, resolve_request_as
from stable_audio_rt.serve.schema import AUDIO_FIELDS, BODY_NAMES, GenerateBody

MULTIPART = "multipart/form-data"
REQUEST_FIELD = "request"  # the multipart field holding the JSON body
# How python-multipart's error for a part without a name begins (its own words are a bytes repr).
NAMELESS_PART = "Field name not found"
KIB, MIB = 2**10, 2**20
# A body must arrive at MIN_BODY_RATE on average after its first BODY_GRACE_S (a 50 MiB upload:
# under 14 minutes), else it is refused (408): a client trickling bytes cannot hold its place
# among the bodies arriving (`Generator.arrival`) for long.
BODY_GRACE_S = 10.0
MIN_BODY_RATE = 64 * KIB


class BodyTooLarge(Exception):
    """The body is over the upload limit (413)."""


class BodyTooSlow(Exception):
    """The body arrives too slowly (408)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused as soon as it is known to be over `limit` bytes: from its declared
    length before any of it is read, else while it streams in; and refused (`BodyTooSlow`) once
    it falls behind BODY_GRACE_S plus MIN_BODY_RATE: a client trickling bytes holds no place
    among the bodies arriving for longer than that."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(_too_large(limit))
    body = bytearray()
    began = time.monotonic()
    chunks = request.stream().__aiter__()
    while True:
        due = began + BODY_GRACE_S + len(body) / MIN_BODY_RATE  # when the next byte is late
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, due - time.monotonic()))
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:  # not yet the builtin's alias on Python 3.10
            raise BodyTooSlow(
                f"the request body came in slower than {MIN_BODY_RATE // KIB} KiB/s (after its first "
                f"{BODY_GRACE_S:g} s): {len(body)} bytes in {time.monotonic() - began:.0f} s; send it faster"
            ) from None
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(_too_large(limit))


def _too_large(limit: int) -> str:
    return f"the request body is over the upload limit of {limit / MIB:g} MiB (sa-serve --max-upload-mb)"


def split_body(body: bytes, content_type: str) -> tuple[bytes, dict[str, bytes]]:
    """The JSON body and the uploaded files by field name (none for a JSON body). JSON is taken
    as FastAPI takes it: with a JSON content type or none; any other type is refused, so a web
    page cannot post it cross-origin as a form or text without the browser asking first."""
    media_type_bytes, params = parse_options_header(content_type)
    media_type = media_type_bytes.decode("latin-1")
    if media_type in ("", "application/json") or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return body, {}
    if media_type != MULTIPART:
        raise HTTPException(
            415,
            f"unsupported Content-Type {media_type!r}: send application/json, or {MULTIPART} with uploads",
        )
    fields: dict[str, bytes] = {}
    files: dict[str, bytes] = {}
    for part in form_parts(body, params.get(b"boundary")):
        name = (part.field_name or b"").decode("utf-8", "replace")
        if name in fields or name in files:
            raise RequestError(f"multipart field {name!r} is given twice")
        if name == REQUEST_FIELD:  # a text field, or a file (curl -F request=@body.json)
            fields[name] = (part.value or b"") if isinstance(part, Field) else part.file_object.getvalue()
        elif name in AUDIO_FIELDS:
            if isinstance(part, Field):
                raise RequestError(
                    f"{name} must be an uploaded file (e.g. curl -F {name}=@clip.wav), not a text field: "
                    "the server reads no paths"
                )
            files[name] = part.file_object.getvalue()
        else:
            raise RequestError(
                f"unknown multipart field {name!r}: send {REQUEST_FIELD!r} (the JSON body) and at most "
                f"one of {', '.join(AUDIO_FIELDS)} as a file"
            )
    if REQUEST_FIELD not in fields:
        raise RequestError(f"a multipart body needs a {REQUEST_FIELD!r} field holding the JSON body")
    return fields[REQUEST_FIELD], files


def form_parts(body: bytes, boundary: bytes | None) -> list[Field | File]:
    """multipart/form-data (RFC 7578) → its parts in order: a `File` for a part with a file name,
    else a `Field`. python-multipart's parser itself, not through Starlette's `request.form()`,
    which words every parse error "Invalid multipart data.", silently drops a part cut off by the
    body's end (an upload would go missing), and spools files over 1 MiB to disk."""
    parts: list[Field | File] = []
    ended = False

    def on_end() -> None:
        nonlocal ended
        ended = True

    # Files are kept in memory however large (the body is already under the upload limit):
    # python-multipart would otherwise move those over 1 MiB to temporary files.
    config = {"MAX_MEMORY_FILE_SIZE": math.inf}
    try:
        parser = FormParser(
            MULTIPART, parts.append, parts.append, on_end=on_end, boundary=boundary, config=config
        )
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        if str(e).startswith(NAMELESS_PART):
            fields = " or ".join(f'name="{name}"' for name in (REQUEST_FIELD, *AUDIO_FIELDS))
            raise RequestError(
                f"malformed multipart body: a part has no name; give each part "
                f"Content-Disposition: form-data; {fields}"
            ) from e
        raise RequestError(f"malformed multipart body: {e}") from e
    if not ended:  # finalize() does not check that the body is complete; the end callback does
        raise RequestError("malformed multipart body: it ends before its closing boundary")
    return parts


def decode_audio(field: str, content: bytes, config: StableAudioConfig) -> tuple[np.ndarray, int]:
    """An uploaded file → (channels, samples) float32 and its rate, as `read_audio` reads a path,
    but only as far as the model's window reaches (with the resampler's context): a few MiB of
    compressed silence or a low sample rate would otherwise decode to gigabytes."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(content)) as upload:
            needed = samples_read_for(config.sample_size, upload.samplerate, config.sample_rate)
            data = upload.read(needed, dtype="float32", always_2d=True)
            rate = upload.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        reason = getattr(e, "error_string", str(e))
        raise RequestError(
            f"{field}: cannot read the upload as audio ({reason}); send a WAV, FLAC, OGG or MP3 file"
        ) from e
    if data.shape[0] == 0:
        raise RequestError(f"{field}: the uploaded audio is empty")
    return data.T.copy(), rate


def parse_generation(
    body: bytes,
    content_type: str,
    config: StableAudioConfig,
    check_fields: Callable[[GenerateBody], None] = lambda fields: None,
) -> tuple[GenerateBody, ResolvedRequest]:
    """A body checked field by field (then by `check_fields`: the server's own limits, named as
    its), its uploads decoded, and the request resolved as sa-run's is: every refusal a 422
    naming the problem, before the request waits for the model. Run off the event loop: decoding
    and resampling an upload take a while."""
    json_body, files = split_body(body, content_type)
    _refuse_repeated_keys(json_body)
    try:
        fields = GenerateBody.model_validate_json(json_body)
    except ValidationError as e:  # worded as FastAPI words a bad JSON body
        errors = e.errors(include_url=False)
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in errors]) from e
    check_fields(fields)
    uploads = {name: decode_audio(name, content, config) for name, content in files.items()}
    return fields, resolve_request_as(fields.request(uploads, config), config, BODY_NAMES)


def _refuse_repeated_keys(json_body: bytes) -> None:
    """A field given twice in one JSON object is refused: the parser would keep the last one
    silently. (Malformed JSON is left to the validation that follows, which says where.)"""

    def pairs(items: list[tuple[str, object]]) -> dict:
        twice = sorted(name for name, count in Counter(name for name, _ in items).items() if count > 1)
        if twice:
            named = ", ".join(map(repr, twice))
            raise RequestError(f"the JSON body gives {named} more than once: give each once")
        return dict(items)

    try:
        json.loads(json_body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):  # not JSON (or too deep): the validation says so
        return
