"""sa-serve: load a model once, warm it, and answer generation requests over HTTP.

Listens on 127.0.0.1 unless told otherwise; with an API key (--api-key or SA_SERVE_API_KEY)
every endpoint but /health, the web page and the API's description (/docs, /openapi.json)
needs `Authorization: Bearer <key>`. SIGTERM (or Ctrl-C) stops
accepting, finishes the open requests and the accepted jobs, then exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
from dataclasses import replace
from typing import NoReturn

from stable_audio_rt import __version__
from stable_audio_rt.cli_exit import run_without_teardown
from stable_audio_rt.errors import EXIT_BY_SIGNAL, ConfigError, reported_errors
from stable_audio_rt.runtime.cli import add_load_arguments, plan_from_arguments
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.serve.app import DEFAULT_MAX_STEPS, DEFAULT_MAX_UPLOAD_MB, ServeSettings
from stable_audio_rt.serve.bodies import MIB
from stable_audio_rt.serve.draining import DEFAULT_DRAIN_GRACE_S
from stable_audio_rt.serve.ray_options import option_flag, replica_count_options, replica_cpus

API_KEY_VARIABLE = "SA_SERVE_API_KEY"
DEFAULT_PORT = 8000
# Connections the listening socket queues before they are accepted (uvicorn's default).
LISTEN_BACKLOG = 2048
# Dynamic batching: clips per pipeline call, and how long a batch waits for more requests (a
# short wait: an idle server answers a lone request that much later).
DEFAULT_MAX_BATCH = 4
DEFAULT_BATCH_WAIT_MS = 10.0
# The warm-up request: the shortest that runs every stage (and loads every lazy piece), in the
# model's window, or the longest an engine folder's profile takes (`--frames 1:256:512`).
WARMUP = dict(steps=2, seed=0)
WARMUP_SECONDS = 0.5
# The Ray Serve group's options besides --ray itself: meaningless without it.
RAY_ONLY = ("address", "replicas", "min_replicas", "max_replicas", "upscale_delay_s", "downscale_delay_s",
            "replica_cpus")  # fmt: skip

EXAMPLES = """examples:
  sa-serve --model tiny-random                       # a smoke test on http://127.0.0.1:8000
  sa-serve --engines engines/sao-fp16 --port 9000    # TensorRT plans from sa-export --fp16
  curl -s 127.0.0.1:8000/v1/audio/generate -H 'Content-Type: application/json' \\
       -d '{"input": "rain on a tin roof", "audio_length": 5}' -o rain.wav
  curl -s 127.0.0.1:8000/v1/audio/generate -F init_audio=@loop.wav \\
       -F 'request={"input": "jazz drums", "init_noise_level": 3}' -o variation.wav
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sa-serve",
        description="Serve Stable Audio Open over HTTP: POST /v1/audio/generate (vLLM-Omni's fields), "
        "jobs at /v1/audio/jobs (submit, poll, download, cancel), GET /v1/models, /metrics "
        "(Prometheus), /health, /docs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_load_arguments(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
    p.add_argument(
        "--api-key",
        help=f"require `Authorization: Bearer KEY` (default: ${API_KEY_VARIABLE} when set, else none)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="requests and jobs waiting or running before 429 (default: 16)",
    )
    p.add_argument(
        "--job-ttl-s",
        type=float,
        default=3600.0,
        help="how long a finished job's result is kept (default: 3600)",
    )
    p.add_argument(
        "--job-timeout-s",
        type=float,
        help="a job still queued or running this many seconds after it was submitted fails "
        "(a running one stops at its next step boundary; default: no limit)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"the largest request body in MiB, uploaded audio included; larger ones get 413 "
        f"(default: {DEFAULT_MAX_UPLOAD_MB})",
    )
    p.add_argument(
        "--drain-grace-s",
        type=float,
        default=DEFAULT_DRAIN_GRACE_S,
        help="the first SIGTERM or Ctrl-C refuses new work (503) and lets the accepted requests and "
        "jobs finish while still answering; it stops once every finished job's result has been "
        "downloaded, or this many seconds after the work ran out; a second signal stops at once "
        f"(default: {DEFAULT_DRAIN_GRACE_S:g})",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_MAX_STEPS,
        help="the most sampler steps a request may ask for (num_inference_steps); more get 422 "
        f"(default: {DEFAULT_MAX_STEPS}, the range of stable-audio-tools' own web UI)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="requests waiting together that can share a pipeline call (text-to-audio with the same "
        "window, steps, CFG on or off, guidance, noise kind, σ range, negative prompt given or not) "
        "run as one batch of up to this many clips, each getting its own prompt, seed and settings' "
        f"audio; 1 runs every request alone (default: {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULT_BATCH_WAIT_MS,
        help="how long a batch waits for more requests or jobs to join it before it runs (default: "
        f"{DEFAULT_BATCH_WAIT_MS:g}; longer batches more under light load, at that much added latency)",
    )
    ray = p.add_argument_group(
        "Ray Serve",
        "serve through Ray Serve instead (pip install 'stable-audio-rt[ray]'): the same API and page, "
        "replicas of the model over a Ray cluster's GPUs (one each) or CPUs, jobs readable through any",
    )
    ray.add_argument("--ray", action="store_true", help="deploy on Ray Serve and serve through its proxy")
    ray.add_argument(
        "--address",
        help="the Ray cluster to join: 'auto' (the one this machine is part of) or ray://HOST:10001 "
        "(default: start a Ray on this machine)",
    )
    ray.add_argument(
        "--replicas", type=int, help="this many replicas (default: one per GPU of the cluster, or 1)"
    )
    ray.add_argument(
        "--min-replicas",
        type=int,
        help="autoscale on ongoing requests and jobs from this many replicas, at least 1 (default with "
        "--max-replicas: 1)",
    )
    ray.add_argument("--max-replicas", type=int, help="... up to this many")
    ray.add_argument(
        "--upscale-delay-s",
        type=float,
        help="autoscaling: how long the load must call for more replicas before one is added "
        "(default: Ray Serve's, 30 s)",
    )
    ray.add_argument(
        "--downscale-delay-s",
        type=float,
        help="autoscaling: how long it must call for fewer before one is stopped (default: Ray "
        "Serve's, 600 s)",
    )
    ray.add_argument(
        "--replica-cpus",
        type=float,
        default=1,
        help="CPUs each replica takes where the cluster has no GPU (its torch threads; default: 1)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def settings_from_arguments(args: argparse.Namespace, model_name: str) -> ServeSettings:
    """The server's settings, checked (a ConfigError names the option), before anything loads."""
    for dest in ("job_ttl_s", "job_timeout_s", "max_upload_mb", "drain_grace_s", "batch_wait_ms"):
        value = getattr(args, dest)
        if value is not None and not math.isfinite(value):  # NaN passes every comparison below
            raise ConfigError(f"{option_flag(dest)} must be a finite number, got {value}")
    if args.max_queue < 1:
        raise ConfigError("--max-queue must be at least 1")
    if args.job_ttl_s <= 0:
        raise ConfigError("--job-ttl-s must be positive")
    if args.job_timeout_s is not None and args.job_timeout_s <= 0:
        raise ConfigError("--job-timeout-s must be positive")
    if args.max_upload_mb <= 0:
        raise ConfigError("--max-upload-mb must be positive")
    if args.drain_grace_s < 0:
        raise ConfigError("--drain-grace-s must be ≥ 0")
    if args.max_steps < 1:
        raise ConfigError("--max-steps must be at least 1")
    if args.max_batch < 1:
        raise ConfigError("--max-batch must be at least 1")
    if args.batch_wait_ms < 0:
        raise ConfigError("--batch-wait-ms must be ≥ 0")
    if not 0 <= args.port < 2**16:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    return ServeSettings(
        model_name,
        args.api_key or os.environ.get(API_KEY_VARIABLE) or None,  # an empty key is none
        max_queue=args.max_queue,
        job_ttl_s=args.job_ttl_s,
        max_upload_bytes=int(args.max_upload_mb * MIB),
        max_steps=args.max_steps,
        drain_grace_s=args.drain_grace_s,
        job_timeout_s=args.job_timeout_s,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
    )


def refuse_ray_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Without --ray, the Ray Serve group's options would do nothing: name them."""
    given = [option_flag(dest) for dest in RAY_ONLY if getattr(args, dest) != parser.get_default(dest)]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of sa-serve --ray "
            "(replicas on Ray Serve): add --ray, or leave them out to serve from this process"
        )


def loaded(args: argparse.Namespace, settings: ServeSettings) -> tuple[StableAudio, ServeSettings]:
    """The pipeline the arguments name, loaded and warmed, and the server's settings with the
    model's name."""
    plan = plan_from_arguments(args, "sa-serve")
    settings = replace(settings, model_name=str(plan.model or plan.engines))
    pipe = StableAudio.from_plan(plan, cuda_graph=not args.no_cuda_graph)
    print("sa-serve: warming up", file=sys.stderr)
    frames = min(pipe.config.latent_frames, pipe.components.most_frames())
    seconds = min(WARMUP_SECONDS, frames * pipe.config.vae.downsampling_ratio / pipe.config.sample_rate)
    pipe.generate("warm-up", frames=frames, seconds_total=seconds, **WARMUP)
    return pipe, settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ray:
        return serve_on_ray(args, argv)
    with reported_errors("sa-serve", "not serving") as failed:
        refuse_ray_options(args, parser)
        settings = settings_from_arguments(args, "")
        listening = listening_socket(args.host, args.port)  # a port in use is said now, not after loading
        try:
            warn_if_open(listening, settings.api_key)
            pipe, settings = loaded(args, settings)
        except BaseException:
            listening.close()
            raise
    if failed.exit_status is not None:
        return failed.exit_status
    return serve(pipe, settings, listening)


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, listening before anything loads: a host that does not resolve or a
    port already in use is refused in a moment, not after the model has loaded and warmed."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ConfigError(
            f"--host {host}: not an address this machine has ({e.strerror}); give an IP address such "
            "as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from e
    listening = socket.socket(family, kind, protocol)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        listening.bind(address)
        # Listening at once holds the port; a client connecting while the model loads waits.
        listening.listen(LISTEN_BACKLOG)
    except OSError as e:
        listening.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror}): another server has the port? give --port"
        ) from e
    return listening


