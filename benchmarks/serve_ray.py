"""sa-serve on Ray Serve: throughput with one and with two replicas, over real HTTP on 127.0.0.1.

    python benchmarks/serve_ray.py --json benchmarks/results/serve_ray_cpu.json
    python benchmarks/serve_ray.py --model random-stable-audio-open-small --seconds 11.8 --steps 8 \
        --clients 4 --json benchmarks/results/serve_ray_small_cpu.json

One local Ray (started and stopped here, listening on 127.0.0.1). For each layout, replicas × CPUs
each (default: 1×1, 2×1 and 1×2, so two replicas are compared with one replica given the same
cores as threads), the app is deployed fresh and warmed (requests one after another until each
replica has answered, then one untimed crowd: compiled kernels meet their batch shapes), then
`--clients` clients send one text-to-audio request each at once (distinct seeds). Reports wall
time, requests per second, p50/p99 latency and which replicas answered. The model's dtype and
kernels are its defaults (`auto`); each replica computes with as many threads as CPUs it takes.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import torch
from report import emit, header
from serve_load import REQUEST_TIMEOUT_S, concurrent

try:  # the [ray] extra
    import ray
    from ray import serve

    from stable_audio_rt.serve import ray_serve
except ImportError as e:
    sys.exit(f"serve_ray.py needs Ray Serve ({e}): pip install -e '.[ray]'")

# Warm-up requests one after another, at most this many per replica, until each has answered
# (Serve's routing picks among idle replicas at random).
WARMUP_PER_REPLICA = 20


def layout(text: str) -> tuple[int, float]:
    """'2x1': two replicas of one CPU each."""
    replicas, _, cpus = text.partition("x")
    try:
        return int(replicas), float(cpus)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want REPLICASxCPUS, e.g. 2x1") from None


def deploy(model: str, replicas: int, cpus: float, max_batch: int, clients: int) -> None:
    options = {"model": model, "device": "cpu", "replicas": replicas, "replica_cpus": cpus,
               "max_batch": max_batch, "max_queue": clients + 1}  # fmt: skip
    serve.run(ray_serve.app_builder(options), name=ray_serve.APP_NAME, route_prefix="/")


def answering_replicas(url: str, body: dict, replicas: int) -> Counter:
    """Requests one after another until `replicas` replicas have answered (or the warm-up's
    bound): how many each answered."""
    answered: Counter = Counter()
    for seed in range(WARMUP_PER_REPLICA * replicas):
        seeded = {**body, "seed": seed}
        answer = httpx.post(f"{url}/v1/audio/generate", json=seeded, timeout=REQUEST_TIMEOUT_S)
        answer.raise_for_status()
        answered[answer.headers["x-replica"]] += 1
        if len(answered) == replicas:
            break
    return answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument(
        "--layouts", type=layout, nargs="+", default=[(1, 1.0), (2, 1.0), (1, 2.0)], help="REPLICASxCPUS"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=0.5, help="audio_length of each request")
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps of each request")
    parser.add_argument("--max-batch", type=int, default=4, help="sa-serve --max-batch of each replica")
    parser.add_argument("--json", type=Path)
    arguments = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments)
    if args.clients < 1 or args.max_batch < 1 or min(r for r, _ in args.layouts) < 1:
        parser.error("--clients, --max-batch and every layout's replicas must be at least 1")
    cpus_needed = max(r * c for r, c in args.layouts)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    body = {"input": "rain on a tin roof", "audio_length": args.seconds, "num_inference_steps": args.steps}
    rows = []
    ray_serve.start_local_ray(num_cpus=max(cpus_needed, os.cpu_count() or 1), log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas, cpus in args.layouts:
            began = time.perf_counter()
            deploy(args.model, replicas, cpus, args.max_batch, args.clients)  # until every replica is up
            start_s = time.perf_counter() - began
            warmed = answering_replicas(url, body, replicas)
            concurrent(url, args.clients, body)  # untimed: batch shapes met once (compiled kernels)
            crowd = concurrent(url, args.clients, body)
            row = {"replicas": replicas, "cpus_per_replica": cpus, "start_s": round(start_s, 1),
                   "warmup_replicas_seen": len(warmed), **crowd,
                   "requests_per_s": round(args.clients / crowd["wall_s"], 3)}  # fmt: skip
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
            serve.delete(ray_serve.APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    base = rows[0]["requests_per_s"]
    for row in rows:
        row["throughput_vs_first"] = round(row["requests_per_s"] / base, 2)
    emit(
        {
            **header(torch.device("cpu")),
            "command": " ".join(["python", "benchmarks/serve_ray.py", *arguments]),
            "ray": ray.__version__,
            "model": args.model,
            "request": body,
            "clients": args.clients,
            "max_batch": args.max_batch,
            "rows": rows,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
