"""The pipeline end to end on the tiny random model (CPU): modes, windows, files, determinism
(the region's capture discipline is tests/runtime/test_capturability.py)."""

import dataclasses
import itertools
import math
import random
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from reference_path import REFERENCE_PATH

from stable_audio_rt.errors import RequestError, StableAudioError, WriteError
from stable_audio_rt.models.config import TINY, TINY_SMALL
from stable_audio_rt.models.vae import bottleneck_sample
from stable_audio_rt.runtime.inpaint_ranges import RangeNames, inpaint_mask
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, keep_mask_to_latent, resolve_request

RATE = 44100


@pytest.fixture(scope="module")
def pipe():
    return StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)


def _tone(seconds, rate=RATE, channels=2):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)[None].repeat(channels, 0)).astype(np.float32)


def test_same_seed_is_bit_identical_and_seeds_differ(pipe):
    options = dict(seconds_total=1.0, steps=6, seed=1234, num_outputs=2, noise="brownian")
    first, second = pipe.generate("rain", **options), pipe.generate("rain", **options)
    assert torch.equal(first.audio, second.audio) and torch.equal(first.latents, second.latents)
    assert first.seed == 1234
    assert not torch.equal(first.audio[0], first.audio[1]), "batch rows must get different noise"
    other = pipe.generate("rain", **{**options, "seed": 1235})
    assert not torch.equal(first.latents, other.latents)


@pytest.mark.parametrize("suffix,subtype", [(".wav", "PCM_16"), (".flac", "PCM_16")])
def test_files_have_the_requested_length_rate_and_channels(pipe, tmp_path, suffix, subtype):
    result = pipe.generate(["a", "b"], seconds_total=1.5, seconds_start=0.25, steps=3, seed=7)
    paths = result.save(tmp_path / f"clip{suffix}")
    assert [p.name for p in paths] == [f"clip_0{suffix}", f"clip_1{suffix}"]
    for path, audio in zip(paths, result.audio, strict=True):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 2, subtype)
        assert info.frames == int(1.5 * RATE) - int(0.25 * RATE)
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
        # 16-bit PCM: within one quantisation step of the clipped float audio.
        assert np.abs(data.T - audio.clamp(-1, 1).numpy()).max() <= 1 / 2**15 + 1e-7
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"clip_0{suffix}", f"clip_1{suffix}"]


def test_windows(pipe):
    full = pipe.generate("x", seconds_total=1.0, steps=2, seed=0)
    trim = pipe.generate("x", seconds_total=1.0, steps=2, seed=0, window="trim")
    assert full.latents.shape[-1] == pipe.config.latent_frames
    assert trim.latents.shape[-1] == math.ceil(1.0 * RATE / 2048)
    assert full.audio.shape == trim.audio.shape == (1, 2, RATE)


def test_a_requests_warnings_point_at_the_callers_line(pipe):
    """generate, run and generate_stream each warn at the line that called them (they pointed
    inside pipeline.py)."""
    options = {"negative_prompt": "hiss", "cfg_scale": 1.0, "seconds_total": 0.5, "steps": 1}
    calls = [
        lambda: pipe.generate("x", **options),
        lambda: pipe.run(GenerationRequest(("x",), **options)),
        lambda: pipe.generate_stream("x", **options),
    ]
    for call in calls:
        with pytest.warns(UserWarning, match="the negative prompt has no effect") as caught:
            call()
        assert [w.filename for w in caught] == [__file__]


