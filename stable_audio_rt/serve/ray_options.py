"""What sa-serve's options mean to Ray Serve, without importing Ray (checked before Ray starts):
how many replicas, and a Serve config file's `args` as sa-serve's command line."""

from __future__ import annotations

import argparse
import math
from typing import Any

from stable_audio_rt.errors import ConfigError

# Serve's autoscaling rule for sa-serve: its default, with jobs counted as requests.
JOBS_AND_REQUESTS_POLICY = "stable_audio_rt.serve.ray_serve:jobs_and_requests_policy"
# sa-serve's options that are Serve's autoscaling_config fields of the same names (unset: Serve's
# defaults).
AUTOSCALING_DELAYS = ("upscale_delay_s", "downscale_delay_s")


def option_flag(dest: str) -> str:
    """sa-serve's command-line flag for an option's name: upscale_delay_s → --upscale-delay-s."""
    return "--" + dest.replace("_", "-")


def replica_count_options(args: argparse.Namespace, cluster_gpus: int) -> dict[str, Any]:
    """Serve's options for how many replicas: fixed, or autoscaled on ongoing requests (each
    replica aiming at a full batch in flight, after the delays asked for). By default one per GPU,
    or one on CPUs."""
    if args.replicas is not None and (args.min_replicas is not None or args.max_replicas is not None):
        raise ConfigError("--replicas is a fixed count: give it, or --min-replicas/--max-replicas")
    autoscaled = args.min_replicas is not None or args.max_replicas is not None
    delays = {name: getattr(args, name) for name in AUTOSCALING_DELAYS if getattr(args, name) is not None}
    for name, seconds in delays.items():
        flag = option_flag(name)
        if not autoscaled:
            raise ConfigError(f"{flag} applies to autoscaling: give --min-replicas/--max-replicas too")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(f"{flag} must be a number of seconds of at least 0, got {seconds:g}")
    if autoscaled:
        low = 1 if args.min_replicas is None else args.min_replicas
        high = max(low, 1) if args.max_replicas is None else args.max_replicas
        if low < 1:  # Serve would stop the last one while jobs wait: only HTTP requests wake it
            raise ConfigError(f"--min-replicas must be at least 1 (queued jobs need a replica), got {low}")
        if high < low:
            raise ConfigError(f"--max-replicas ({high}) must be at least --min-replicas ({low})")
        target = max(1, args.max_batch)
        scaling = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target,
                   "policy": {"policy_function": JOBS_AND_REQUESTS_POLICY}, **delays}  # fmt: skip
        return {"autoscaling_config": scaling}
    count = args.replicas if args.replicas is not None else max(1, cluster_gpus)
    if count < 1:
        raise ConfigError(f"--replicas must be at least 1, got {count}")
    return {"num_replicas": count}


def replica_cpus(args: argparse.Namespace) -> float:
    """The CPUs a CPU replica takes (--replica-cpus), checked: Ray would take NaN or a negative
    count only to fail with a traceback."""
    cpus = args.replica_cpus
    if not (math.isfinite(cpus) and cpus > 0):
        raise ConfigError(f"--replica-cpus must be a number of CPUs above 0, got {cpus:g}")
    return cpus


def most_replicas(options: dict[str, Any]) -> int:
    scaling = options.get("autoscaling_config")
    return options["num_replicas"] if scaling is None else scaling["max_replicas"]


def options_to_argv(options: dict[str, Any]) -> list[str]:
    """sa-serve's command line for a config file's `args`: true adds a flag, false or null none."""
    argv: list[str] = []
    for name, value in options.items():
        flag = option_flag(name)
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv
