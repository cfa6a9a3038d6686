"""What every benchmark report carries: when, on what, with which versions; and its atomic write."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from stable_audio_rt.atomic import write_atomically


def header(device: torch.device) -> dict[str, Any]:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.machine()}, {os.cpu_count()} cores"
    )
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": name,
        "cpu": cpu_model(),  # named in every result: CPUs here differ between machines
        "torch": torch.__version__,
    }


def cpu_model() -> str:
    """The processor's name as Linux reports it ("unknown" elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def emit(report: dict[str, Any], path: Path | None) -> None:
    """Print the report; also write it to `path` (temp file + rename) when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        write_atomically(path, text + "\n")
