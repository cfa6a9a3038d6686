"""sa-serve's throughput and latency at several --max-batch settings, over real HTTP on 127.0.0.1.

    python benchmarks/serve_batching.py --json benchmarks/results/serve_batching_cpu.json
    python benchmarks/serve_batching.py --model random-stable-audio-open-small --clients 8 \
        --seconds 11.8 --steps 8 --json benchmarks/results/serve_batching_small_cpu.json

One model load; for each max-batch a fresh app on it, then `--clients` clients at once, one
text-to-audio request each (distinct seeds, one batch key), after one untimed warm-up request.
Reports wall time, requests per second, p50/p99 latency per request and the mean clips per
pipeline call (from /metrics' sa_batch_clips), so a batching setting's effect is measured, not
assumed. The model's dtype and kernels are its defaults (`auto`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
import torch
from report import emit, header
from serve_load import REQUEST_TIMEOUT_S, concurrent

from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.serve.app import ServeSettings, create_app
from stable_audio_rt.serve.background import BackgroundServer


def mean_batch(url: str) -> float:
    """Clips per pipeline call so far, from the Prometheus histogram's sum and count."""
    text = httpx.get(f"{url}/metrics").text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("sa_batch_clips_sum", "sa_batch_clips_count"))
    }
    return values["sa_batch_clips_sum"] / values["sa_batch_clips_count"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=0.5, help="audio_length of each request")
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps of each request")
    parser.add_argument("--json", type=Path)
    arguments = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments)
    if args.clients < 1 or min(args.max_batch) < 1:
        parser.error("--clients and every --max-batch must be at least 1")
    pipe = StableAudio.load(args.model, device="cpu", cuda_graph=False)
    body = {"input": "rain on a tin roof", "audio_length": args.seconds, "num_inference_steps": args.steps}
    rows = []
    for max_batch in args.max_batch:
        settings = ServeSettings(
            args.model, max_queue=args.clients + 1, max_batch=max_batch, batch_wait_ms=args.batch_wait_ms
        )
        server = BackgroundServer(create_app(pipe, settings))
        try:
            httpx.post(f"{server.url}/v1/audio/generate", json={**body, "seed": 0}, timeout=REQUEST_TIMEOUT_S)
            crowd = concurrent(server.url, args.clients, body)
            row = {
                "max_batch": max_batch,
                **crowd,
                "requests_per_s": round(args.clients / crowd["wall_s"], 3),
            }
            row["mean_clips_per_call"] = round(mean_batch(server.url), 2)
        finally:
            server.stop()
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    emit(
        {
            **header(torch.device("cpu")),
            "command": " ".join(["python", "benchmarks/serve_batching.py", *arguments]),
            "model": args.model,
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "request": body,
            "clients": args.clients,
            "batch_wait_ms": args.batch_wait_ms,
            "rows": rows,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
