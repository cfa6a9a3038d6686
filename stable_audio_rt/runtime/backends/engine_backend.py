"""What every engine backend shares: an engine folder checked against its manifest, the
conditioner from it, the request checks, the VAE calls and the DiT step on preallocated buffers.

A backend supplies only a graph opener, `(folder, manifest, component, device) -> EngineGraph`
(onnxruntime_backend.OrtGraph, tensorrt_backend.TrtGraph); its graphs share the profile check,
the element type per spec kind and the output-shape rule written here once. The number
conditioners (two tiny MLPs) stay in PyTorch and the tokenizer is the folder's own.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.manifest import (
    MANIFEST,
    NUMBERS_FILE,
    TOKENIZER_DIR,
    ComponentEntry,
    EngineFolderError,
    Manifest,
)
from stable_audio_rt.models.conditioners import Conditioner, NumberConditioners
from stable_audio_rt.models.io_spec import (
    COMPONENTS,
    REQUIRED_COMPONENTS,
    ElementKind,
    component_specs,
    element_dtype,
)
from stable_audio_rt.models.source import fingerprint
from stable_audio_rt.models.vae import posterior_std
from stable_audio_rt.runtime.sampling.guidance import dit_rows


def export_again(folder: Path, manifest: Manifest, adding: Sequence[str]) -> str:
    """How to add `adding` to an engine folder and keep what it has: an export writes only the
    components it is given, and reuses those that did not change."""
    wanted = manifest.components_adding(adding)
    return (
        f"export the folder again with {', '.join(adding)} added, as it was exported (unchanged "
        f"components are reused): `sa-export --model {shlex.quote(manifest.source)} "
        f"--out {shlex.quote(str(folder))} {exported_as(manifest)} --components {wanted}`"
    )


def exported_as(
    manifest: Manifest, clips: int | None = None, frames: tuple[int, int, int] | None = None
) -> str:
    """The sa-export options the folder was exported with (precision, clips, frames, opset,
    plugins), read from its entries: what an export must repeat to reuse its components. Every
    component of a folder shares them; the clips are read where a run takes several. `clips` and
    `frames`, where given, in place of the folder's (the fix a refusal gives)."""
    specs = component_specs(manifest.model_config)
    entry = next(manifest.components[c] for c in COMPONENTS if c in manifest.components)
    low, opt, high = frames or entry.frames
    options = [f"--{entry.requested_precision}"]
    batched = [c for c in ("dit", "t5") if c in manifest.components]
    if batched:
        exported = manifest.components[batched[0]].batch[2] // specs[batched[0]].rows_per_clip
        options.append(f"--max-batch {clips or exported}")
    options += [f"--frames {low}:{opt}:{high}", f"--opset {manifest.opset}"]
    if any(e.plugins for e in manifest.components.values()):
        options.append("--trt-plugins")
    return " ".join(options)


def require_components(folder: Path, manifest: Manifest) -> None:
    """Refuse a folder without the components every request runs, or whose tokenizer or number
    conditioners are missing or edited."""
    missing = [c for c in REQUIRED_COMPONENTS if c not in manifest.components]
    if missing:
        raise EngineFolderError(
            f"{folder} lacks {', '.join(missing)}, which every request runs: "
            f"{export_again(folder, manifest, missing)}"
        )
    manifest.check_shared_files(folder)


