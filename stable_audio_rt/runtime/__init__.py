"""sa-run and the Python API. The front door (cli, load, requests, audio_io), the orchestration
(pipeline, planning, region, cuda_graph, vae_decode), sampling/ (one sampler per objective, the
step and its state) and backends/ (torch and the engine folders' onnxruntime and TensorRT)."""

from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio

__all__ = ["GenerationResult", "StableAudio"]