def warn_if_open(listening: socket.socket, api_key: str | None) -> None:
    """Listening beyond this machine without a key lets anyone who reaches it use the model."""
    host = listening.getsockname()[0]
    if api_key is None and not ipaddress.ip_address(host).is_loopback:
        print(
            f"sa-serve: warning: listening on {host} without an API key: anyone who can reach this "
            f"machine can use the model; give --api-key (or ${API_KEY_VARIABLE})",
            file=sys.stderr,
        )


def serve_on_ray(args: argparse.Namespace, argv: list[str]) -> int:
    """sa-serve --ray: the options checked and Ray Serve there, before Ray starts."""
    with reported_errors("sa-serve", "not serving") as failed:
        try:
            from stable_audio_rt.serve import ray_serve
        except ImportError as e:
            raise ConfigError(
                f"sa-serve --ray needs Ray Serve ({e}): pip install 'stable-audio-rt[ray]'"
            ) from e
        settings_from_arguments(args, "")
        replica_count_options(args, 0)
        replica_cpus(args)
        if args.address is None:  # the replicas and the proxy run here: what they would refuse, now
            listening_socket(args.host, args.port).close()
            plan_from_arguments(args, "sa-serve")
    if failed.exit_status is not None:
        return failed.exit_status
    with reported_errors("sa-serve", "not serving") as failed:  # a signal while it deploys
        ray_serve.serve_on_ray(args, argv)
    return 0 if failed.exit_status is None else failed.exit_status


