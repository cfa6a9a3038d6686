"""Engine folders exported once per session from the tiny random checkpoint."""

import pytest

from stable_audio_rt.export.engine_folder import ExportSettings, export_engines

# A profile that covers the tests' shapes: two clips (four CFG rows) and 1–64 latent frames.
PROFILE = dict(max_batch=2, frames=(1, 16, 64))


@pytest.fixture(scope="session")
def engines(tiny_diffusers_dir, tmp_path_factory):
    """{precision: (folder, manifest)} for fp32 and fp16."""
    out = {}
    for precision in ("fp32", "fp16"):
        folder = tmp_path_factory.mktemp("engines") / precision
        out[precision] = (
            folder,
            export_engines(tiny_diffusers_dir, folder, ExportSettings(precision, **PROFILE)),
        )
    return out
