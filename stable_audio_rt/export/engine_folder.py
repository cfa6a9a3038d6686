"""Build an engine folder: ONNX graphs per component, verified, with the manifest and the small
pieces the runtime needs besides the graphs (tokenizer, number conditioners).

The folder is assembled in a temporary sibling and swapped in at the end, so a failed or
interrupted export never leaves a half-written folder. Components whose inputs (weights, config,
precision, profile, opset, tool versions) are unchanged are reused from the existing folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
from safetensors.torch import save

from stable_audio_rt import __version__
from stable_audio_rt.atomic import (
    OLD_INFIX,
    check_writable,
    new_folder_beside,
    remove_swapped_out,
    writing,
    written_for,
)
from stable_audio_rt.errors import StableAudioError
from stable_audio_rt.export.disk_space import check_free_space, graph_bytes_floor
from stable_audio_rt.export.onnx_export import (
    BF16_MIN_OPSET,
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    ExportError,
    Profile,
    export_component,
    plugin_ops,
    verify_component,
)
from stable_audio_rt.kernels.switch import use_kernels
from stable_audio_rt.manifest import (
    MANIFEST,
    NUMBERS_FILE,
    TIMING_CACHE,
    TOKENIZER_DIR,
    ComponentEntry,
    Manifest,
    Verification,
    VerificationSkipped,
    check_file,
    config_to_dict,
    file_record,
    folder_names,
    shared_file_records,
)
from stable_audio_rt.models.checkpoint import Layout
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.io_spec import (
    COMPONENTS,
    REQUIRED_COMPONENTS,
    axis_sizes,
    component_module,
    component_specs,
)
from stable_audio_rt.models.loading import StableAudioModel
from stable_audio_rt.models.source import fingerprint, is_random, load_model, read_config
from stable_audio_rt.precision import DTYPES

# Third-party versions from their installed metadata; ours from the package itself, since a
# checkout run through PYTHONPATH (the offline GPU machines) has no installed metadata.
TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime")
# Names of what a refused --out folder holds, listed in the refusal.
FOREIGN_SHOWN = 5
# The components whose modules call the Triton kernels (the DiT's attention, the VAE's Snake):
# with --trt-plugins only their graphs have plugin nodes (T5's has none either way).
KERNEL_COMPONENTS = frozenset({"dit", "vae_decoder", "vae_encoder"})
# Latent frames and batch of the verification inputs: odd sizes inside every profile.
VERIFY_FRAMES = 7


@dataclass(frozen=True)
class ExportSettings:
    precision: str = "fp32"
    components: tuple[str, ...] = COMPONENTS
    max_batch: int = 1
    frames: tuple[int, int, int] | None = None  # default: 1, the window, the window
    opset: int | None = None  # default: DEFAULT_OPSET, or BF16_MIN_OPSET for bf16 graphs
    force: bool = False
    # Emit the Triton kernels as TensorRT plugin nodes (graphs then run in TensorRT only).
    trt_plugins: bool = False

    def check(self, latent_frames: int) -> None:
        if self.precision not in DTYPES:
            raise ExportError(f"precision {self.precision!r} is not one of {sorted(DTYPES)}")
        unknown = sorted(set(self.components) - set(COMPONENTS))
        if unknown or not self.components:
            raise ExportError(
                f"unknown component(s) {unknown or '(none given)'}; choose from {', '.join(COMPONENTS)}"
            )
        twice = sorted({name for name in self.components if self.components.count(name) > 1})
        if twice:
            raise ExportError(f"component(s) {', '.join(twice)} given more than once in --components")
        newest = min(onnx.defs.onnx_opset_version(), MAX_OPSET)
        if not MIN_OPSET <= self.onnx_opset <= newest:
            raise ExportError(
                f"opset {self.onnx_opset} is outside what this exporter writes: give --opset from "
                f"{MIN_OPSET} to {newest}"
            )
        if self.precision == "bf16" and self.onnx_opset < BF16_MIN_OPSET:
            raise ExportError(
                f"bf16 graphs need opset {BF16_MIN_OPSET} or later (ONNX's Conv takes bfloat16 from "
                f"opset {BF16_MIN_OPSET}): give --opset {BF16_MIN_OPSET}, or leave --opset out"
            )
        if self.max_batch < 1:
            raise ExportError(f"max batch must be at least 1, got {self.max_batch}")
        low, opt, high = self.frame_range(latent_frames)
        if not 1 <= low <= opt <= high:
            raise ExportError(f"frames {low}:{opt}:{high} must satisfy 1 ≤ min ≤ opt ≤ max")
        if high > latent_frames:
            raise ExportError(
                f"frames {low}:{opt}:{high} reach past the model's window of {latent_frames} latent frames, "
                f"which no request exceeds: give a max of at most {latent_frames}"
            )
        left_out = [name for name in REQUIRED_COMPONENTS if name not in self.components]
        if left_out:
            warnings.warn(
                f"the folder will lack {', '.join(left_out)}, which every request runs: it generates "
                f"nothing until an export adds {'it' if len(left_out) == 1 else 'them'} (give --components "
                f"{','.join(dict.fromkeys((*REQUIRED_COMPONENTS, *self.components)))})",
                UserWarning,
                stacklevel=2,
            )

    @property
    def onnx_opset(self) -> int:
        """The opset the graphs are written in: the one asked for, else the precision's default."""
        if self.opset is not None:
            return self.opset
        return BF16_MIN_OPSET if self.precision == "bf16" else DEFAULT_OPSET

    def frame_range(self, latent_frames: int) -> tuple[int, int, int]:
        return self.frames or (1, latent_frames, latent_frames)

    def profile(self, config: StableAudioConfig, name: str) -> Profile:
        """The profile component `name` is exported at: up to the rows its runs take for
        requests of up to `max_batch` clips (`ComponentSpec.max_rows`)."""
        rows = component_specs(config)[name].max_rows(self.max_batch)
        return Profile(batch=(1, rows, rows), frames=self.frame_range(config.latent_frames))


