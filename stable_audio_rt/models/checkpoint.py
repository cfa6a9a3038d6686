"""Locating a checkpoint (local folder, single file, or Hugging Face repo) and reading its tensors.

Hub access goes through huggingface_hub, so the user's token (`HF_TOKEN` or `hf auth login`),
cache and `HF_HUB_OFFLINE` apply as they do everywhere else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open

from stable_audio_rt.errors import CheckpointError, ConfigError, ModelAccessError

DEFAULT_REPO = "stabilityai/stable-audio-open-1.0"
HASH_BLOCK = 1 << 24
Layout = Literal["auto", "diffusers", "single_file"]
LAYOUTS: tuple[Layout, ...] = ("auto", "diffusers", "single_file")

DIFFUSERS_INDEX = "model_index.json"
SINGLE_FILE_WEIGHTS = "model.safetensors"
# The same weights as a Lightning checkpoint; read with torch.load(weights_only=True).
SINGLE_FILE_CKPT = "model.ckpt"
SINGLE_FILE_CONFIG = "model_config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
# What a diffusers StableAudioPipeline needs; the scheduler is ours, not the checkpoint's.
DIFFUSERS_PATTERNS = [
    DIFFUSERS_INDEX,
    "transformer/*",
    "vae/*",
    "projection_model/*",
    "text_encoder/*",
    "tokenizer/*",
]
SINGLE_FILE_PATTERNS = [SINGLE_FILE_WEIGHTS, SINGLE_FILE_CONFIG, "text_encoder/*", "tokenizer/*"]
# Just what the config parsers read: lets requests be checked before weights are fetched.
CONFIG_PATTERNS = [DIFFUSERS_INDEX, SINGLE_FILE_CONFIG, "*/config.json", "tokenizer/tokenizer_config.json"]
# A config file named as the model stands for its folder, in the layout it marks.
MARKER_LAYOUTS: dict[str, Literal["diffusers", "single_file"]] = {
    DIFFUSERS_INDEX: "diffusers",
    SINGLE_FILE_CONFIG: "single_file",
}
# A file named as the model with one of these extensions is the single-file weights to read,
# whatever its name (a fine-tune saved beside the original's model.safetensors).
WEIGHTS_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class CheckpointLocation:
    root: Path
    layout: Literal["diffusers", "single_file"]
    # The single-file weights named as the model; None: the folder's own (`single_file_weights`).
    named_weights: Path | None = None

    def weights(self) -> Path:
        """The single-file layout's weights file: the one named, else the folder's."""
        return self.named_weights or single_file_weights(self.root)


def _detect_layout(root: Path, layout: Layout) -> CheckpointLocation:
    has_diffusers = (root / DIFFUSERS_INDEX).is_file()
    has_single = (root / SINGLE_FILE_CONFIG).is_file()
    if layout == "auto":
        if has_diffusers:
            return CheckpointLocation(root, "diffusers")
        if has_single:
            return CheckpointLocation(root, "single_file")
        raise CheckpointError(
            f"{root} holds neither {DIFFUSERS_INDEX} (diffusers layout) nor {SINGLE_FILE_CONFIG} "
            f"(single-file layout); point at a Stable Audio checkpoint folder"
        )
    marker = DIFFUSERS_INDEX if layout == "diffusers" else SINGLE_FILE_CONFIG
    if not (root / marker).is_file():
        raise CheckpointError(f"{root} has no {marker}, so it is not in the {layout} layout")
    return CheckpointLocation(root, layout)


def _download(repo_id: str, patterns: list[str], token: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, token=token))
    except GatedRepoError as e:
        raise ModelAccessError(
            f"{repo_id} is gated: accept its licence on its Hugging Face page, then log in with "
            f"`hf auth login` or set HF_TOKEN"
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelAccessError(
            f"{repo_id} was not found on the Hugging Face Hub (or your token cannot see it); "
            f"check the name, or pass a local folder"
        ) from e
    except LocalEntryNotFoundError as e:
        raise ModelAccessError(
            f"{repo_id} is not in the local cache and the Hub cannot be reached (offline, or "
            f"HF_HUB_OFFLINE=1); download it once with network access, or pass a local folder"
        ) from e


def locate_checkpoint(
    source: str | Path = DEFAULT_REPO,
    layout: Layout = "auto",
    token: str | None = None,
    configs_only: bool = False,
) -> CheckpointLocation:
    """A local folder, its `model_config.json`/`model_index.json`, single-file weights under any
    name (`finetune.safetensors`, read with the `model_config.json` beside it), or a Hub repo id.

    `configs_only` fetches only the config files of a Hub repo (for checks before a download).
    An empty name (an unset variable, `--model ""`) is refused, not taken for the current folder.
    """
    if isinstance(source, str) and not source.strip():
        raise ConfigError(
            "the model name is empty: give a Hub repo id, a local folder or a random model such as "
            f"tiny-random, or leave it out for {DEFAULT_REPO}"
        )
    path = Path(source).expanduser()
    if path.is_file():
        return _locate_file(path, layout)
    if path.is_dir():
        return _detect_layout(path, layout)
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        if configs_only:
            return _detect_layout(_download(text, CONFIG_PATTERNS, token), layout)
        if layout == "auto":
            # The config files say which layout the repo has (1.0 has both, Small only the
            # single file); then only that layout's files are fetched.
            layout = _detect_layout(_download(text, CONFIG_PATTERNS, token), "auto").layout
        patterns = SINGLE_FILE_PATTERNS if layout == "single_file" else DIFFUSERS_PATTERNS
        return _detect_layout(_download(text, patterns, token), layout)
    raise CheckpointError(f"{source} is neither an existing file or folder nor a Hub repo id (owner/name)")


def _locate_file(path: Path, layout: Layout) -> CheckpointLocation:
    """A file named as the model: a folder's config file, or single-file weights under any name
    (read with the `model_config.json` beside them, as stable-audio-tools lays them out)."""
    if path.name in MARKER_LAYOUTS:
        return _detect_layout(path.parent, MARKER_LAYOUTS[path.name] if layout == "auto" else layout)
    if path.suffix.lower() not in WEIGHTS_SUFFIXES:
        raise CheckpointError(
            f"{path} is not a checkpoint file: give the checkpoint's folder, its {SINGLE_FILE_CONFIG} or "
            f"{DIFFUSERS_INDEX}, or a weights file ({', '.join(WEIGHTS_SUFFIXES)})"
        )
    if layout == "diffusers":
        raise ConfigError(
            f"{path} is a single-file checkpoint's weights, not the diffusers layout: give layout "
            f"'single_file' or 'auto', or the diffusers folder"
        )
    if not (path.parent / SINGLE_FILE_CONFIG).is_file():
        raise CheckpointError(
            f"{path} has no {SINGLE_FILE_CONFIG} beside it: put the model's stable-audio-tools "
            f"config there under that name"
        )
    return CheckpointLocation(path.parent, "single_file", path)


def single_file_weights(root: Path) -> Path:
    """model.safetensors, else model.ckpt (both layouts of stable-audio-tools' repos)."""
    safetensors = root / SINGLE_FILE_WEIGHTS
    if safetensors.is_file() or not (root / SINGLE_FILE_CKPT).is_file():
        return safetensors
    return root / SINGLE_FILE_CKPT


class _TorchCheckpoint:
    """A `model.ckpt` seen like a safetensors handle. torch.load with weights_only=True never
    runs pickled code, and mmap=True leaves the tensors on disk until they are read."""

    def __init__(self, path: Path) -> None:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises several kinds for unreadable or unsafe pickles
            raise CheckpointError(
                f"{path} cannot be read as a weights-only torch checkpoint ({e}); use model.safetensors"
            ) from e
        state = data.get("state_dict", data) if isinstance(data, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path} holds no state_dict of tensors; not a Stable Audio checkpoint")
        self._state = state

    def keys(self):
        return self._state.keys()

    def get_tensor(self, key: str) -> torch.Tensor:
        return self._state[key]


def _open(path: Path):
    if path.suffix.lower() == ".ckpt":
        return _TorchCheckpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete (download it again)")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable_weights(str(path), e) from e


def unreadable_weights(what: str, error: Exception) -> CheckpointError:
    """The refusal of a weights file safetensors cannot read: `what` names it."""
    return CheckpointError(
        f"{what} is not a readable safetensors file ({error}); it is probably truncated or corrupt: "
        "delete it and download it again"
    )


class TensorSource:
    """Lazy, keyed access to the tensors of one or more safetensors files.

    Tensors are read one at a time on request, so a load never holds a second full copy of
    the checkpoint. Keys that were read are recorded, so unused keys can be reported.
    """

    def __init__(self, files: Sequence[Path], prefix: str = "") -> None:
        """All tensors of `files` whose key starts with `prefix` (keys keep their full name)."""
        self._where: dict[str, tuple[Path, object]] = {}
        for path in files:
            handle = _open(path)
            for key in handle.keys():
                if key.startswith(prefix):
                    self._where[key] = (path, handle)
        if not self._where:
            raise CheckpointError(
                f"no tensors{f' under {prefix!r}' if prefix else ''} in {', '.join(map(str, files))}: "
                f"not a Stable Audio checkpoint"
            )
        self.used: set[str] = set()

    @classmethod
    def for_component(cls, folder: Path, weights: str = DIFFUSERS_WEIGHTS) -> TensorSource:
        """A diffusers component folder: one safetensors file, or shards listed in an index."""
        index = folder / f"{weights}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return cls([folder / s for s in shards])
        return cls([folder / weights])

    def keys(self) -> set[str]:
        return set(self._where)

    def get(self, key: str) -> torch.Tensor:
        if key not in self._where:
            files = sorted({str(p) for p, _ in self._where.values()})
            raise CheckpointError(
                f"missing key {key!r} in {', '.join(files) or 'the checkpoint'}: the checkpoint is "
                f"incomplete or was not saved from this model"
            )
        path, handle = self._where[key]
        try:
            tensor = handle.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {key!r} from {path} ({e}); the file is corrupt") from e
        self.used.add(key)
        return tensor


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(location: CheckpointLocation) -> str:
    """sha256 over the weights files of a checkpoint (names and contents): every one in its folder,
    or, where single-file weights are named, those and the ones in subfolders (T5) only."""
    root = location.root
    files = [*root.rglob("*.safetensors"), *root.glob("*.ckpt")]
    if location.named_weights is not None:
        files = [location.named_weights, *(f for f in files if f.parent != root)]
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
