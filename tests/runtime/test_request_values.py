"""The Python API's values: numpy and torch numbers taken as the plain ones, mistyped and
non-finite values refused by name before any model work, integer PCM scaled as soundfile reads
it, and a long or low-rate reference resampled only as far as the window needs."""

import re
import warnings
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from stable_audio_rt.errors import RequestError, StableAudioError
from stable_audio_rt.models.config import TINY, TINY_SMALL
from stable_audio_rt.runtime.audio_io import read_audio, samples_read_for, to_model_audio
from stable_audio_rt.runtime.request_values import prompts_of
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request, resolve_request_as

RATE = TINY.sample_rate
NAN, INF = float("nan"), float("inf")

BAD_VALUES = [
    (dict(steps=2.0), r"steps must be a whole number, got 2\.0 \(float\)"),
    (dict(steps=True), r"steps must be a whole number, got True"),
    (dict(steps="2"), r"steps must be a whole number, got '2' \(str\)"),
    (dict(steps=10**30), r"steps must be in \[1, 10000\], got 10{30}"),
    (dict(num_outputs=None), r"num_outputs must be a whole number, got None"),
    (dict(seconds_start=None), r"seconds_start must be a number, got None"),  # was a TypeError from <
    (dict(seconds_total=np.complex128(0.5)), r"seconds_total must be a number, got"),
    (dict(num_outputs=np.float64(2)), r"num_outputs must be a whole number"),
    (dict(seed=1.5), r"seed must be a whole number, got 1\.5"),
    (dict(frames=40.5), r"frames must be a whole number"),
    (dict(vae_chunk=32.0), r"vae_chunk must be a whole number"),
    (dict(vae_chunk="big"), r"vae_chunk must be a number of latent frames, 'auto' or None"),
    (dict(cfg_scale=NAN), r"cfg_scale must be a finite number within .*, got nan"),
    (dict(cfg_scale=INF), r"cfg_scale must be a finite number within .*, got inf"),
    (dict(cfg_scale="7"), r"cfg_scale must be a number, got '7' \(str\)"),
    (dict(sigma_max=INF), r"sigma_max must be a finite number"),
    (dict(cfg_scale=1e300), r"cfg_scale must be a finite number within ±3\.4e\+38, got 1e\+300"),
    (dict(seconds_start=NAN), r"seconds_start must be a finite number"),
    (dict(seconds_total=np.float32("nan")), r"seconds_total must be a finite number"),
    (dict(cfg_norm_threshold=NAN), r"cfg_norm_threshold must be a finite number"),
    (dict(negative_prompt=["hiss"]), r"negative_prompt must be one string .* got \['hiss'\]"),
    (
        dict(seconds_total=1e-5),
        r"the clip from seconds_start \(0\.0\) to seconds_total \(1e-05\) holds no sample",
    ),
    (dict(seconds_start=0.5, seconds_total=0.5 + 1e-6), r"holds no sample at 44100 Hz"),
    (dict(vae_chunk=8), r"vae_chunk=8 must exceed twice the overlap"),
    (dict(apg_scale=0.0), r"apg_scale applies to guidance='apg'; with guidance='cfg' it would do nothing"),
    (dict(guidance="apg", apg_scale=1.5), r"apg_scale must be in \[0, 1\]"),
    (dict(frames=65), r"a window of 65 latent frames is longer than the model's \(64, 2\.97 s\)"),
    (dict(sample_size=65 * 2048), r"a window of 65 latent frames is longer than the model's"),
    (dict(vae_chunk=64, vae_overlap=1), r"vae_overlap=1 is below the decoder's receptive field"),
    # A clip's length not given is the reference's: the refusal says so.
    (
        dict(init_audio=(np.zeros((2, RATE), np.float32), RATE), frames=10),
        r"the window of 10 latent frames \(0\.46 s\) is shorter than the clip \(1\.00 s, init_audio's "
        r"length\)",
    ),
    (
        dict(init_audio=(np.zeros((2, RATE), np.float32), RATE), sigma_max=100.0),
        r"sigma_max is text-to-audio's start: audio-to-audio starts at init_noise_level instead",
    ),
    # Past this the start is noise alone; near 3e38 the sampler overflowed after the whole run.
    (dict(sigma_max=1e4 * 1.01), r"sigma_max must be at most 10000 .*, got 10100"),
    (
        dict(init_audio=(np.zeros((2, RATE), np.float32), RATE), init_noise_level=3e38),
        r"init_noise_level must be at most 10000 .*, got 3e\+38",
    ),
]


