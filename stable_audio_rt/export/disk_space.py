"""Room for an export, checked before the model loads: a disk too full for the graphs was found
only when a write failed, after minutes of loading and tracing (that failure is still one clear
line, `atomic.writing`, for what this check cannot foresee).

The estimate is a floor, not a guess: the bytes of the weights the graphs to be written hold,
counted from the config alone (modules built on the meta device: no weights read) in the export's
precision. A disk with less free is sure to fill; one with more may still, and is let through.
Left out, so that it stays a floor: T5's graph (`COUNTED`), and the TensorRT plans, which
sa-export builds after the swap and only where it finds TensorRT and a GPU then.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from stable_audio_rt.export.onnx_export import ExportError
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.vae import OobleckDecoder, OobleckEncoder
from stable_audio_rt.precision import DTYPES

# A graph holds each weight of its module once, as an initializer in the export's precision;
# its nodes, the fp32 islands (Snake's α and β) and the exporter's folded constants only add
# to that. Measured on tiny-random's graphs at fp32 and fp16: their initializers are the
# weights' bytes to within 0.4%, their files 1.04× (the DiT at fp32) to 1.23× (the VAE encoder at
# fp16) of them. So the floor counts the weights once.
GRAPH_BYTES_PER_WEIGHT_BYTE = 1.0
# The components whose module the config alone builds. T5 is left out (the floor stays a
# floor): its shape is the text encoder's own config, not at hand without a download.
COUNTED: dict[str, Callable[[StableAudioConfig], nn.Module]] = {
    "dit": lambda config: DiT(config.dit),
    "vae_decoder": lambda config: OobleckDecoder(config.vae),
    "vae_encoder": lambda config: OobleckEncoder(config.vae),
}


def graph_bytes_floor(config: StableAudioConfig, components: Iterable[str], precision: str) -> int:
    """The fewest bytes the graphs of `components` at `precision` take (module docstring)."""
    weights = 0
    for name in components:
        if name not in COUNTED:
            continue
        with torch.device("meta"):  # shapes only: a 1 B-parameter DiT in milliseconds, no memory
            module = COUNTED[name](config)
        weights += sum(p.numel() for p in module.parameters())
    return int(weights * DTYPES[precision].itemsize * GRAPH_BYTES_PER_WEIGHT_BYTE)


def _filesystem_of(folder: Path) -> Path:
    """The mount point of the filesystem `folder` is on."""
    folder = folder.resolve()
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def check_free_space(out: Path, existing: Path, needed: int) -> None:
    """Refuse an export into `out` (whose nearest existing folder is `existing`) when its
    filesystem has fewer than `needed` bytes free."""
    try:
        free = shutil.disk_usage(existing).free
    except OSError:  # a filesystem that cannot say (some network and FUSE ones): let it try
        return
    if free < needed:
        raise ExportError(
            f"cannot export into {out}: its filesystem (mounted at {_filesystem_of(existing)}) has "
            f"{_size(free)} ({free} bytes) free, and the graphs need at least {_size(needed)} "
            f"({needed} bytes): free space on that disk, or give another --out"
        )
