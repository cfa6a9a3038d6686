"""Chunked VAE decoding equals the full decode (CPU, random weights, tiny and real geometry),
and streamed pieces concatenate to the full output."""

import pytest
import torch
from numerics import rel_error
from reference_path import REFERENCE_PATH

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0, TINY
from stable_audio_rt.models.random_init import randomize_
from stable_audio_rt.models.vae import OobleckVAE, decoder_receptive_frames
from stable_audio_rt.runtime import region
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request
from stable_audio_rt.runtime.vae_decode import decode_chunks, decode_latents, plan_windows

# Chunks run the same convolutions on the same samples as the full decode; only the lengths
# handed to the kernels differ, which can change their summation order: ~1e-7 relative.
CHUNK_REL_TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_vae():
    return randomize_(OobleckVAE(TINY.vae), torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def real_vae():
    return randomize_(OobleckVAE(STABLE_AUDIO_OPEN_1_0.vae), torch.Generator().manual_seed(4))


def test_receptive_field_is_ten_frames_for_the_oobleck_geometry():
    assert decoder_receptive_frames(STABLE_AUDIO_OPEN_1_0.vae) == 10
    assert decoder_receptive_frames(TINY.vae) == 10


def test_receptive_field_bounds_the_real_influence(tiny_vae, generator):
    """Changing one latent frame changes audio no further than the computed field."""
    frames, ratio, f = 41, TINY.vae.downsampling_ratio, 20
    z = torch.randn(1, TINY.vae.latent_dim, frames, generator=generator, dtype=torch.float64)
    vae = OobleckVAE(TINY.vae).double()
    vae.load_state_dict(tiny_vae.state_dict())
    with torch.no_grad():
        bumped = z.clone()
        bumped[..., f] += 1
        changed = (vae.decode(z) - vae.decode(bumped)).abs().sum(1)[0].nonzero().flatten()
    reach = max(f * ratio - changed.min().item(), changed.max().item() - ((f + 1) * ratio - 1)) / ratio
    field = decoder_receptive_frames(TINY.vae)
    assert field - 1 < reach <= field  # the bound is the reach rounded up (9.27 → 10)


@pytest.mark.parametrize("frames", [64, 50, 37, 21])
@pytest.mark.parametrize("chunk", [21, 25, 32])
def test_chunked_equals_full_tiny(tiny_vae, generator, frames, chunk):
    z = torch.randn(2, TINY.vae.latent_dim, frames, generator=generator)
    with torch.no_grad():
        full = tiny_vae.decode(z)
        chunked = decode_latents(tiny_vae.decode, z, TINY.vae, chunk_frames=chunk)
    assert chunked.shape == full.shape
    assert rel_error(chunked, full) <= CHUNK_REL_TOL


def test_single_short_chunk(tiny_vae, generator):
    z = torch.randn(1, TINY.vae.latent_dim, 5, generator=generator)
    with torch.no_grad():
        assert torch.equal(decode_latents(tiny_vae.decode, z, TINY.vae, chunk_frames=32), tiny_vae.decode(z))


def test_chunked_equals_full_real_geometry(real_vae, generator):
    z = torch.randn(1, STABLE_AUDIO_OPEN_1_0.vae.latent_dim, 45, generator=generator)
    with torch.no_grad():
        full = real_vae.decode(z)
        chunked = decode_latents(real_vae.decode, z, STABLE_AUDIO_OPEN_1_0.vae, chunk_frames=24)
    assert rel_error(chunked, full) <= CHUNK_REL_TOL


def test_overlap_below_the_receptive_field_is_refused_and_would_be_wrong(tiny_vae, generator):
    with pytest.raises(ConfigError, match="below the decoder's receptive field of 10 latent frames"):
        decode_latents(tiny_vae.decode, torch.zeros(1, 8, 40), TINY.vae, chunk_frames=25, overlap_frames=6)
    with pytest.raises(ConfigError, match="must exceed twice the overlap"):
        decode_latents(tiny_vae.decode, torch.zeros(1, 8, 40), TINY.vae, chunk_frames=20)
    # What the check prevents: too small an overlap changes the audio at the seams.
    z = torch.randn(1, TINY.vae.latent_dim, 40, generator=generator)
    with torch.no_grad():
        short = torch.cat(list(decode_chunks(tiny_vae.decode, z, TINY.vae.downsampling_ratio, 25, 3)), -1)
        assert rel_error(short, tiny_vae.decode(z)) > 1e-3


@pytest.mark.parametrize("frames,chunk,overlap", [(64, 21, 10), (100, 33, 10), (37, 36, 12), (1000, 128, 10)])
def test_windows_have_one_shape_and_cut_inside_both_valid_regions(frames, chunk, overlap):
    windows = plan_windows(frames, chunk, overlap)
    assert windows[0].keep_from == 0 and windows[-1].keep_to == frames
    assert all(w.start + chunk <= frames for w in windows) and windows[-1].start + chunk == frames
    for left, right in zip(windows, windows[1:], strict=False):
        assert left.keep_to == right.keep_from
        assert right.keep_from >= right.start + overlap and left.keep_to <= left.start + chunk - overlap


def test_stream_concatenates_to_the_full_output():
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    options = dict(seconds_total=2.5, seconds_start=0.3, steps=3, seed=8, num_outputs=2, vae_chunk=24)
    pieces = list(pipe.generate_stream("x", **options))
    assert len(pieces) > 1
    full = pipe.generate("x", **{**options, "vae_chunk": None}).audio
    assert rel_error(torch.cat(pieces, -1), full) <= CHUNK_REL_TOL


@pytest.mark.parametrize("chunk", [None, 21])
def test_progress_is_reported_before_the_first_window_and_after_each(tiny_vae, generator, chunk):
    """`on_window(done, total)`: (0, n) before any decoding, then once per window, in order; the
    audio is the decode's."""
    z = torch.randn(1, TINY.vae.latent_dim, 50, generator=generator)
    reports, decoded_before = [], []

    def decode(latents: torch.Tensor) -> torch.Tensor:
        decoded_before.append(len(reports))  # how many reports preceded this window's decode
        return tiny_vae.decode(latents)

    with torch.no_grad():
        audio = decode_latents(decode, z, TINY.vae, chunk, on_window=lambda *report: reports.append(report))
        expected = decode_latents(tiny_vae.decode, z, TINY.vae, chunk)
    windows = 1 if chunk is None else len(plan_windows(50, chunk, decoder_receptive_frames(TINY.vae)))
    assert windows > 1 or chunk is None
    assert reports == [(done, windows) for done in range(windows + 1)]
    assert decoded_before == list(range(1, windows + 1))
    assert torch.equal(audio, expected)


def test_generate_with_progress_shows_the_decode(capsys):
    """With progress, a bar for the decode after the sampling's, counting its decoder calls."""
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    request = GenerationRequest(("x",), seconds_total=1.0, steps=2, seed=1, vae_chunk=24)
    resolved = resolve_request(request, pipe.config)
    windows = len(plan_windows(pipe.request_shape(resolved).frames, 24, decoder_receptive_frames(TINY.vae)))
    pipe.run_resolved(resolved, progress=True)
    bars = capsys.readouterr().err
    assert "sampling" in bars and "decoding: 100%" in bars and f"{windows}/{windows}" in bars


def test_a_stream_with_progress_shows_its_decode_too(capsys):
    """As generate's: a bar for the pieces decoded after the sampling's (it showed the sampling's
    only)."""
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    options = dict(seconds_total=1.0, steps=2, seed=1, vae_chunk=24)
    resolved = resolve_request(GenerationRequest(("x",), **options), pipe.config)
    windows = len(plan_windows(pipe.request_shape(resolved).frames, 24, decoder_receptive_frames(TINY.vae)))
    list(pipe.generate_stream("x", progress=True, **options))
    bars = capsys.readouterr().err
    assert "sampling" in bars and "decoding: 100%" in bars and f"{windows}/{windows}" in bars


def test_the_decode_bar_is_closed_when_the_decode_is_interrupted(capsys, monkeypatch):
    """Ctrl-C or SIGTERM mid-decode: the bar ends its line, so the CLI's one-line message that
    follows starts on its own."""
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    decode = pipe.components.decode
    calls = []

    def interrupted(latents):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return decode(latents)

    monkeypatch.setattr(pipe.components, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipe.generate("x", seconds_total=1.0, steps=1, seed=1, num_outputs=2, progress=True)
    bars = capsys.readouterr().err
    assert "decoding:  50%" in bars and bars.endswith("\n"), bars[-200:]


@pytest.mark.parametrize("chunk", [None, 24])
def test_a_batch_decodes_one_clip_at_a_time_to_each_clips_own_audio(generator, chunk):
    """The decoder sees one clip at a time (its memory is one clip's whatever the batch), and each
    clip's audio is what decoding its latents alone gives."""
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    request = GenerationRequest(("x",), seconds_total=1.5, steps=2, seed=1, num_outputs=3, vae_chunk=chunk)
    buffers = pipe.prepare(resolve_request(request, pipe.config))
    rows, frames = buffers.state.x.shape[0], buffers.shape.frames
    buffers.state.x.copy_(torch.randn(buffers.state.x.shape, generator=generator))
    decoder_rows, reports = [], []
    components = pipe.components

    class Spying:
        config = components.config

        @staticmethod
        def decode(latents):
            decoder_rows.append(latents.shape[0])
            return components.decode(latents)

    region.decode(buffers, Spying, on_call=lambda *report: reports.append(report))
    windows = 1 if chunk is None else len(plan_windows(frames, chunk, decoder_receptive_frames(TINY.vae)))
    assert rows == 3 and decoder_rows == [1] * (rows * windows)
    # Progress counts the decoder's calls, a clip's window each: a batch is not one long 0/1.
    assert reports == [(done, rows * windows) for done in range(rows * windows + 1)]
    with torch.no_grad():
        for row in range(rows):
            alone = decode_latents(components.decode, buffers.state.x[row : row + 1], TINY.vae, chunk)
            assert torch.equal(buffers.audio[row : row + 1], alone)
