"""Full vs chunked VAE decode at Stable Audio Open 1.0 size: time, time to first audio, peak memory.

    python benchmarks/bench_vae_decode.py --frames 1024 --chunk 128 \
        --json benchmarks/results/vae_decode_cpu.json

Each mode runs in its own process so its peak memory (CUDA max allocated, or the process's
peak RSS above the loaded model) is its own. Random weights of the real geometry: timings and
memory do not depend on the values.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import torch
from report import emit, header

from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0
from stable_audio_rt.models.random_init import randomize_
from stable_audio_rt.models.vae import OobleckVAE, decoder_receptive_frames
from stable_audio_rt.precision import DTYPES
from stable_audio_rt.runtime.vae_decode import decode_chunks


def _rss_field_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak(device: torch.device) -> float:
    """Reset the peak-memory counter; return the memory in use now (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_field_mb("VmRSS")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _rss_field_mb("VmHWM")


def _run(mode: str, frames: int, chunk: int, device: str, dtype: str, queue: mp.Queue) -> None:
    device_, dtype_ = torch.device(device), DTYPES[dtype]
    config = STABLE_AUDIO_OPEN_1_0.vae
    vae = randomize_(OobleckVAE(config), torch.Generator().manual_seed(0)).to(device_, dtype_)
    latents = torch.randn(1, config.latent_dim, frames, device=device_, dtype=dtype_)
    baseline = _reset_peak(device_)

    def sync() -> None:
        if device_.type == "cuda":
            torch.cuda.synchronize(device_)

    with torch.inference_mode():
        start = time.perf_counter()
        first = None
        if mode == "full":
            vae.decode(latents)
            sync()
            first = time.perf_counter() - start
        else:
            overlap = decoder_receptive_frames(config)
            for _ in decode_chunks(vae.decode, latents, config.downsampling_ratio, chunk, overlap):
                sync()
                first = first if first is not None else time.perf_counter() - start
        total = time.perf_counter() - start
    queue.put(
        {
            "seconds": total,
            "time_to_first_audio_s": first,
            "peak_mb_above_model": _peak_mb(device_) - baseline,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=STABLE_AUDIO_OPEN_1_0.latent_frames)
    parser.add_argument("--chunk", type=int, default=128, help="latent frames per chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    context = mp.get_context("spawn")
    results = {}
    for mode in ("full", "chunked"):
        queue = context.Queue()
        process = context.Process(
            target=_run, args=(mode, args.frames, args.chunk, args.device, args.dtype, queue)
        )
        process.start()
        results[mode] = queue.get()
        process.join()
    device = torch.device(args.device)
    report = {
        **header(device),
        "dtype": args.dtype,
        "frames": args.frames,
        "audio_seconds": args.frames
        * STABLE_AUDIO_OPEN_1_0.vae.downsampling_ratio
        / STABLE_AUDIO_OPEN_1_0.sample_rate,
        "chunk_frames": args.chunk,
        "overlap_frames": decoder_receptive_frames(STABLE_AUDIO_OPEN_1_0.vae),
        "memory": "CUDA max allocated" if device.type == "cuda" else "process peak RSS",
        "modes": results,
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
