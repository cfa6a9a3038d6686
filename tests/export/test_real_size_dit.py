"""The Stable Audio Open 1.0 DiT at its real width (1536, 24 heads, random weights), 13 of its 24
blocks: 0.58 B parameters, 2.3 GB at fp32, past protobuf's 2 GiB as the whole model's 4.2 GB is.
It exports with its weights in one external-data file, and onnxruntime matches PyTorch at a short
frame count.

The heaviest test of the suite. All 24 blocks took 2.9 minutes on this 2-core EPYC (2026-12-01)
and 1.7 minutes on another (2026-11-30: export 62 s, onnxruntime load 14 s and run; 13 GB peak
RSS; 3.1 minutes before the export left onnxscript's quadratic SlicesSplit rewrite out,
`onnx_export.without_slices_split`); 13 blocks hold the size this test is about, in 69 s and
7.2 GB on the first.
"""

import dataclasses
import resource
import shutil

import torch

from stable_audio_rt.export.onnx_export import Profile, export_component, verify_component
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.io_spec import axis_sizes, component_specs
from stable_audio_rt.models.random_init import randomize_

# fp32 graph vs fp32 eager: summation order only (measured 1.7e-6 relative).
REL_TOL = 1e-4
PROTOBUF_LIMIT = 2**31
# The fewest of 1.0's blocks whose fp32 weights pass PROTOBUF_LIMIT (12 make 1.99 GiB).
BLOCKS = 13


def test_a_real_width_dit_past_2_gib_exports_with_external_data(tmp_path, generator):
    config = dataclasses.replace(
        STABLE_AUDIO_OPEN_1_0, dit=dataclasses.replace(STABLE_AUDIO_OPEN_1_0.dit, depth=BLOCKS)
    )
    dit = randomize_(DiT(config.dit), generator)
    spec = component_specs(config)["dit"]
    profile = Profile(batch=(1, 2, 2), frames=(1, config.latent_frames, config.latent_frames))
    try:
        files = export_component(dit, spec, "fp32", profile, config, tmp_path / "dit.onnx")
        graph, data = files
        assert data.name == "dit.onnx.data" and data.stat().st_size > PROTOBUF_LIMIT
        assert graph.stat().st_size < 2**24, "the weights must live in the external file"
        seed = int(torch.randint(0, 2**31, (), generator=generator))
        result = verify_component(dit, spec, "fp32", graph, config, axis_sizes(config, 2, 5), seed)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak = f"process peak RSS {peak_gb:.1f} GB"
    print(f"real-width DiT export ({BLOCKS} blocks): max rel {result.max_rel:.2e}, {peak}")
    assert result.finite and result.max_rel <= REL_TOL