class EngineGraph:
    """One exported component as a backend runs it: its manifest entry, its profile, the types
    and shapes of its I/O. Subclasses open the engine and implement `run`."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        name: str,
        entry: ComponentEntry,
        device: torch.device,
        float_type: torch.dtype,
    ) -> None:
        self.name, self.entry, self.device, self.float_type = name, entry, device, float_type
        self.folder, self.manifest = folder, manifest
        self.ratio = manifest.model_config.vae.downsampling_ratio
        spec = component_specs(manifest.model_config)[name]
        if (spec.inputs, spec.outputs) != (tuple(entry.inputs), tuple(entry.outputs)):
            # The config's shapes (T5's length, the widths) against what the export recorded.
            raise EngineFolderError(
                f"{MANIFEST}'s config gives the {name} graph other inputs or outputs than the ones it "
                "records (edited?): rebuild the engines with `sa-export`"
            )
        self.one_clip_per_run, self.rows_per_clip = spec.one_clip_per_run, spec.rows_per_clip
        # Input shapes → the output tensors `run_reusing` fills for them.
        self.reused_outputs: dict[tuple[tuple[int, ...], ...], list[torch.Tensor]] = {}

    def check_shape(self, batch: int, frames: int | None = None, is_chunk: bool = False) -> None:
        """Refuse a batch or frame count outside the profile; `is_chunk` where the frames are a
        decode chunk's (the fix is then another chunk, not another window)."""
        low, _, high = self.entry.batch
        if not low <= batch <= high:
            clips = math.ceil(batch / self.rows_per_clip)
            # sa-export's --max-batch counts clips; T5 and the DiT take two rows a clip (CFG).
            fix = (
                "it runs one clip at a time, so pass the clips one by one (vae_decode.one_clip_at_a_time)"
                if self.one_clip_per_run
                else f"re-export with `{self._export_command(clips=clips)}` "
                f"(clips with CFG, {self.rows_per_clip} rows each; the folder takes "
                f"{high // self.rows_per_clip} with CFG, {high} without), or ask for fewer clips"
            )
            raise ConfigError(
                f"{self.name} engine takes batch {low}–{high} rows, this request needs {batch}: {fix}"
            )
        if frames is not None and not self.entry.frames[0] <= frames <= self.entry.frames[2]:
            low, opt, high = self.entry.frames
            covering = (min(low, frames), opt, max(high, frames))
            what, fix = (
                (
                    f"a decode chunk of {frames} latent frames is",
                    "give vae_chunk (sa-run --vae-chunk) within it, or none for one call of the window",
                )
                if is_chunk
                else (
                    f"{frames} latent frames are",
                    f"re-export with `{self._export_command(frames=covering)}`, or choose a window inside it",
                )
            )
            raise ConfigError(f"{what} outside the {self.name} engine's profile {low}–{high}: {fix}")

    def _export_command(self, **changed) -> str:
        """The whole command a refusal gives: the folder's source, itself and its options, with
        `changed` (`exported_as`'s clips or frames)."""
        return (
            f"sa-export --model {shlex.quote(self.manifest.source)} --out {shlex.quote(str(self.folder))} "
            f"{exported_as(self.manifest, **changed)}"
        )

    def element_type(self, kind: ElementKind) -> torch.dtype:
        """The torch type of a spec's element kind in this graph (`io_spec.element_dtype`)."""
        return element_dtype(kind, self.float_type)

    def prepare_inputs(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The inputs in spec order, on the device, contiguous and of the spec's types (the same
        tensors, not copies, where they already are)."""
        return [
            inputs[spec.name].to(self.device, self.element_type(spec.kind)).contiguous()
            for spec in self.entry.inputs
        ]

    def output_shapes(self, input_shapes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
        """The outputs' shapes for inputs of `input_shapes` (spec order): the spec's axes, sized
        from the inputs' (samples = latent frames · the VAE's downsampling ratio)."""
        sizes: dict[str, int] = {}
        for spec, shape in zip(self.entry.inputs, input_shapes, strict=True):
            sizes |= {a: int(n) for a, n in zip(spec.axes, shape, strict=True) if isinstance(a, str)}
        if "frames" in sizes:
            sizes.setdefault("samples", sizes["frames"] * self.ratio)
        elif "samples" in sizes:
            sizes["frames"] = sizes["samples"] // self.ratio
        return [spec.shape(sizes) for spec in self.entry.outputs]

    def run(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run with `inputs` by name; returns the outputs as fresh float32 tensors on the device,
        the caller's to keep."""
        return [out.float() for out in self._run(inputs, reuse=False)]

    def run_reusing(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run with `inputs` by name into the outputs of their shapes, in the graph's types:
        allocated by the first run of those shapes (before any captured region: the warm-up) and
        overwritten by every later one, so the caller must consume them before the next run."""
        return self._run(inputs, reuse=True)

    def _run(self, inputs: dict[str, torch.Tensor], reuse: bool) -> list[torch.Tensor]:
        values = self.prepare_inputs(inputs)
        shapes = tuple(tuple(value.shape) for value in values)
        outputs = self.reused_outputs.get(shapes) if reuse else None
        if outputs is None:
            outputs = [
                torch.empty(shape, dtype=self.element_type(spec.kind), device=self.device)
                for spec, shape in zip(self.entry.outputs, self.output_shapes(shapes), strict=True)
            ]
        self.execute(values, outputs)
        if reuse:
            # Kept only once the run succeeded: a refused shape leaves nothing behind.
            self.reused_outputs[shapes] = outputs
        return outputs

    def execute(self, values: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Run the engine on `values` (prepared inputs, spec order) into `outputs` (spec order)."""
        raise NotImplementedError


GraphOpener = Callable[[Path, Manifest, str, torch.device], EngineGraph]


class EngineTextEncoder:
    def __init__(self, graph: EngineGraph) -> None:
        self.graph = graph

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.graph.check_shape(input_ids.shape[0])
        return self.graph.run({"input_ids": input_ids, "attention_mask": attention_mask})[0]


class EngineDiTStep:
    """The DiT graph with one request's buffers, allocated up front on the device (before any
    captured region) and filled in place by `bind`: t (N, R) float32, context (R, S, D) and
    global (R, G) in the types of the graph's inputs, S, D and G from its manifest spec.

    Each step copies its row of t into a buffer of its own, which the graph takes: a view of the
    table would start i·R·4 bytes into it, and TensorRT takes only 256-byte aligned addresses
    (`IExecutionContext::setTensorAddress`); the copy is a device copy, so it can be captured."""

    def __init__(self, graph: EngineGraph, steps: int, rows: int) -> None:
        self.graph = graph
        specs = {spec.name: spec for spec in graph.entry.inputs}

        def buffer(name: str, *shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=graph.element_type(specs[name].kind), device=graph.device)

        _, tokens, width = specs["context"].axes
        _, global_width = specs["global_cond"].axes
        self.t = buffer("t", steps, rows)
        self.t_step = buffer("t", rows)
        self.context = buffer("context", rows, tokens, width)
        self.global_cond = buffer("global_cond", rows, global_width)

    def bind(self, t: torch.Tensor, context: torch.Tensor, global_cond: torch.Tensor) -> None:
        """Fill this request's buffers in place: t (N,) diffusion time per step, context (R, S, D),
        global (R, G)."""
        self.t.copy_(t[:, None].expand(self.t.shape))
        self.context.copy_(context)
        self.global_cond.copy_(global_cond)

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor:
        self.graph.check_shape(model_input.shape[0], model_input.shape[-1])
        self.t_step.copy_(self.t[i])
        feeds = {"x": model_input, "t": self.t_step, "context": self.context, "global_cond": self.global_cond}
        # v in the graph's type, overwritten by the next step: the sampler consumes it within
        # the step and casts it to float32 itself, so neither an allocation nor a copy per step.
        return self.graph.run_reusing(feeds)[0]

    def buffers(self) -> list[torch.Tensor]:
        return [self.t, self.t_step, self.context, self.global_cond]


def require_same_weights(folder: Path, manifest: Manifest, model: str | Path) -> None:
    """Refuse an engine folder built from other weights than the model `model` names."""
    if fingerprint(model) != manifest.weights_sha256:
        raise EngineFolderError(
            f"{folder} was built from other weights than {model}: rebuild it with "
            f"`sa-export --model {shlex.quote(str(model))} --out {shlex.quote(str(folder))}`"
        )


def profile_checks(folder: Path, manifest: Manifest) -> dict[str, EngineGraph]:
    """Each component's profile, to check requests against without opening its engine (sa-bench
    checks its rows before any run)."""
    cpu = torch.device("cpu")
    return {
        c: EngineGraph(folder, manifest, c, e, cpu, torch.float32) for c, e in manifest.components.items()
    }


def check_request_shapes(
    folder: Path,
    manifest: Manifest,
    graphs: Mapping[str, EngineGraph],
    batch: int,
    uses_cfg: bool,
    frames: int,
    decode_frames: int,
    encodes: bool,
) -> None:
    """Refuse, before any work, a request the engines' profiles cannot run."""
    graphs["dit"].check_shape(dit_rows(batch, uses_cfg), frames)
    graphs["t5"].check_shape(dit_rows(batch, uses_cfg))  # a negative prompt's rows ride along
    # region.decode: one row at a time, the window or a chunk of it.
    graphs["vae_decoder"].check_shape(1, decode_frames, is_chunk=decode_frames < frames)
    if encodes:
        _encoder(folder, manifest, graphs).check_shape(1, frames)


def _encoder(folder: Path, manifest: Manifest, graphs: Mapping[str, EngineGraph]) -> EngineGraph:
    if "vae_encoder" not in graphs:
        raise EngineFolderError(
            "this request needs the VAE encoder (audio-to-audio or inpainting), which the engine folder "
            f"lacks: {export_again(folder, manifest, ('vae_encoder',))}"
        )
    return graphs["vae_encoder"]


class EngineComponents:
    """Everything the pipeline needs, from an engine folder, through one backend's graphs."""

    capturable = False  # whether a CUDA graph can capture the graphs' runs (set per backend)

    def __init__(
        self, folder: Path, device: torch.device, open_graph: GraphOpener, model: str | Path | None = None
    ) -> None:
        manifest = Manifest.read(folder)
        if model is not None:
            require_same_weights(folder, manifest, model)
        require_components(folder, manifest)
        self.folder, self.manifest, self.config = folder, manifest, manifest.model_config
        self.device = device
        self.graphs = {
            c: open_graph(folder, manifest, c, device) for c in COMPONENTS if c in manifest.components
        }
        # The DiT input's type (the sampler state's model input is allocated in it), so the sampler's
        # float32 state is rounded once into that buffer rather than cast again per engine run.
        self.dtype = self.graphs["dit"].float_type
        self.conditioner = Conditioner(
            self.config.conditioning,
            _load_numbers(folder, self.config, device),
            EngineTextEncoder(self.graphs["t5"]),
            _load_tokenizer(folder),
        )

    def most_frames(self) -> int:
        """The DiT's profile ends here (sa-export's --frames maximum)."""
        return self.graphs["dit"].entry.frames[2]

    def least_decode_frames(self) -> int:
        """The decoder's profile starts here (sa-export's --frames minimum)."""
        return self.graphs["vae_decoder"].entry.frames[0]

    def check_request(
        self, batch: int, uses_cfg: bool, frames: int, decode_frames: int, encodes: bool
    ) -> None:
        """Refuse, before any work, a request the engines' profiles cannot run."""
        check_request_shapes(
            self.folder, self.manifest, self.graphs, batch, uses_cfg, frames, decode_frames, encodes
        )

    def _encoder(self) -> EngineGraph:
        return _encoder(self.folder, self.manifest, self.graphs)

    def step_model(self, steps: int, rows: int) -> EngineDiTStep:
        """The DiT step with its buffers for `steps` steps of `rows` rows allocated; `bind` fills them."""
        return EngineDiTStep(self.graphs["dit"], steps, rows)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        graph = self.graphs["vae_decoder"]
        graph.check_shape(latents.shape[0], latents.shape[-1])
        return graph.run({"latents": latents})[0]

    def encode_moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        graph = self._encoder()
        graph.check_shape(audio.shape[0], audio.shape[-1] // self.config.vae.downsampling_ratio)
        mean, scale = graph.run({"audio": audio})
        return mean, posterior_std(scale)


def _load_numbers(folder: Path, config, device: torch.device) -> NumberConditioners:
    from safetensors.torch import load_file

    numbers = NumberConditioners(config.conditioning)
    numbers.load_state_dict(load_file(folder / NUMBERS_FILE))  # checked by require_components
    return numbers.to(device).eval().requires_grad_(False)


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    path = folder / TOKENIZER_DIR  # checked by require_components
    try:  # never the Hub: a path that is not there would be taken for a repo id
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise EngineFolderError(f"the tokenizer in {path} cannot be loaded ({e})") from e