@pytest.mark.parametrize("options,message", BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_refused_by_name(options, message):
    with pytest.raises(RequestError, match=message):
        resolve_request(GenerationRequest(("x",), **options), TINY)


def test_a_chunk_barely_longer_than_its_overlaps_warns_of_the_decodes_it_repeats():
    from stable_audio_rt.models.vae import decoder_receptive_frames
    from stable_audio_rt.runtime.vae_decode import decode_chunks, decode_waste, thrifty_chunk

    overlap = decoder_receptive_frames(TINY.vae)
    # The warning's figure is the decode's: frames through the decoder per frame of the window.
    for frames, chunk in ((64, 2 * overlap + 1), (64, 30), (30, 25), (1000, thrifty_chunk(overlap))):
        seen = []
        latents = torch.zeros(1, 1, frames)
        for _ in decode_chunks(
            lambda x, seen=seen: seen.append(x.shape[-1]) or x, latents, 1, chunk, overlap
        ):
            pass
        assert decode_waste(frames, chunk, overlap) == pytest.approx(sum(seen) / frames)
    # Never past 2× at the thrifty chunk, whatever the window; past it one frame shorter.
    assert all(decode_waste(f, thrifty_chunk(overlap), overlap) <= 2 for f in range(1, 400))
    assert decode_waste(10_000, thrifty_chunk(overlap) - 1, overlap) > 2
    wasteful = 2 * overlap + 1  # one new frame a chunk
    with pytest.warns(UserWarning, match=rf"vae_chunk={wasteful} with overlaps of {overlap} frames decodes "
                      rf"[0-9.]+× the 64 frames it keeps \(1 new a chunk\); a chunk of "
                      rf"{thrifty_chunk(overlap)} or more decodes at most 2×"):  # fmt: skip
        resolve_request(GenerationRequest(("x",), vae_chunk=wasteful), TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for request in (
            GenerationRequest(("x",), vae_chunk=thrifty_chunk(overlap)),
            GenerationRequest(("x",), vae_chunk=25, frames=30, seconds_total=1.0),  # 2 windows: 1.7×
            GenerationRequest(("x",), vae_chunk=wasteful, frames=wasteful, seconds_total=0.5),  # one call
        ):
            resolve_request(request, TINY)


def test_a_clip_of_decimal_seconds_has_the_samples_those_seconds_hold():
    # 0.7 s at 44.1 kHz is 30870 samples, though 0.7 * 44100 is 30869.999… in floating point.
    rate = TINY.sample_rate
    hundredths = np.random.default_rng().choice(np.arange(1, 297), size=40, replace=False)
    for start, total in ((0.0, 0.7), *((0.0, h / 100) for h in hundredths), (0.35, 2.3)):
        clip = resolve_request(
            GenerationRequest(("x",), seconds_start=start, seconds_total=total), TINY
        ).clip(rate)
        # The decimal seconds' samples, counted exactly (no binary rounding).
        start_at, stop_at = (Fraction(str(s)) * rate for s in (start, total))
        assert (clip.start, clip.stop) == (start_at, stop_at), (start, total)


def test_numpy_and_torch_numbers_resolve_as_plain_ones():
    generator = np.random.default_rng()
    steps, seed, outputs = (int(v) for v in generator.integers(1, 50, 3))
    seconds, cfg = round(float(generator.uniform(0.5, 2.5)), 3), float(generator.uniform(1.5, 9))
    plain = resolve_request(
        GenerationRequest(
            ("x",), steps=steps, seed=seed, num_outputs=outputs, seconds_total=seconds, cfg_scale=cfg
        ),
        TINY,
    )
    scalars = resolve_request(
        GenerationRequest(
            ("x",),
            steps=np.int64(steps),
            seed=torch.tensor(seed),
            num_outputs=np.uint8(outputs),
            seconds_total=np.float64(seconds),
            cfg_scale=torch.tensor(cfg, dtype=torch.float64),
        ),
        TINY,
    )
    assert plain == scalars
    assert type(scalars.seed) is int and type(scalars.request.steps) is int
    assert type(scalars.request.cfg_scale) is float


def test_one_string_given_as_the_prompts_is_one_prompt():
    resolved = resolve_request(GenerationRequest("rain on a tin roof"), TINY)
    assert resolved.request.prompts == ("rain on a tin roof",) and resolved.batch == 1


@pytest.mark.parametrize("prompt", [None, 123, ["a", 2]])
def test_a_prompt_that_is_not_text_is_refused(prompt):
    with pytest.raises(RequestError, match=r"the prompt must be a string or a list of strings"):
        prompts_of(prompt)


@pytest.mark.parametrize(
    "dtype,full_scale,centre", [(np.int16, 2**15, 0), (np.int32, 2**31, 0), (np.uint8, 2**7, 2**7)]
)
def test_integer_pcm_is_scaled_as_soundfile_reads_it(dtype, full_scale, centre):
    info = np.iinfo(dtype)
    pcm = np.random.default_rng().integers(info.min, info.max, (2, RATE // 2), endpoint=True).astype(dtype)
    as_floats = ((pcm.astype(np.float64) - centre) / full_scale).astype(np.float32)
    for given in (pcm, torch.from_numpy(pcm)):
        from_pcm = resolve_request(GenerationRequest(("x",), init_audio=(given, RATE)), TINY)
        from_floats = resolve_request(GenerationRequest(("x",), init_audio=(as_floats, RATE)), TINY)
        assert torch.equal(from_pcm.init_audio, from_floats.init_audio)
    assert from_floats.init_audio.abs().max() <= 1.0


BAD_AUDIO = [
    ((np.full((2, RATE), np.nan, np.float32), RATE), r"init_audio has NaN or infinite samples"),
    ((np.full((2, RATE), np.inf, np.float32), RATE), r"init_audio has NaN or infinite samples"),
    ((np.zeros((2, RATE), np.int64), RATE), r"init_audio's samples are int64: give floats in \[-1, 1\]"),
    ((np.zeros((2, RATE), bool), RATE), r"init_audio's samples are bool"),
    (
        (np.zeros((2, RATE), np.float32), 0),
        r"init_audio's sample rate must be a positive number of Hz, got 0",
    ),
    ((np.zeros((2, RATE), np.float32), 44100.5), r"init_audio's sample rate must be a whole number"),
    ((RATE, np.zeros((2, RATE), np.float32)), r"init_audio is \(sample_rate, samples\), stable-audio-tools'"),
    (
        (np.full((2, RATE), 1e30, np.float32), RATE),
        r"init_audio's peak is 1e\+30: audio samples lie in",
    ),
    ((np.full((2, RATE), -1001, np.float32), RATE), r"init_audio's peak is 1001: "),
    ((44100.0, np.zeros((2, RATE), np.float32)), r"init_audio is \(sample_rate, samples\)"),
    ((torch.tensor(44100), torch.zeros(2, RATE)), r"init_audio is \(sample_rate, samples\)"),
    (
        np.zeros((2, RATE), np.float32),
        r"init_audio must be a file path or \(samples, sample_rate\), got ndarray",
    ),
    (
        (np.zeros((RATE, 2), np.float32), RATE),
        r"\(44100, 2\), which looks like \(samples, channels\): give its transpose",
    ),
    ((np.zeros((RATE, 6), np.float32), RATE), r"\(44100, 6\), which looks like \(samples, channels\)"),
]


@pytest.mark.parametrize("audio,message", BAD_AUDIO, ids=[m for _, m in BAD_AUDIO])
def test_bad_reference_audio_is_refused_by_name(audio, message):
    with pytest.raises(StableAudioError, match=message):
        resolve_request(GenerationRequest(("x",), init_audio=audio), TINY)


@pytest.mark.parametrize("rate", [10, 8000, 22050, 48000, 96000, 192000])
def test_a_long_reference_is_resampled_only_as_far_as_the_window_needs(rate, monkeypatch):
    """The window's samples equal resampling the whole clip, and the resampler is given only
    what covers the window and its filter's context, however long the clip."""
    length = RATE * 2
    clip = np.random.default_rng().uniform(-1, 1, (2, 4 * samples_read_for(length, rate, RATE)))
    clip = clip.astype(np.float32)
    whole = soxr.resample(clip.T, rate, RATE).T[:, :length]
    given: list[int] = []
    resample = soxr.resample
    monkeypatch.setattr(soxr, "resample", lambda x, *a, **k: given.append(len(x)) or resample(x, *a, **k))
    cropped = to_model_audio(clip, rate, RATE, length, channels=2)
    assert torch.equal(cropped, torch.from_numpy(np.ascontiguousarray(whole)))
    assert given == [samples_read_for(length, rate, RATE)] and given[0] < clip.shape[1]


def test_a_negative_prompt_without_cfg_warns_that_it_does_nothing():
    with pytest.warns(UserWarning, match=re.escape("guidance='apg' has no effect at a CFG scale of 1")):
        resolve_request(GenerationRequest(("x",), cfg_scale=1.0, guidance="apg", apg_scale=0.5), TINY)
    with pytest.warns(UserWarning, match=re.escape("the negative prompt has no effect at a CFG scale of 1")):
        resolve_request(GenerationRequest(("x",), negative_prompt="hiss", cfg_scale=1.0), TINY)
    # A request refused for something else says only the refusal.
    refused = GenerationRequest(("x",), negative_prompt="hiss", cfg_scale=1.0, vae_chunk=21, frames=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RequestError, match=r"shorter than the clip \(2\.97 s, the model's window\)"):
            resolve_request(refused, TINY)


def test_a_requests_warnings_are_kept_in_it_worded_as_its_caller_names_them_and_point_at_the_caller():
    request = GenerationRequest(("x",), cfg_scale=1.0, guidance="apg", apg_scale=0.5, negative_prompt="hiss")
    for resolve, named in (
        (lambda: resolve_request(request, TINY), "guidance='apg'"),
        (lambda: resolve_request_as(request, TINY, {"guidance": "--guidance"}), "--guidance='apg'"),
    ):
        with pytest.warns(UserWarning) as caught:
            resolved = resolve()
        assert [str(w.message) for w in caught] == list(resolved.warnings) and len(caught) == 1
        assert f"the negative prompt and {named} have no effect" in resolved.warnings[0]
        assert caught[0].filename == __file__  # the caller's line, not ours
    # Small's audio-to-audio at pure noise: said only once the request stands, like the others.
    at_one = dict(init_audio=(np.zeros((2, RATE), np.float32), RATE), init_noise_level=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RequestError, match=r"the window of 1 latent frames .* is shorter than the clip"):
            resolve_request(GenerationRequest(("x",), frames=1, seconds_total=0.5, **at_one), TINY_SMALL)
    with pytest.warns(UserWarning, match="init_audio has no effect at init_noise_level 1"):
        resolved = resolve_request(GenerationRequest(("x",), seconds_total=0.5, **at_one), TINY_SMALL)
    assert len(resolved.warnings) == 1


@pytest.mark.parametrize("reference", [{}, {"inpaint_audio": (np.zeros((2, RATE), np.float32), RATE)}])
def test_an_init_noise_level_without_init_audio_is_refused_not_ignored(reference):
    mask = {"inpaint_mask": np.ones(RATE, bool)} if reference else {}
    with pytest.raises(RequestError, match=r"init_noise_level is the starting noise of audio-to-audio"):
        resolve_request(GenerationRequest(("x",), init_noise_level=5.0, **reference, **mask), TINY)


def test_sigma_options_are_refused_by_the_rf_model_which_takes_none():
    with pytest.raises(RequestError, match=r"sigma_min and sigma_max shape the v-objective's noise schedule"):
        resolve_request(GenerationRequest(("x",), sigma_max=5.0), TINY_SMALL)


@pytest.mark.parametrize("as_file", [False, True], ids=["array", "file"])
def test_a_reference_of_more_than_two_channels_is_taken_as_its_first_two(tmp_path, as_file):
    """As stable-audio-tools' `set_audio_channels` takes it for a stereo model (it was refused)."""
    samples = np.random.default_rng().uniform(-1, 1, (6, RATE)).astype(np.float32)
    if as_file:
        sf.write(tmp_path / "six.wav", samples.T, RATE, subtype="FLOAT")
        sf.write(tmp_path / "two.wav", samples[:2].T, RATE, subtype="FLOAT")
        six, two = tmp_path / "six.wav", tmp_path / "two.wav"
    else:
        six, two = (samples, RATE), (samples[:2], RATE)
    ours = resolve_request(GenerationRequest(("x",), init_audio=six), TINY)
    assert torch.equal(
        ours.init_audio, resolve_request(GenerationRequest(("x",), init_audio=two), TINY).init_audio
    )


def test_a_whole_float_rate_and_a_peak_a_little_past_full_scale_are_taken():
    samples = np.random.default_rng().uniform(-1.5, 1.5, (2, RATE)).astype(np.float32)
    as_int = resolve_request(GenerationRequest(("x",), init_audio=(samples, RATE)), TINY)
    for rate in (float(RATE), np.float32(RATE), torch.tensor(float(RATE)), torch.tensor(RATE)):
        as_float = resolve_request(GenerationRequest(("x",), init_audio=(samples, rate)), TINY)
        assert torch.equal(as_int.init_audio, as_float.init_audio), rate


def test_a_long_file_is_read_only_as_far_as_the_window_reaches(tmp_path):
    rate = 8000
    whole = np.random.default_rng().uniform(-1, 1, (60 * rate, 2)).astype(np.float32)
    sf.write(tmp_path / "long.flac", whole, rate, subtype="PCM_24")
    read, read_rate, length = read_audio(tmp_path / "long.flac", (TINY.sample_size, TINY.sample_rate))
    everything, _, whole = read_audio(tmp_path / "long.flac")
    assert length == whole == everything.shape[-1] == 60 * rate  # the whole length, read or not
    assert read_rate == rate and read.shape[-1] == samples_read_for(TINY.sample_size, rate, TINY.sample_rate)
    assert read.shape[-1] < everything.shape[-1] and np.array_equal(read, everything[:, : read.shape[-1]])
