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
        "torch": torch.__version__,
    }


def emit(report: dict[str, Any], path: Path | None) -> None:
    """Print the report; also write it to `path` (temp file + rename) when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        write_atomically(path, text + "\n")
