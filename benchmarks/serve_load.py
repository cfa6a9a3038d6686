"""sa-serve under load, over real HTTP on 127.0.0.1: memory over many sequential requests, and many
concurrent clients all answered.

    python benchmarks/serve_load.py --json benchmarks/results/serve_load_cpu.json

The tiny random model (timings here measure the server, not the model), two steps of half a
second per request. Phases: warm-up; `--sequential` requests one after another (latency p50 and
p99, throughput, resident memory after the warm-up and at the end); then `--clients` clients at
once, one request each (every answer's status counted). Generation runs one request at a time
(ServeSettings' default: no dynamic batching; benchmarks/serve_batching.py measures it), so
concurrent clients queue.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from report import emit, header

from stable_audio_rt.bench.runner import percentile
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.serve.app import ServeSettings, create_app
from stable_audio_rt.serve.background import BackgroundServer

BODY = {"input": "rain on a tin roof", "audio_length": 0.5, "num_inference_steps": 2}
WARMUP_REQUESTS = 20
REQUEST_TIMEOUT_S = 600


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc; the server runs in this process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status: this benchmark reads Linux's memory figures")


def sequential(client: httpx.Client, url: str, count: int) -> dict:
    seconds = []
    began = time.perf_counter()
    for seed in range(count):
        start = time.perf_counter()
        response = client.post(f"{url}/v1/audio/generate", json={**BODY, "seed": seed})
        response.raise_for_status()
        seconds.append(time.perf_counter() - start)
    total = time.perf_counter() - began
    return {
        "requests": count,
        "p50_s": round(statistics.median(seconds), 4),
        "p99_s": round(percentile(seconds, 99), 4),
        "requests_per_s": round(count / total, 2),
    }


def concurrent(url: str, clients: int, body: dict = BODY) -> dict:
    """`clients` clients at once, one request each (seeds 1…clients): statuses, wall time,
    latency p50/p99."""

    def one(seed: int) -> tuple[int, float]:
        start = time.perf_counter()
        response = httpx.post(
            f"{url}/v1/audio/generate", json={**body, "seed": seed}, timeout=REQUEST_TIMEOUT_S
        )
        return response.status_code, time.perf_counter() - start

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(1, clients + 1)))
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    seconds = [s for _, s in answers]
    return {
        "clients": clients,
        "statuses": statuses,
        "all_answered_200": statuses == {"200": clients},
        "wall_s": round(time.perf_counter() - began, 2),
        "p50_s": round(statistics.median(seconds), 4),
        "p99_s": round(percentile(seconds, 99), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequential", type=int, default=1000, help="sequential requests (default 1000)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--json", type=Path, help="write the report here")
    arguments = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments)
    if args.sequential < 1 or args.clients < 1:
        parser.error("--sequential and --clients must be at least 1")
    pipe = StableAudio.load("tiny-random", device="cpu", cuda_graph=False)
    # Every client may wait: the queue holds them all.
    server = BackgroundServer(create_app(pipe, ServeSettings("tiny-random", max_queue=args.clients)))
    try:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            sequential(client, server.url, WARMUP_REQUESTS)
            after_warmup = resident_mb()
            steady = sequential(client, server.url, args.sequential)
            at_end = resident_mb()
        crowd = concurrent(server.url, args.clients)
    finally:
        server.stop()
    report = {
        **header(torch.device("cpu")),
        "command": " ".join(["python", "benchmarks/serve_load.py", *arguments]),
        "request": BODY,
        "sequential": {**steady, "rss_after_warmup_mb": round(after_warmup, 1),
                       "rss_at_end_mb": round(at_end, 1), "rss_growth_mb": round(at_end - after_warmup, 1)},
        "concurrent": crowd,
    }  # fmt: skip
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
