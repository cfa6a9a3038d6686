"""TensorRT itself, on a real GPU (skipped without TensorRT): plans built by sa-export's builder
from the tiny checkpoint run through the TensorRT backend, eagerly and as a replayed CUDA graph,
and give the torch backend's latents."""

import pytest
import torch

from stable_audio_rt.bench.quality import cosine_distance
from stable_audio_rt.export.engine_folder import ExportSettings, export_engines
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.trt_import import TensorRTUnavailable, import_tensorrt

# TensorRT may run fp32 layers in TF32 (its default): 1e-3 of cosine distance leaves room for
# that and still fails on any wrong binding (unrelated latents are ~1 apart).
TRT_VS_TORCH_COSINE_TOL = 1e-3
REPLAY_COSINE_TOL = 1e-5


@pytest.fixture(scope="module")
def plans(tiny_diffusers_dir, tmp_path_factory):
    try:
        import_tensorrt()
    except TensorRTUnavailable as e:
        pytest.skip(str(e))
    from stable_audio_rt.export.trt_build import build_folder_engines

    folder = tmp_path_factory.mktemp("trt") / "fp32"
    manifest = export_engines(
        tiny_diffusers_dir, folder, ExportSettings("fp32", max_batch=2, frames=(1, 16, 64))
    )
    build_folder_engines(folder, manifest)
    return folder


def test_tensorrt_gives_the_torch_latents_eager_and_replayed(plans, tiny_diffusers_dir, generator):
    reference = StableAudio.from_pretrained(
        tiny_diffusers_dir, device="cuda", kernels="torch", cuda_graph=False
    )
    graphed = StableAudio.from_engines(plans, backend="tensorrt", device="cuda")
    eager = StableAudio(graphed.components, cuda_graph=False)
    seeds = torch.randint(0, 2**31, (2,), generator=generator).tolist()
    for prompt, seed in zip(("warm pad", "rain"), seeds, strict=True):
        options = dict(seconds_total=1.0, frames=32, steps=8, seed=seed, negative_prompt="hiss")
        expected = reference.generate(prompt, **options)
        ours_eager, ours_graph = eager.generate(prompt, **options), graphed.generate(prompt, **options)
        assert "replay" in ours_graph.timings
        assert cosine_distance(ours_eager.latents, expected.latents) <= TRT_VS_TORCH_COSINE_TOL
        assert cosine_distance(ours_graph.latents, ours_eager.latents) <= REPLAY_COSINE_TOL
