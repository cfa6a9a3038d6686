"""The engine folder's `manifest.json`: what was exported, from which weights, how it checked out.

Written by sa-export, read by every engine backend; it sits beside both because the runtime never
imports the exporter. The JSON becomes typed records once, when a folder is opened (`Manifest.read`
checks every field), so a hand-edited or foreign manifest is refused there with the field named,
not later at some lookup. A folder whose files, weights or tools no longer match its manifest is
refused with the fix named.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stable_audio_rt.atomic import write_atomically
from stable_audio_rt.errors import CheckpointError, ConfigError
from stable_audio_rt.json_fields import (
    Fields,
    InvalidField,
    checked,
    child_path,
    is_integer,
    is_string,
)
from stable_audio_rt.models.checkpoint import sha256_file
from stable_audio_rt.models.config import (
    ConditioningConfig,
    DiTConfig,
    NumberConditionerConfig,
    OobleckConfig,
    StableAudioConfig,
)
from stable_audio_rt.models.io_spec import AXIS_NAMES, COMPONENTS, ELEMENT_KINDS, TensorSpec, axis_sizes
from stable_audio_rt.precision import DTYPES

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TOKENIZER_DIR = "tokenizer"
NUMBERS_FILE = "number_conditioners.safetensors"
TIMING_CACHE = "timing.cache"  # TensorRT's, kept beside the plans (export/trt_build.py)
# What each component may have in the folder: its graph, its external weights, its TensorRT plan.
COMPONENT_SUFFIXES = (".onnx", ".onnx.data", ".plan")
GRAPH_SUFFIXES = COMPONENT_SUFFIXES[:2]  # a graph's files, which its entry's `files` records
# Files above this size are checked by size at load time, not re-hashed (a 4 GB DiT would
# take seconds on every start); sa-export still records their hash.
REHASH_LIMIT = 1 << 28


def folder_names() -> frozenset[str]:
    """Every name sa-export and its TensorRT build may write in an engine folder."""
    per_component = (f"{name}{suffix}" for name in COMPONENTS for suffix in COMPONENT_SUFFIXES)
    return frozenset({MANIFEST, TOKENIZER_DIR, NUMBERS_FILE, TIMING_CACHE, *per_component})


class EngineFolderError(CheckpointError):
    """An engine folder is missing, incomplete, edited or built from other weights."""


def config_to_dict(config: StableAudioConfig) -> dict[str, Any]:
    # As manifest.json holds it (lists, not tuples), so a written manifest reads back equal.
    return json.loads(json.dumps(dataclasses.asdict(config)))


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


@dataclass(frozen=True)
class FileRecord:
    """A file as sa-export wrote it."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class PlanRecord:
    """The TensorRT plan built from a component's graph. A plan runs only on the TensorRT version
    and the GPU (name, "major.minor" compute capability) that built it."""

    file: str
    sha256: str
    bytes: int
    tensorrt: str
    gpu: str
    compute_capability: str

    @property
    def record(self) -> FileRecord:
        return FileRecord(self.sha256, self.bytes)


@dataclass(frozen=True)
class Verification:
    """onnxruntime against the fp32 torch module on random inputs of `input_shapes` drawn with
    `seed`; the worst output's max |ort − torch| and that over max |torch|."""

    max_abs: float
    max_rel: float
    tolerance: float
    finite: bool
    input_shapes: dict[str, tuple[int, ...]]
    seed: int

    @property
    def passed(self) -> bool:
        return self.finite and self.max_rel <= self.tolerance

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"


@dataclass(frozen=True)
class VerificationSkipped:
    """A graph onnxruntime cannot run here (bf16 inputs, TensorRT plugin nodes): nothing compared."""

    reason: str

    @property
    def status(self) -> str:
        return "skipped"


@dataclass(frozen=True)
class ComponentEntry:
    file: str
    precision: str  # what the graph carries
    requested_precision: str  # what was asked for (T5 may stay fp32 where fp16 overflows)
    batch: tuple[int, int, int]  # rows: min, opt, max
    frames: tuple[int, int, int]  # latent frames: min, opt, max
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: dict[str, FileRecord]  # every file of the component, by name
    verification: Verification | VerificationSkipped
    note: str = ""
    # TensorRT plugin ops the graph calls ("namespace::name"); empty for standard ONNX.
    plugins: list[str] = field(default_factory=list)
    engine: PlanRecord | None = None  # None until a plan is built