def test_a_prompt_over_t5s_length_is_warned_of_once_at_the_callers_line(pipe):
    """Every public way to run warns of a truncated prompt at the line that called it, once however
    many clips (the tokenizer's warning pointed into conditioners.py)."""
    length = pipe.config.conditioning.t5_max_length
    long = " ".join(random.choices(["rain", "wind", "sea", "bells"], k=length))
    options = {"seconds_total": 0.5, "steps": 1, "num_outputs": 2}
    resolved = resolve_request(GenerationRequest((long,), **options), pipe.config)
    calls = [
        lambda: pipe.generate(long, **options),
        lambda: pipe.run(GenerationRequest((long,), **options)),
        lambda: pipe.generate_stream(long, **options),
        lambda: pipe.run_resolved(resolved),
        lambda: pipe.run_batch([resolved, resolved]),
    ]
    for call in calls:
        with pytest.warns(UserWarning, match=f"is over {length} T5 tokens") as caught:
            call()
        assert [w.filename for w in caught] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.generate(long[: len(long) // 4], **options)


def test_a_request_resolved_for_another_model_is_refused(pipe):
    elsewhere = resolve_request(GenerationRequest(("x",), seconds_total=1.0, steps=2), TINY_SMALL)
    with pytest.raises(RequestError, match="a request resolved for another model"):
        pipe.run_resolved(elsewhere)
    here = resolve_request(GenerationRequest(("x",), seconds_total=1.0, steps=2), pipe.config)
    assert pipe.run_resolved(here).audio.shape == (1, 2, RATE)


def test_negative_prompt_changes_only_the_unconditional_half(pipe):
    plain = pipe.generate("x", seconds_total=1.0, steps=3, seed=5)
    negative = pipe.generate("x", seconds_total=1.0, steps=3, seed=5, negative_prompt="noise")
    no_cfg = dict(seconds_total=1.0, steps=3, seed=5, cfg_scale=1.0)
    no_cfg_a = pipe.generate("x", **no_cfg)
    with pytest.warns(UserWarning, match="the negative prompt has no effect at a CFG scale of 1"):
        no_cfg_b = pipe.generate(
            "x", seconds_total=1.0, steps=3, seed=5, cfg_scale=1.0, negative_prompt="noise"
        )
    assert not torch.equal(plain.latents, negative.latents)
    assert torch.equal(no_cfg_a.latents, no_cfg_b.latents)


def test_audio_to_audio_at_small_noise_is_the_vae_round_trip(pipe):
    seed, audio = 3, _tone(1.0, rate=22050, channels=1)
    result = pipe.generate(
        "x", seed=seed, steps=4, init_audio=(audio, 22050), init_noise_level=2e-4, sigma_min=1e-4
    )
    # The reference latent the pipeline must have used: posterior noise drawn after the initial noise.
    resolved = resolve_request(GenerationRequest(("x",), init_audio=(audio, 22050), seed=seed), pipe.config)
    generator = torch.Generator().manual_seed(seed)
    torch.randn(result.latents.shape, generator=generator)
    with torch.no_grad():
        mean, std = pipe.components.model.vae.encode_moments(resolved.init_audio[None])
        reference = bottleneck_sample(mean, std, torch.randn(mean.shape, generator=generator))
        round_trip = pipe.components.model.vae.decode(reference)[:, :, : result.audio.shape[-1]]
    # At σ ≤ 2e-4 the denoiser is ≈ the identity (c_out ≈ −σ), so the result departs from the
    # round trip linearly in σ: measured ≈ 5σ (latents) and ≈ 28σ (audio) relative here.
    assert (result.latents - reference).abs().max() <= 0.005 * reference.abs().max()
    assert (result.audio - round_trip).abs().max() <= 0.02 * round_trip.abs().max()


def test_inpainting_keeps_the_reference_latents_exactly(pipe):
    seed, audio = 11, _tone(2.0)
    keep = np.zeros(audio.shape[-1])
    keep[: 30 * 2048] = 1  # keep the first 30 latent frames' worth of samples
    result = pipe.generate("x", seed=seed, steps=5, inpaint_audio=(audio, RATE), inpaint_mask=keep)
    resolved = resolve_request(
        GenerationRequest(("x",), inpaint_audio=(audio, RATE), inpaint_mask=keep, seed=seed), pipe.config
    )
    generator = torch.Generator().manual_seed(seed)
    torch.randn(result.latents.shape, generator=generator)
    with torch.no_grad():
        mean, std = pipe.components.model.vae.encode_moments(resolved.inpaint_audio[None])
        reference = bottleneck_sample(mean, std, torch.randn(mean.shape, generator=generator))
    assert torch.equal(resolved.inpaint_keep[:30], torch.ones(30, dtype=torch.bool))
    assert not resolved.inpaint_keep[30:].any()
    assert torch.equal(result.latents[..., :30], reference[..., :30])
    assert not torch.allclose(result.latents[..., 30:], reference[..., 30:])


@pytest.mark.parametrize(
    "first_regenerated,expected_kept_frames",
    [(2048, 1), (2047, 0), (2049, 1), (4096, 2), (4095, 1)],
)
def test_keep_mask_reduces_to_frames_fully_kept(first_regenerated, expected_kept_frames):
    keep = torch.ones(4 * 2048, dtype=torch.bool)
    keep[first_regenerated : first_regenerated + 10] = False
    latent = keep_mask_to_latent(keep, 2048)
    assert latent.tolist()[:expected_kept_frames] == [True] * expected_kept_frames
    assert latent[expected_kept_frames].item() is False


def test_a_range_ending_at_the_printed_end_of_the_reference_is_its_end():
    """A reference of 2.89998 s is printed as 0–2.90 s: a range to 2.9 is taken to its end."""
    names = RangeNames("--inpaint-audio", "--keep-range", "--inpaint-range")
    samples = 127_889  # 2.89998 s at 44.1 kHz
    mask = inpaint_mask((samples, RATE), [(1.0, 2.9)], None, TINY, names, "odd.wav")
    assert mask.shape == (samples,) and mask[-1] and not mask[: RATE - 1].any()
    with pytest.raises(RequestError, match=r"--keep-range: 1\.0,2\.91 is outside odd\.wav \(0–2\.90 s\)"):
        inpaint_mask((samples, RATE), [(1.0, 2.91)], None, TINY, names, "odd.wav")


def test_a_mask_that_keeps_no_whole_latent_frame_is_refused():
    audio = _tone(1.0)
    keep = np.zeros(audio.shape[-1])
    keep[1000:3000] = 1  # 2000 samples, across a frame boundary: no 2048-sample frame whole
    with pytest.raises(RequestError, match=r"inpaint_mask keeps no whole latent frame \(2048 samples, 46 ms"):
        resolve_request(GenerationRequest(("x",), inpaint_audio=(audio, RATE), inpaint_mask=keep), TINY)


def test_a_mask_that_keeps_nothing_is_refused_not_run_as_text_to_audio():
    audio = _tone(1.0)
    nothing = np.zeros(audio.shape[-1])
    with pytest.raises(
        RequestError, match=r"inpaint_mask keeps nothing of inpaint_audio: it would be ignored"
    ):
        resolve_request(GenerationRequest(("x",), inpaint_audio=(audio, RATE), inpaint_mask=nothing), TINY)
    # sa-run's words: every part of the reference regenerated
    names = RangeNames("--inpaint-audio", "--keep-range", "--inpaint-range")
    mask = inpaint_mask((audio.shape[-1], RATE), None, [(0.0, 1.0)], TINY, names, "a.wav")
    with pytest.raises(RequestError, match=r"keeps nothing of"):
        resolve_request(GenerationRequest(("x",), inpaint_audio=(audio, RATE), inpaint_mask=mask), TINY)


def test_a_long_references_mask_may_cover_only_the_models_window():
    """sa-run and sa-serve build the mask only as far as the window reaches; the API's full-length
    mask of the same ranges gives the same request."""
    audio = _tone(4.0)  # past the tiny model's 2.97 s window
    full = np.zeros(audio.shape[-1], dtype=bool)
    full[:RATE] = True
    requests = [
        resolve_request(GenerationRequest(("x",), inpaint_audio=(audio, RATE), inpaint_mask=mask), TINY)
        for mask in (full, full[: TINY.sample_size])
    ]
    assert torch.equal(requests[0].inpaint_keep, requests[1].inpaint_keep) and requests[0].inpaint_keep.any()
    with pytest.raises(
        RequestError,
        match=r"inpaint_mask must be 1-D with 176400 values \(or the first 131072\), one per sample of "
        r"inpaint_audio at the model's rate \(44100 Hz\), got shape \(1000,\)",
    ):
        resolve_request(
            GenerationRequest(("x",), inpaint_audio=(audio, RATE), inpaint_mask=full[:1000]), TINY
        )


@pytest.mark.parametrize("marked", ["keep", "regenerate"])
def test_a_mask_marking_parts_past_the_requests_window_is_refused(marked):
    audio = _tone(2.5)
    keep = np.zeros(audio.shape[-1]) if marked == "keep" else np.ones(audio.shape[-1])
    keep[int(1.5 * RATE) : 2 * RATE] = 1 if marked == "keep" else 0
    trimmed = GenerationRequest(
        ("x",), inpaint_audio=(audio, RATE), inpaint_mask=keep, seconds_total=1.0, window="trim"
    )
    with pytest.raises(RequestError, match=r"marks parts of inpaint_audio past the window .* \(0–1\.02 s\)"):
        resolve_request(trimmed, TINY)
    # The whole window reaches the range: taken.
    resolve_request(dataclasses.replace(trimmed, window="full"), TINY)


def test_requests_run_with_the_pipelines_device_current(pipe, monkeypatch):
    """Triton launches on, and torch.cuda.graph captures on, torch's *current* device: a pipeline on
    cuda:N makes N current for its work (run_batch, and each piece of generate_stream), and the
    caller's thread gets its own back between stream pieces."""
    from stable_audio_rt.runtime import pipeline

    entered: list[torch.device] = []
    inside = [False]

    class Recording:
        def __init__(self, device):
            entered.append(device)

        def __enter__(self):
            inside[0] = True

        def __exit__(self, *exc):
            inside[0] = False

    monkeypatch.setattr(pipeline, "on_device", Recording)
    pipe.generate("x", seconds_total=1.0, steps=2, seed=1)
    assert entered == [pipe.device]
    entered.clear()
    for _ in pipe.generate_stream("x", seconds_total=2.5, steps=2, seed=1, vae_chunk=24):
        assert not inside[0], "the device stays current only while the pipeline works"
    assert len(entered) >= 3 and set(entered) == {pipe.device}


def test_a_streams_seed_drawn_at_the_call_makes_the_same_clip_again(pipe):
    stream = pipe.generate_stream("x", seconds_total=0.5, steps=2)
    assert stream.sample_rate == pipe.config.sample_rate
    streamed = torch.cat(list(stream), dim=-1)
    again = pipe.generate_stream("x", seconds_total=0.5, steps=2, seed=stream.seed)
    assert torch.equal(streamed, torch.cat(list(again), dim=-1))
    other = pipe.generate_stream("x", seconds_total=0.5, steps=2, seed=stream.seed + 1)
    assert not torch.equal(streamed, torch.cat(list(other), dim=-1))


def test_a_stream_is_refused_at_the_call_not_at_its_first_piece(pipe):
    with pytest.raises(RequestError, match=r"steps must be in \[1, 10000\]"):
        pipe.generate_stream("x", steps=0)


def test_saving_several_clips_checks_every_path_before_writing_any(pipe, tmp_path):
    result = pipe.generate(["a", "b"], seconds_total=0.5, steps=2, seed=3, window="trim")
    (tmp_path / "clip_1.wav").mkdir()
    with pytest.raises(StableAudioError, match=r"clip_1\.wav: it is a folder; name a file in it"):
        result.save(tmp_path / "clip.wav")
    with pytest.raises(StableAudioError, match=r"unknown sample format 'pcm24': use pcm16 or float"):
        result.save(tmp_path / "other.wav", sample_format="pcm24")
    # A folder named for the batch is refused as the folder, not as its numbered names.
    with pytest.raises(
        StableAudioError, match=rf"cannot write {tmp_path}: it is a folder; name a file in it"
    ):
        result.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["clip_1.wav"], "nothing may be written"


def test_running_out_of_memory_is_a_refusal_naming_what_shrinks_the_request(pipe, monkeypatch):
    from stable_audio_rt.runtime import pipeline

    def fails(message: str):
        def allocate(*args, **kwargs):
            raise RuntimeError(message)

        return allocate

    # torch's CPU allocator's own words, as a request of 100000 clips met them.
    refused = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory"
    monkeypatch.setattr(pipeline, "allocate_request", fails(refused))
    with pytest.raises(RequestError, match=r"out of memory on cpu: 3 clip\(s\) of 64 latent frames over 2"):
        pipe.generate("x", num_outputs=3, steps=2, seconds_total=1.0)
    monkeypatch.setattr(pipeline, "allocate_request", fails("a bug, not memory"))
    with pytest.raises(RuntimeError, match="a bug, not memory"):  # other failures keep their traceback
        pipe.generate("x", steps=2, seconds_total=1.0)


def test_audio_that_comes_out_nan_is_refused_not_returned(pipe, monkeypatch):
    # Guidance past MAX_CFG_SCALE is refused up front; an overflow (3e38 made one) is simulated.
    decode = pipe.components.decode
    monkeypatch.setattr(pipe.components, "decode", lambda latents: decode(latents) * float("inf"))
    with pytest.raises(RequestError, match=r"the audio came out NaN or infinite in torch.float32"):
        pipe.generate("x", steps=2, seconds_total=0.5, window="trim")
    with pytest.raises(RequestError, match=r"the audio came out NaN or infinite in torch.float32"):
        next(pipe.generate_stream("x", steps=2, seconds_total=0.5, window="trim"))
    with pytest.raises(RequestError, match=r"cfg_scale must be in \[0, 1000\]"):
        pipe.generate("x", cfg_scale=3e38, steps=2)


def test_a_stream_takes_the_overlaps_a_whole_decode_takes(pipe):
    """An overlap wider than the stream's default pieces allow: the pieces grow to fit it."""
    options = dict(seconds_total=2.5, steps=2, seed=4, vae_chunk=None, vae_overlap=40)
    pieces = list(pipe.generate_stream("x", **options))
    whole = pipe.generate("x", **options).audio
    assert torch.cat(pieces, -1).shape == whole.shape
    assert (torch.cat(pieces, -1) - whole).abs().max() <= 1e-4 * whole.abs().max()


def test_a_stream_out_of_memory_is_the_same_refusal(pipe, monkeypatch):
    from stable_audio_rt.runtime import pipeline

    def allocate(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(pipeline, "allocate_request", allocate)
    with pytest.raises(
        RequestError, match=r"out of memory on cpu: 1 clip\(s\) of 64 latent frames over 2 steps"
    ):
        next(pipe.generate_stream("x", steps=2, seconds_total=1.0))
    monkeypatch.undo()
    # The decode's pieces too: on the CPU the decoder's activations are the request's largest.
    decode_chunks = pipeline.decode_chunks

    def decoding(*args, **kwargs):
        yield from itertools.islice(decode_chunks(*args, **kwargs), 1)
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(pipeline, "decode_chunks", decoding)
    stream = pipe.generate_stream("x", steps=2, seconds_total=2.5, vae_chunk=24, window="trim")
    assert next(stream).shape[-1] > 0
    with pytest.raises(RequestError, match=r"out of memory on cpu: 1 clip\(s\) of \d+ latent frames"):
        next(stream)


def test_a_batch_interrupted_while_saving_leaves_no_clip_of_it(pipe, tmp_path, monkeypatch):
    from stable_audio_rt.runtime import audio_io

    result = pipe.generate(["a", "b", "c"], seconds_total=0.5, steps=2, seed=3, window="trim")
    encoded = audio_io._encoded

    def interrupted_at_the_second(*args):
        if interrupted_at_the_second.calls == 1:
            raise KeyboardInterrupt
        interrupted_at_the_second.calls += 1
        return encoded(*args)

    interrupted_at_the_second.calls = 0
    monkeypatch.setattr(audio_io, "_encoded", interrupted_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        result.save(tmp_path / "clip.wav")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(audio_io, "_encoded", encoded)
    assert [p.name for p in result.save(tmp_path / "clip.wav")] == ["clip_0.wav", "clip_1.wav", "clip_2.wav"]


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_a_full_disk_is_one_refusal_that_leaves_the_old_files(pipe, tmp_path, full_disk, suffix):
    result = pipe.generate(["a", "b"], seconds_total=0.5, steps=2, window="trim")
    old = tmp_path / f"clip_0{suffix}"
    old.write_bytes(b"an earlier clip")
    full_disk(f"clip_1{suffix}")  # the second clip's write meets a full disk
    with pytest.raises(
        WriteError, match=rf"cannot write .*clip_1\{suffix} \(No space left on device\): free space"
    ):
        result.save(tmp_path / f"clip{suffix}")
    assert list(tmp_path.iterdir()) == [old] and old.read_bytes() == b"an earlier clip"


def test_unclipped_audio_is_written_only_where_the_format_holds_it(pipe, tmp_path):
    result = pipe.generate("a", seconds_total=0.5, steps=2, seed=3, window="trim")
    result.audio *= 3 / result.audio.abs().max()  # a peak of 3
    for name, sample_format in (("a.wav", "pcm16"), ("a.flac", "float"), ("a.flac", "pcm16")):
        with pytest.raises(RequestError, match=r"unclipped .* only a float WAV .* holds samples past ±1"):
            result.save(tmp_path / name, sample_format, clip=False)
    assert list(tmp_path.iterdir()) == []
    (path,) = result.save(tmp_path / "a.wav", "float", clip=False)
    assert sf.read(path)[0].max() == pytest.approx(result.audio.max().item())


def test_an_unreadable_reference_file_is_a_request_error_like_any_bad_argument(pipe, tmp_path):
    import stable_audio_rt

    (tmp_path / "notes.wav").write_text("not audio")
    for path, message in (
        (tmp_path / "missing.wav", r"audio file .*missing\.wav does not exist"),
        (tmp_path / "notes.wav", r"cannot read .*notes\.wav as audio"),
    ):
        for field in ("init_audio", "inpaint_audio"):
            extra = {"inpaint_mask": np.ones(10)} if field == "inpaint_audio" else {}
            with pytest.raises(RequestError, match=message) as refused:
                pipe.generate("x", steps=2, **{field: path}, **extra)
            assert isinstance(refused.value, stable_audio_rt.AudioFileError)