def serve(pipe: StableAudio, settings: ServeSettings, listening: socket.socket) -> int:
    """Until stopped; the exit status: 0 after a drain, 128 + the signal's number when a second
    signal cut it short (as a process killed by that signal reports)."""
    import uvicorn

    from stable_audio_rt.serve.app import create_app
    from stable_audio_rt.serve.draining import DrainingServer

    logging.basicConfig(level=logging.INFO, format="sa-serve: %(message)s")
    host, port = listening.getsockname()[:2]
    app = create_app(pipe, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="info")
    shown = f"[{host}]" if ":" in host else host
    print(f"sa-serve: serving on http://{shown}:{port} (the web page at /, the API's docs at /docs)")
    drain = app.state.drain
    DrainingServer(config, drain).run(sockets=[listening])
    if not drain.cut_short:
        return 0
    print(
        f"sa-serve: stopped by a second {signal.Signals(drain.signal).name}: the jobs left were cancelled "
        "and the requests still running answered 503",
        file=sys.stderr,
    )
    return EXIT_BY_SIGNAL + drain.signal


def command() -> NoReturn:
    """The `sa-serve` command (pyproject's [project.scripts]): `main`, without the interpreter's
    teardown once the server has stopped (its atexit handlers, Ray's shutdown among them, run)."""
    run_without_teardown(main)


if __name__ == "__main__":
    command()