def _check_replaceable(out: Path) -> None:
    """An export replaces its folder whole: refuse one holding anything an export did not write
    (a user's files: `--out ~/Music` must not delete them), one whose files only bear an
    export's names (no engine manifest that reads as ours), and a file in its place."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file: --out takes the folder to write the engines into")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    ours = folder_names()
    foreign = [e.name for e in entries if e.name not in ours and written_for(e.name) not in ours]
    if foreign:
        shown = ", ".join(foreign[:FOREIGN_SHOWN]) + (", …" if len(foreign) > FOREIGN_SHOWN else "")
        raise ExportError(
            f"{out} holds what sa-export did not write ({shown}), and an export replaces its folder "
            f"whole: give a new or empty folder, or move those out first"
        )
    if any(not e.name.startswith(".") for e in entries):  # leftovers of a killed write may stay
        try:
            Manifest.read(out)
        except StableAudioError as e:
            found = (
                "no manifest.json" if not (out / MANIFEST).is_file() else "a manifest.json not of sa-export"
            )
            raise ExportError(
                f"{out} holds files but is not an engine folder sa-export wrote ({found}), and an export "
                "replaces its folder whole: give a new or empty folder, or delete this one first"
            ) from e


def _old_manifest(out: Path, settings: ExportSettings) -> Manifest | None:
    """The manifest of the folder this export replaces: what it may reuse and must not drop
    (None when forced, or when there is none readable as ours)."""
    if settings.force or not out.is_dir():
        return None
    try:
        return Manifest.read(out)
    except StableAudioError:
        return None


def _check_nothing_dropped(out: Path, old: Manifest | None, settings: ExportSettings) -> None:
    """An export writes exactly its components: refuse one that would silently drop components
    the folder has (`--components vae_encoder` meant as "add the encoder"), unless forced."""
    had = {} if old is None else old.components
    dropped = [name for name in COMPONENTS if name in had and name not in settings.components]
    if dropped:
        raise ExportError(
            f"{out} has {', '.join(dropped)}, which this export would drop (it writes exactly "
            f"--components): give --components {old.components_adding(settings.components)} to keep "
            f"them (unchanged ones are reused), or --force to replace the folder with "
            f"{','.join(settings.components)} only"
        )


def tool_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in TOOLS} | {"stable-audio-rt": __version__}


def _exported_alike(
    old: Manifest | None, name: str, new: Manifest, settings: ExportSettings, profile: Profile
) -> bool:
    """Whether `old` has `name` exported as this export would export it, the weights aside
    (`new.weights_sha256` is not read): config, opset, tools, precision, plugins and profile."""
    if old is None or name not in old.components:
        return False

    def key(m: Manifest) -> str:
        return json.dumps([m.config, m.opset, m.tools], sort_keys=True)

    entry = old.components[name]
    plugged = settings.trt_plugins and name in KERNEL_COMPONENTS
    if key(old) != key(new) or entry.requested_precision != settings.precision:
        return False
    return bool(entry.plugins) == plugged and (entry.batch, entry.frames) == (profile.batch, profile.frames)


def _reusable(
    old: Manifest | None, folder: Path, name: str, new: Manifest, settings: ExportSettings, profile: Profile
):
    if not _exported_alike(old, name, new, settings, profile) or old.weights_sha256 != new.weights_sha256:
        return None
    entry = old.components[name]
    try:
        old.check_files(folder, name)
    except StableAudioError:
        return None
    return entry


def _with_its_plan(folder: Path, entry: ComponentEntry) -> ComponentEntry:
    """A reused entry with its TensorRT plan, built from this very graph, where the plan is in
    `folder` as recorded (a re-export without TensorRT dropped it and kept its record); without
    the record where it is not, so no plan is claimed that the folder lacks."""
    if entry.engine is None:
        return entry
    try:
        check_file(folder / entry.engine.file, entry.engine.record, "")
    except StableAudioError:
        return replace(entry, engine=None)
    return entry


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _export_one(
    model: StableAudioModel,
    name: str,
    precision: str,
    profile: Profile,
    folder: Path,
    opset: int,
    plugins: bool = False,
):
    spec = component_specs(model.config)[name]
    module = component_module(model, name)
    path = folder / f"{name}.onnx"
    if plugins:
        use_kernels("triton", model.dit, model.vae)
    try:
        files = export_component(module, spec, precision, profile, model.config, path, opset, plugins)
    finally:
        use_kernels("torch", model.dit, model.vae)
    frames = min(max(VERIFY_FRAMES, profile.frames[0]), profile.frames[2])
    sizes = axis_sizes(model.config, batch=min(2, profile.batch[2]), frames=frames)
    seed = secrets.randbelow(2**31)
    verification: Verification | VerificationSkipped
    if plugin_ops(path):
        verification = VerificationSkipped(
            "TensorRT plugin nodes: onnxruntime cannot run them; TensorRT builds check them"
        )
    elif precision == "bf16":
        verification = VerificationSkipped("onnxruntime's CPU provider cannot feed bf16 from numpy")
    else:
        verification = verify_component(module, spec, precision, files[0], model.config, sizes, seed)
    return spec, files, verification


def export_engines(
    source: str | Path,
    out: Path,
    settings: ExportSettings,
    layout: Layout = "auto",
    token: str | None = None,
    on_component: Callable[[str], None] | None = None,
    on_reused: Callable[[str], None] | None = None,
    on_loading: Callable[[], None] | None = None,
    on_written: Callable[[], None] | None = None,
) -> Manifest:
    """Export `settings.components` of the model `source` names (models/source.py) into `out`
    (a symbolic link's target: the folder replaced is the one its readers see). `on_written` is
    called once the new folder is in place, before the one it replaced is removed."""
    out = Path(os.path.abspath(out))  # "." and ".." have no name to put a new folder beside
    if out.is_symlink():
        out = out.resolve()
    here = Path.cwd()
    if out == here or out in here.parents:
        raise ExportError(
            f"--out {out} is the folder this command runs in, or holds it: an export replaces the "
            "folder whole, and this shell would be left in the old, deleted one; run sa-export from "
            "outside it"
        )
    if os.path.ismount(out):
        # The new folder is renamed onto --out, and a mount point cannot be renamed (EBUSY):
        # refused now, not after the whole export.
        raise ExportError(
            f"--out {out} is a mount point, and an export replaces its folder whole by renaming a new "
            f"one into its place, which a mount point cannot take: give a folder inside it, such as "
            f"--out {out / 'engines'}"
        )
    ancestor = out.parent  # missing folders above --out are made, as `mkdir -p` would
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"cannot write {out}: {ancestor} is a file, not a folder")
    check_writable(ancestor)
    _check_replaceable(out)
    config = read_config(source, layout, token)
    settings.check(config.latent_frames)
    old = _old_manifest(out, settings)
    _check_nothing_dropped(out, old, settings)
    anew = _to_export(config, old, settings)
    check_free_space(out, ancestor, graph_bytes_floor(config, anew, settings.precision))
    if on_loading is not None:  # everything is checked: the load (and a download) may take minutes
        on_loading()
    model = load_model(source, layout=layout, token=token)
    manifest = Manifest(
        source=_recorded_source(source),
        weights_sha256=fingerprint(source, model, layout, token),
        config=config_to_dict(model.config),
        opset=settings.onnx_opset,
        tools=tool_versions(),
    )
    made = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_folder_beside(out)
    try:
        with writing(out):  # a full disk, mid-export: one line naming the folder and the fix
            for name in settings.components:
                if on_component is not None:
                    on_component(name)
                profile = settings.profile(model.config, name)
                entry = _reusable(old, out, name, manifest, settings, profile)
                if entry is not None:
                    entry = _with_its_plan(out, entry)
                    for file in [*entry.files, *([entry.engine.file] if entry.engine else [])]:
                        _place(out / file, tmp / file)
                    if on_reused is not None:
                        on_reused(name)
                else:
                    entry = _build_entry(model, name, settings, profile, tmp)
                manifest.components[name] = entry
            if old is not None and (out / TIMING_CACHE).is_file():  # the next build's head start
                _place(out / TIMING_CACHE, tmp / TIMING_CACHE)
            model.conditioner.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
            numbers = {k: v.float().contiguous() for k, v in model.conditioner.numbers.state_dict().items()}
            # Written by us: safetensors' save_file makes its file private (0600).
            (tmp / NUMBERS_FILE).write_bytes(save(numbers))
            manifest.shared_files = shared_file_records(tmp)
            manifest.write(tmp)
            _swap_in(tmp, out, on_written)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # deepest first: the folders made for this export go with it
            folder.rmdir()
        raise
    return manifest


def _to_export(config: StableAudioConfig, old: Manifest | None, settings: ExportSettings) -> list[str]:
    """The components an export will write anew, as far as the config tells before the load:
    one the folder has exported alike is taken as reused (hard-linked: no new space), since
    whether the weights changed takes hashing the checkpoint to know."""
    if old is None:
        return list(settings.components)
    new = replace(old, config=config_to_dict(config), opset=settings.onnx_opset, tools=tool_versions())
    return [
        name
        for name in settings.components
        if not _exported_alike(old, name, new, settings, settings.profile(config, name))
    ]


def _recorded_source(source: str | Path) -> str:
    """The model as the manifest records it: a local file or folder by its absolute path, since
    sa-bench and `--backend auto` load it from wherever they run (a relative one read as a Hub
    repo id there); a Hub repo id or a random model's name as given."""
    path = Path(source).expanduser()
    if is_random(source) or not path.exists():
        return str(source)
    return str(path.resolve())


def _build_entry(
    model: StableAudioModel, name: str, settings: ExportSettings, profile: Profile, folder: Path
):
    precision, note = settings.precision, ""
    spec, files, verification = _export_one(
        model, name, precision, profile, folder, settings.onnx_opset, settings.trt_plugins
    )
    if _failed(verification) and name == "t5" and precision == "fp16":
        # reference-spec §6: fp16 T5 has overflow hazards; keep it in fp32 where it fails.
        note = f"fp16 T5 failed verification (max rel {verification.max_rel:.3g}); kept in fp32"
        for f in files:
            f.unlink()
        precision = "fp32"
        spec, files, verification = _export_one(model, name, precision, profile, folder, settings.onnx_opset)
    if _failed(verification):
        raise ExportError(
            f"{name} at {precision}: onnxruntime differs from torch by {verification.max_rel:.3g} "
            f"relative (tolerance {verification.tolerance:.0e}, finite: {verification.finite}); "
            f"not exported"
        )
    return ComponentEntry(
        file=files[0].name,
        precision=precision,
        requested_precision=settings.precision,
        batch=profile.batch,
        frames=profile.frames,
        inputs=spec.inputs,
        outputs=spec.outputs,
        files={f.name: file_record(f) for f in files},
        verification=verification,
        note=note,
        plugins=plugin_ops(files[0]),
    )


def _failed(verification: Verification | VerificationSkipped) -> bool:
    return isinstance(verification, Verification) and not verification.passed


def _swap_in(tmp: Path, out: Path, on_written: Callable[[], None] | None) -> None:
    old = None
    if out.exists():
        shutil.copymode(out, tmp)  # a folder exported again keeps the permissions it was given
        old = out.with_name(f".{out.name}{OLD_INFIX}{secrets.token_hex(4)}")
        out.rename(old)
    tmp.rename(out)
    if on_written is not None:  # a stop signal from here on meets the new folder in place
        on_written()
    if old is not None:
        remove_swapped_out(old)
