"""Reading reference audio and writing results: soundfile for files, soxr for resampling.

Writes are atomic: a temporary file in the destination folder, renamed into place. Both
libraries are imported where used: the offline GPU image lacks them and runs everything else.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch

from stable_audio_rt.atomic import (
    atomic_paths,
    check_distinct,
    check_replaceable,
    check_writable,
    write_target,
    writing,
)
from stable_audio_rt.errors import RequestError

# Output formats by extension, with the soundfile subtype for each sample format.
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
SUBTYPES = {
    ("WAV", "pcm16"): "PCM_16",
    ("WAV", "float"): "FLOAT",
    ("FLAC", "pcm16"): "PCM_16",
    ("FLAC", "float"): "PCM_24",  # FLAC has no float samples; 24-bit is its finest
    ("RAW", "pcm16"): "PCM_16",
    ("RAW", "float"): "FLOAT",
}
T = TypeVar("T")
SampleFormat = Literal["pcm16", "float"]
SAMPLE_FORMATS: tuple[SampleFormat, ...] = ("pcm16", "float")
# 16-bit PCM: sample = x · 2¹⁵, rounded, within [−2¹⁵, 2¹⁵ − 1]; readers divide by 2¹⁵.
PCM16_SCALE = 2**15


# Input samples past a crop that soxr's filter reads, per unit of the downsampling ratio: a
# cropped resample with them equals the whole one (measured from 10 Hz to 192 kHz into 44.1 kHz).
RESAMPLE_CONTEXT = 4096


class AudioFileError(RequestError):
    """An audio file cannot be read or written as asked: a request's reference audio or an
    output path, so a RequestError like every other bad argument."""


def check_output_path(
    path: str | Path, sample_format: SampleFormat = "pcm16", clip: bool = True, normalize: bool = False
) -> Path:
    """Refuse, before any work, an output path (and sample format) we could not write, or could
    not write unclipped (`clip` False, peaks not normalized: only a float WAV holds samples past
    ±1)."""
    path = Path(path)
    if sample_format not in SAMPLE_FORMATS:
        raise AudioFileError(f"unknown sample format {sample_format!r}: use {' or '.join(SAMPLE_FORMATS)}")
    _refuse_folder(path)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise AudioFileError(
            f"cannot write {path}: unsupported extension {path.suffix!r} (use {', '.join(OUTPUT_FORMATS)})"
        )
    unclipped = not clip and not normalize
    if unclipped and SUBTYPES[OUTPUT_FORMATS[path.suffix.lower()], sample_format] != "FLOAT":
        raise AudioFileError(
            f"cannot write {path} unclipped (clip=False, sa-run --no-clip): only a float WAV (sample "
            "format 'float', --format float, and .wav) holds samples past ±1; 16-bit PCM and FLAC "
            "clip them"
        )
    folder = write_target(path).parent  # a link's target is what is written
    _check_folder(path, folder)
    check_replaceable(path)
    check_writable(folder)
    return path


def check_output_paths(
    paths: Sequence[str | Path],
    sample_format: SampleFormat = "pcm16",
    clip: bool = True,
    normalize: bool = False,
) -> list[Path]:
    """`check_output_path` for each path of a batch, and no two that lead to one file."""
    checked = [check_output_path(p, sample_format, clip, normalize) for p in paths]
    check_distinct(checked)
    return checked


def _check_folder(path: Path, folder: Path) -> None:
    """Refuse the folder `path` would be written in if it is none: missing, or a file (itself or
    one above it: `r.sh/x.wav`), each said as such."""
    if folder.is_dir():
        return
    # The first entry on the way down that is not a folder is what stands in the way.
    for entry in [*reversed(folder.parents), folder]:
        if entry.exists() and not entry.is_dir():
            raise AudioFileError(
                f"cannot write {path}: {entry} is a file, not a folder; name a file in a folder"
            )
    raise AudioFileError(f"cannot write {path}: folder {folder} does not exist (create it first)")


def _refuse_folder(path: Path) -> None:
    if path.is_dir():
        raise AudioFileError(
            f"cannot write {path}: it is a folder; name a file in it, such as {path / 'clip.wav'}"
        )


def clip_paths(path: str | Path, clips: int) -> list[Path]:
    """Where a result of `clips` clips is saved as `path`: `path` itself for one clip, else
    name_0, name_1, … (a folder named is refused as such, not as its numbered names)."""
    path = Path(path)
    if clips == 1:
        return [path]
    _refuse_folder(path)
    return [path.with_name(f"{path.stem}_{k}{path.suffix}") for k in range(clips)]


def read_audio(path: str | Path, window: tuple[int, int] | None = None) -> tuple[np.ndarray, int, int]:
    """Any format soundfile reads → (channels, samples) float32, its sample rate and the file's
    whole length in samples (its header's count, or what was read where the header has none).
    With `window` = (samples, rate), the model's window, only as far as it reaches is read (with
    the resampler's context): an hour of compressed silence would otherwise decode to gigabytes."""
    with _opened(path) as sound:
        rate, length = sound.samplerate, sound.frames
        frames = -1 if window is None else samples_read_for(window[0], rate, window[1])
        data = _read(path, lambda: sound.read(frames, dtype="float32", always_2d=True))
    if data.shape[0] == 0:
        raise AudioFileError(f"audio file {path} is empty")
    return data.T.copy(), rate, max(length, data.shape[0])


def audio_length(path: str | Path) -> tuple[int, int]:
    """An audio file's (sample count, sample rate), from its header: nothing decoded."""
    with _opened(path) as sound:
        return sound.frames, sound.samplerate


def _opened(path: str | Path):
    """`path` open as a soundfile.SoundFile, or an AudioFileError naming what is wrong."""
    path = Path(path)
    _check_readable(path)
    import soundfile as sf

    return _read(path, lambda: sf.SoundFile(str(path)))


def _check_readable(path: Path) -> None:
    """Refuse, with its own reason, a path that is no file this process can read: missing, a
    folder, not a regular file (a FIFO would block, a device read as anything), or one it may
    not read (libsndfile would say only "System error.")."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AudioFileError(f"audio file {path} does not exist") from None
    except OSError as e:
        raise _unreadable(path, e) from e
    if stat.S_ISDIR(mode):
        raise AudioFileError(f"{path} is a folder: give an audio file")
    if not stat.S_ISREG(mode):
        raise AudioFileError(f"{path} is not a regular file (a device, FIFO or socket): give an audio file")
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as e:
        raise _unreadable(path, e) from e


def _unreadable(path: Path, error: OSError) -> AudioFileError:
    return AudioFileError(f"cannot read {path} ({error.strerror}): give an audio file you can read")


def _read(path: str | Path, reading: Callable[[], T]) -> T:
    import soundfile as sf

    try:
        return reading()
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioFileError(f"cannot read {path} as audio ({e}); give a WAV, FLAC, OGG or MP3 file") from e


def sample_at(seconds: float, rate: int) -> int:
    """The sample a time in seconds falls on, to the nearest: 0.7 s at 44.1 kHz is sample 30870,
    though 0.7 · 44100 is 30869.99… in binary floating point."""
    return round(seconds * rate)


def length_at(samples: int, rate: int, target_rate: int) -> int:
    """How many samples `samples` at `rate` are at `target_rate` (a reference and its mask agree
    on it)."""
    return round(samples * target_rate / rate)


def samples_read_for(length: int, rate: int, target_rate: int) -> int:
    """How many samples at `rate` give the first `length` at `target_rate` as resampling all of
    the audio would: what covers them, and the resampler's context after."""
    if rate == target_rate:
        return length
    return math.ceil(length * rate / target_rate) + RESAMPLE_CONTEXT * math.ceil(rate / target_rate)


def to_model_audio(
    audio: np.ndarray, rate: int, target_rate: int, length: int, channels: int
) -> torch.Tensor:
    """(channels, samples) at `rate` → (`channels`, length) float32 at `target_rate`: resampled
    with soxr (only the part the `length` needs, so a long or low-rate clip costs no more than a
    short one), its channels made the model's as stable-audio-tools' `set_audio_channels` does
    (for a stereo model mono duplicated and more than two cut to the first two, for a mono one
    every channel averaged), zero-padded or cropped at the end."""
    audio = audio[:, : samples_read_for(length, rate, target_rate)]
    if rate != target_rate:
        import soxr

        audio = soxr.resample(audio.T, rate, target_rate).T
    if channels == 1:
        audio = audio.mean(axis=0, keepdims=True)
    elif audio.shape[0] == 1:
        audio = np.repeat(audio, channels, axis=0)
    else:
        audio = audio[:channels]
    out = np.zeros((channels, length), dtype=np.float32)
    n = min(length, audio.shape[1])
    out[:, :n] = audio[:, :n]
    return torch.from_numpy(out)


def write_clips(
    paths: Sequence[str | Path],
    clips: Sequence[torch.Tensor],
    rate: int,
    sample_format: SampleFormat = "pcm16",
    clip: bool = True,
    normalize: bool = False,
) -> list[Path]:
    """Each (channels, samples) clip to its path, WAV or FLAC by the extension, all or none: every
    path checked first, every clip written to a temp file, then all renamed (an interrupted batch
    leaves no clip of it). `normalize` scales each clip's peak to full scale first; `clip` then
    limits samples to [−1, 1]."""
    paths = check_output_paths(paths, sample_format, clip, normalize)
    with atomic_paths(paths) as temps:
        for tmp, path, audio in zip(temps, paths, clips, strict=True):
            data = _encoded(audio, rate, OUTPUT_FORMATS[path.suffix.lower()], sample_format, clip, normalize)
            # Encoded in memory and written here, not by libsndfile, whose failed write (a full
            # disk) says only "System error.": an OSError names its cause.
            with writing(path):
                tmp.write_bytes(data)
    return paths


def audio_bytes(
    audio: torch.Tensor, rate: int, file_format: str, sample_format: SampleFormat = "pcm16"
) -> bytes:
    """(channels, samples) audio as the bytes of a WAV or FLAC file, or raw interleaved PCM
    (`file_format` "RAW": little-endian, 16-bit for pcm16), clipped to [−1, 1]."""
    return _encoded(audio, rate, file_format, sample_format, clip=True, normalize=False)


def _encoded(
    audio: torch.Tensor,
    rate: int,
    file_format: str,
    sample_format: SampleFormat,
    clip: bool,
    normalize: bool,
) -> bytes:
    """(channels, samples) audio as the bytes of a `file_format` file (see `write_clips`)."""
    import soundfile as sf

    data = audio.detach().float().cpu().numpy().T
    if normalize:
        peak = float(np.abs(data).max())
        if peak > 0:
            data = data / peak
    if clip:
        data = np.clip(data, -1.0, 1.0)
    if sample_format == "pcm16":
        # Rounded here, not by libsndfile, whose float → 16-bit conversion differs by format (WAV
        # and FLAC of one clip were 1 LSB apart): every format then holds the same samples.
        data = np.clip(np.round(data * PCM16_SCALE), -PCM16_SCALE, PCM16_SCALE - 1).astype(np.int16)
    subtype = SUBTYPES[file_format, sample_format]
    buffer = io.BytesIO()
    sf.write(
        buffer,
        data,
        rate,
        subtype=subtype,
        format=file_format,
        endian="LITTLE" if file_format == "RAW" else None,
    )
    return buffer.getvalue()
