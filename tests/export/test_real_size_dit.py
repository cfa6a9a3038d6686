"""The real Stable Audio Open 1.0 DiT (random weights, 1.06 B parameters) exports at fp32 with its
weights in one external-data file, and onnxruntime matches PyTorch at a short frame count.

The heaviest test of the suite: about 1.7 minutes and 13 GB peak RSS on a 2-core CPU (measured
2026-11-30 on an AMD EPYC: export 62 s, onnxruntime load 14 s and run; 3.1 minutes before the
export left onnxscript's quadratic SlicesSplit rewrite out, `onnx_export.without_slices_split`).
"""

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


def test_real_size_dit_exports_with_external_data(tmp_path, generator):
    config = STABLE_AUDIO_OPEN_1_0
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
    print(f"real-size DiT export: max rel {result.max_rel:.2e}, process peak RSS {peak_gb:.1f} GB")
    assert result.finite and result.max_rel <= REL_TOL
