"""The engine folder's `manifest.json`: what was exported, from which weights, how it checked out.

Written by sa-export, read by every engine backend (which never import the exporter). A folder
whose files, weights or tools no longer match its manifest is refused with the fix named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stable_audio_rt.errors import CheckpointError
from stable_audio_rt.models.config import (
    ConditioningConfig,
    DiTConfig,
    NumberConditionerConfig,
    OobleckConfig,
    StableAudioConfig,
)
from stable_audio_rt.models.io_spec import axis_sizes

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TOKENIZER_DIR = "tokenizer"
NUMBERS_FILE = "number_conditioners.safetensors"
HASH_BLOCK = 1 << 24
# Files above this size are checked by size at load time, not re-hashed (a 4 GB DiT would
# take seconds on every start); sa-export still records their hash.
REHASH_LIMIT = 1 << 28


class EngineFolderError(CheckpointError):
    """An engine folder is missing, incomplete, edited or built from other weights."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(root: Path) -> str:
    """sha256 over every weights file of a checkpoint folder (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted([*root.rglob("*.safetensors"), *root.glob("*.ckpt")]):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def config_to_dict(config: StableAudioConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> StableAudioConfig:
    vae = dict(data["vae"])
    vae["channel_multiples"], vae["strides"] = tuple(vae["channel_multiples"]), tuple(vae["strides"])
    cond = dict(data["conditioning"])
    cond["numbers"] = tuple(NumberConditionerConfig(**n) for n in cond["numbers"])
    cond["cross_attention_ids"] = tuple(cond["cross_attention_ids"])
    cond["global_ids"] = tuple(cond["global_ids"])
    return StableAudioConfig(
        sample_rate=data["sample_rate"],
        sample_size=data["sample_size"],
        dit=DiTConfig(**data["dit"]),
        vae=OobleckConfig(**vae),
        conditioning=ConditioningConfig(**cond),
        objective=data.get("objective", "v"),
    )


@dataclass
class ComponentEntry:
    file: str
    precision: str  # what the graph carries
    requested_precision: str  # what was asked for (T5 may stay fp32 where fp16 overflows)
    batch: list[int]  # min, opt, max
    frames: list[int]  # min, opt, max
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    files: dict[str, dict[str, Any]]  # every file of the component → {"sha256", "bytes"}
    verification: dict[str, Any]
    note: str = ""
    # TensorRT plugin ops the graph calls ("namespace::name"); empty for standard ONNX.
    plugins: list[str] = field(default_factory=list)
    # The TensorRT plan built from the graph: file, sha256/bytes, TensorRT version, GPU name and
    # compute capability (a plan runs only there); empty when none was built.
    engine: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    source: str
    weights_sha256: str
    config: dict[str, Any]
    opset: int
    tools: dict[str, str]
    components: dict[str, ComponentEntry] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def write(self, folder: Path) -> None:
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        tmp.replace(folder / MANIFEST)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise EngineFolderError(f"{folder} has no {MANIFEST}: build it with `sa-export --out {folder}`")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT_VERSION:
                raise EngineFolderError(
                    f"{path} is format {data.get('format')}, this version reads {FORMAT_VERSION}: rebuild "
                    f"with `sa-export`"
                )
            data["components"] = {k: ComponentEntry(**v) for k, v in data["components"].items()}
            return cls(**data)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise EngineFolderError(f"{path} is not a valid manifest ({e}); rebuild with `sa-export`") from e

    @property
    def model_config(self) -> StableAudioConfig:
        return config_from_dict(self.config)

    def entry(self, folder: Path, component: str) -> ComponentEntry:
        """The component's entry, or the error naming the export that adds it."""
        if component not in self.components:
            raise EngineFolderError(
                f"{folder} has no {component!r} engine (it has {sorted(self.components)}); export it with "
                f"`sa-export --components {component}`"
            )
        return self.components[component]

    def check_files(self, folder: Path, component: str) -> ComponentEntry:
        """The component's entry, after checking each of its files against its hash."""
        entry = self.entry(folder, component)
        for name, expected in entry.files.items():
            check_file(folder / name, expected, "rebuild the engines with `sa-export`")
        return entry


def check_file(path: Path, record: dict[str, Any], fix: str) -> None:
    """Refuse a file that is missing or differs from its manifest record; `fix` says what to do."""
    if not path.is_file():
        raise EngineFolderError(f"{path} is missing: {fix}")
    if not matches_record(path, record):
        raise EngineFolderError(f"{path} does not match {MANIFEST} (edited, truncated or replaced): {fix}")


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def matches_record(path: Path, expected: dict[str, Any]) -> bool:
    """Whether the file `path` has the size and (up to REHASH_LIMIT) the sha256 of `file_record`."""
    size = path.stat().st_size
    return size == expected["bytes"] and (size > REHASH_LIMIT or sha256_file(path) == expected["sha256"])


def profile_shapes(
    entry: ComponentEntry, config: StableAudioConfig
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Each input's (min, opt, max) shape from the manifest's batch and frame ranges: the
    TensorRT profile sa-export builds, and the one the runtime checks a plan against."""
    sizes = [axis_sizes(config, b, f) for b, f in zip(entry.batch, entry.frames, strict=True)]
    return {
        spec["name"]: tuple(tuple(a if isinstance(a, int) else s[a] for a in spec["axes"]) for s in sizes)
        for spec in entry.inputs
    }