@dataclass
class Manifest:
    source: str
    weights_sha256: str
    config: dict[str, Any]
    opset: int
    tools: dict[str, str]
    components: dict[str, ComponentEntry] = field(default_factory=dict)
    # What every component's requests read besides the graphs (the tokenizer's files, the number
    # conditioners), by path in the folder: checked like the graphs (absent before 2026-11-30).
    shared_files: dict[str, FileRecord] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def components_adding(self, adding: Iterable[str]) -> str:
        """The `--components` value that keeps this folder's components and adds `adding`."""
        wanted = set(self.components) | set(adding)
        return ",".join(name for name in COMPONENTS if name in wanted)

    def write(self, folder: Path) -> None:
        write_atomically(folder / MANIFEST, json.dumps(_manifest_json(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The folder's manifest with every field checked; a bad one is refused naming the field."""
        path = folder / MANIFEST
        build = f"build it with `sa-export --out {shlex.quote(str(folder))}`"
        if folder.exists() and not folder.is_dir():
            raise EngineFolderError(f"{folder} is a file: give the engine folder sa-export wrote")
        if not folder.is_dir():
            raise EngineFolderError(f"engine folder {folder} does not exist: {build}")
        if not path.is_file():
            raise EngineFolderError(f"{folder} has no {MANIFEST}: {build}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise EngineFolderError(f"{path} is not a valid manifest ({e}); rebuild with `sa-export`") from e
        found = data.get("format") if isinstance(data, dict) else None
        if found != FORMAT_VERSION:
            raise EngineFolderError(
                f"{path} is format {found}, this version reads {FORMAT_VERSION}: rebuild with `sa-export`"
            )
        try:
            return _read_manifest(Fields(data, ""))
        except InvalidField as e:
            raise EngineFolderError(f"{path}: {e}; rebuild with `sa-export`") from e

    @functools.cached_property
    def model_config(self) -> StableAudioConfig:
        """The config as its dataclass, parsed once: every graph of an engine folder reads it."""
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
        """The component's entry, after checking each of its files against its hash, and that
        none of its files in the folder goes unrecorded (a record deleted is a check lost)."""
        entry = self.entry(folder, component)
        for name, expected in entry.files.items():
            check_file(folder / name, expected, "rebuild the engines with `sa-export`")
        for suffix in GRAPH_SUFFIXES:
            name = component + suffix
            if (folder / name).is_file() and name not in entry.files:
                raise EngineFolderError(
                    f"{folder / name} is not recorded in {MANIFEST} (edited?): rebuild the engines "
                    "with `sa-export`"
                )
        return entry

    def check_shared_files(self, folder: Path) -> None:
        """The tokenizer and number conditioners against their records; none of their files
        unrecorded (an older sa-export recorded none, and an edit may drop a record)."""
        fix = "rebuild the engines with `sa-export`"
        unrecorded = [NUMBERS_FILE] if NUMBERS_FILE not in self.shared_files else []
        if not any(name.startswith(f"{TOKENIZER_DIR}/") for name in self.shared_files):
            unrecorded.append(f"{TOKENIZER_DIR}/")
        if unrecorded:
            raise EngineFolderError(
                f"{folder / MANIFEST} records no {' or '.join(unrecorded)} (written by an sa-export before "
                f"2026-11-30, or edited): {fix}"
            )
        for name, expected in self.shared_files.items():
            check_file(folder / name, expected, fix)
        for path in _shared_file_paths(folder):
            if path.relative_to(folder).as_posix() not in self.shared_files:
                raise EngineFolderError(
                    f"{path} is not recorded in {MANIFEST} (written by an sa-export before 2026-11-30, "
                    f"or edited): {fix}"
                )


def shared_file_records(folder: Path) -> dict[str, FileRecord]:
    """The records of the files every request reads besides the graphs, as sa-export wrote them."""
    return {path.relative_to(folder).as_posix(): file_record(path) for path in _shared_file_paths(folder)}


def _shared_file_paths(folder: Path) -> list[Path]:
    """The number conditioners and the tokenizer's files in `folder`, those that are there."""
    candidates = [folder / NUMBERS_FILE, *sorted((folder / TOKENIZER_DIR).rglob("*"))]
    return [path for path in candidates if path.is_file()]


def check_file(path: Path, record: FileRecord, fix: str) -> None:
    """Refuse a file that is missing or differs from its manifest record; `fix` says what to do."""
    if not path.is_file():
        raise EngineFolderError(f"{path} is missing: {fix}")
    if not matches_record(path, record):
        raise EngineFolderError(f"{path} does not match {MANIFEST} (edited, truncated or replaced): {fix}")


def file_record(path: Path) -> FileRecord:
    return FileRecord(sha256_file(path), path.stat().st_size)


def matches_record(path: Path, expected: FileRecord) -> bool:
    """Whether the file `path` has the size and (up to REHASH_LIMIT) the sha256 of `expected`."""
    size = path.stat().st_size
    return size == expected.bytes and (size > REHASH_LIMIT or sha256_file(path) == expected.sha256)


def profile_shapes(
    entry: ComponentEntry, config: StableAudioConfig
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Each input's (min, opt, max) shape from the manifest's batch and frame ranges: the
    TensorRT profile sa-export builds, and the one the runtime checks a plan against."""
    sizes = [axis_sizes(config, b, f) for b, f in zip(entry.batch, entry.frames, strict=True)]
    return {spec.name: tuple(spec.shape(s) for s in sizes) for spec in entry.inputs}


# manifest.json ↔ the records. The layout is format 1 as sa-export has always written it: the
# dataclasses' fields in order, a verification's "status" beside its numbers, `{}` for no plan.


def _manifest_json(manifest: Manifest) -> dict[str, Any]:
    written = dataclasses.asdict(manifest) | {
        "components": {name: _entry_json(entry) for name, entry in manifest.components.items()}
    }
    if not manifest.shared_files:  # a folder of an older sa-export, written back as it was
        del written["shared_files"]
    return written


def _entry_json(entry: ComponentEntry) -> dict[str, Any]:
    check = entry.verification
    return dataclasses.asdict(entry) | {
        "verification": {"status": check.status, **dataclasses.asdict(check)},
        "engine": {} if entry.engine is None else dataclasses.asdict(entry.engine),
    }


def _read_manifest(top: Fields) -> Manifest:
    config = top.get("config", lambda v: isinstance(v, dict), "an object")
    try:
        config_from_dict(config)
    except (KeyError, TypeError, ValueError, ConfigError) as e:  # what the config's constructors raise
        raise InvalidField(f"config is not a model configuration ({type(e).__name__}: {e})") from e
    manifest = Manifest(
        source=top.string("source"),
        weights_sha256=top.string("weights_sha256"),
        config=config,
        opset=top.integer("opset"),
        tools={
            name: checked(v, path, is_string, "a version string") for name, v, path in top.mapping("tools")
        },
        components={
            checked(name, path, _is_component, COMPONENT_WORDS): _read_entry(Fields(v, path))
            for name, v, path in top.mapping("components")
        },
        shared_files={
            checked(name, path, _is_folder_path, FOLDER_PATH_WORDS): _read_file_record(Fields(v, path))
            for name, v, path in top.mapping("shared_files", default={})
        },
        format=top.integer("format"),
    )
    top.done()
    if not manifest.components:  # every reader names the folder's components, as exported
        raise InvalidField(f"components is empty: an export writes at least {COMPONENT_WORDS}")
    return manifest


COMPONENT_WORDS = f"one of {', '.join(COMPONENTS)}"


def _is_component(name: str) -> bool:
    return name in COMPONENTS


PRECISION_WORDS = f"one of {', '.join(DTYPES)}"
FILE_NAME_WORDS = "a file of the folder, without a path"


def _is_precision(value: Any) -> bool:
    return value in DTYPES


def _is_file_name(value: Any) -> bool:
    """A file of the folder itself: no path, so an edited manifest points nowhere outside it."""
    return isinstance(value, str) and value not in ("", ".", "..") and Path(value).name == value


FOLDER_PATH_WORDS = "a path inside the folder"


def _is_folder_path(value: Any) -> bool:
    """A path relative to the folder that stays inside it (no "..", not absolute)."""
    path = PurePosixPath(value)
    return value != "" and not path.is_absolute() and ".." not in path.parts and "\\" not in value


def _read_entry(fields: Fields) -> ComponentEntry:
    entry = ComponentEntry(
        file=fields.get("file", _is_file_name, FILE_NAME_WORDS),
        precision=fields.get("precision", _is_precision, PRECISION_WORDS),
        requested_precision=fields.get("requested_precision", _is_precision, PRECISION_WORDS),
        batch=_read_range(fields, "batch"),
        frames=_read_range(fields, "frames"),
        inputs=_read_specs(fields, "inputs"),
        outputs=_read_specs(fields, "outputs"),
        files={
            checked(name, path, _is_file_name, FILE_NAME_WORDS): _read_file_record(Fields(v, path))
            for name, v, path in fields.mapping("files")
        },
        verification=_read_verification(fields.object("verification")),
        note=fields.string("note", default=""),
        plugins=[
            checked(v, path, is_string, 'a plugin op "namespace::name"')
            for v, path in fields.elements("plugins", "a list of plugin ops", default=[])
        ],
        engine=_read_plan(
            fields.get("engine", lambda v: isinstance(v, dict), "an object", default={}), fields
        ),
    )
    fields.done()
    if entry.file not in entry.files:
        raise InvalidField(f"{fields.path}.file ({entry.file}) is not among {fields.path}.files")
    return entry


def _read_range(fields: Fields, key: str) -> tuple[int, int, int]:
    what = "[min, opt, max] as three integers"
    low, opt, high = fields.get(
        key, lambda v: isinstance(v, list) and len(v) == 3 and all(map(is_integer, v)), what
    )
    if not 1 <= low <= opt <= high:
        raise InvalidField(f"{child_path(fields.path, key)} is {[low, opt, high]}: not 1 ≤ min ≤ opt ≤ max")
    return low, opt, high


def _is_axis(axis: Any) -> bool:
    return axis in AXIS_NAMES if isinstance(axis, str) else is_integer(axis)


def _read_specs(fields: Fields, key: str) -> tuple[TensorSpec, ...]:
    specs = []
    for value, path in fields.elements(key, "a list of tensor specs"):
        spec = Fields(value, path)
        axes = spec.elements("axes", "a list of axis names and sizes")
        what = f"an axis name ({', '.join(AXIS_NAMES)}) or a size"
        kinds = ", ".join(ELEMENT_KINDS)
        specs.append(
            TensorSpec(
                name=spec.string("name"),
                axes=tuple(checked(axis, where, _is_axis, what) for axis, where in axes),
                kind=spec.get("kind", lambda k: k in ELEMENT_KINDS, f"an element kind ({kinds})"),
            )
        )
        spec.done()
    return tuple(specs)


def _read_file_record(fields: Fields) -> FileRecord:
    record = FileRecord(sha256=fields.string("sha256"), bytes=fields.integer("bytes"))
    fields.done()
    return record


def _read_verification(fields: Fields) -> Verification | VerificationSkipped:
    status = fields.get("status", lambda s: s in ("passed", "failed", "skipped"), "passed, failed or skipped")
    if status == "skipped":
        check: Verification | VerificationSkipped = VerificationSkipped(reason=fields.string("reason"))
    else:
        check = Verification(
            max_abs=fields.number("max_abs"),
            max_rel=fields.number("max_rel"),
            tolerance=fields.number("tolerance"),
            finite=fields.boolean("finite"),
            input_shapes={
                name: tuple(checked(v, path, _is_shape, "a shape (a list of sizes)"))
                for name, v, path in fields.mapping("input_shapes")
            },
            seed=fields.integer("seed"),
        )
        if check.status != status:  # the numbers decide; an edited status would hide them
            raise InvalidField(f"{fields.path}.status is {status!r}, its numbers say {check.status!r}")
    fields.done()
    return check


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(map(is_integer, value))


def _read_plan(value: dict[str, Any], entry: Fields) -> PlanRecord | None:
    if not value:  # no plan built: exported without TensorRT or without a GPU
        return None
    fields = Fields(value, child_path(entry.path, "engine"))
    plan = PlanRecord(
        file=fields.get("file", _is_file_name, FILE_NAME_WORDS),
        sha256=fields.string("sha256"),
        bytes=fields.integer("bytes"),
        tensorrt=fields.string("tensorrt"),
        gpu=fields.string("gpu"),
        compute_capability=fields.string("compute_capability"),
    )
    fields.done()
    return plan
