"""torch → ONNX for one component at one precision, and its verification with onnxruntime.

Opset 18 (not 23): every runtime we target runs it (onnxruntime's CPU and CUDA providers,
TensorRT 10.x from its first release), the partial RoPE sits outside the attention
op anyway, and the TensorRT path replaces attention with our own kernels' plugins. Opset 23
(the fused ONNX `Attention` op, which TensorRT ≥ 10.14 maps to its fused kernel) is available
with `opset=23`.

Precision: the ONNX carries the types (TensorRT 11 has no precision flags). The fp32 islands
live in the models themselves, so they appear as casts in the graph: Snake's parameters and
maths, RoPE, timestep features; LayerNormalization keeps fp32 statistics (stash_type 1).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from stable_audio_rt.bench.quality import max_relative_error
from stable_audio_rt.errors import StableAudioError
from stable_audio_rt.manifest import Verification
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.io_spec import ComponentSpec, axis_sizes, sample_inputs
from stable_audio_rt.models.vae import cast_keeping_fp32_
from stable_audio_rt.precision import DTYPES

DEFAULT_OPSET = 18
# torch's exporter writes opset 18 natively; it converts to older ones with onnx's version
# converter, which fails on these graphs.
MIN_OPSET = 18
# The newest opset these graphs convert to: onnx's version converter (1.23) has no adapter for
# Attention past 25, so 26–28 fail after the export has run.
MAX_OPSET = 25
# ONNX's Conv and ConvTranspose take bfloat16 from opset 22 on (the VAE and the DiT's patching).
BF16_MIN_OPSET = 22
# Verification bounds on max|ort − torch fp32| / max|torch fp32|: fp32 graphs differ only in
# summation order (~1e-6); fp16 keeps ~3 significant digits through deep stacks (measured
# ≈ 1e-3 DiT, 5e-3 VAE on random weights); bf16 keeps ~2.
TOLERANCES = {"fp32": 1e-4, "fp16": 3e-2, "bf16": 1e-1}
# Components whose weights exceed protobuf's 2 GB at real size keep them in one external file.
EXTERNAL_DATA = {"dit"}


class ExportError(StableAudioError):
    """A component could not be exported, or its graph does not match the model."""


def cast_for_export(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `module` in `dtype`, with the parameters it keeps in fp32 restored to fp32."""
    return cast_keeping_fp32_(copy.deepcopy(module), dtype).eval()


@dataclass(frozen=True)
class Profile:
    """Shape ranges an engine must accept: batch and latent frames (min, opt, max)."""

    batch: tuple[int, int, int]
    frames: tuple[int, int, int]


def export_component(
    module: nn.Module,
    spec: ComponentSpec,
    precision: str,
    profile: Profile,
    config: StableAudioConfig,
    path: Path,
    opset: int = DEFAULT_OPSET,
    plugins: bool = False,
) -> list[Path]:
    """Write `path` (and `path`.data for external weights); returns the files written.

    With `plugins`, the kernel ops the module calls (switched on by the caller) become TensorRT
    plugin nodes (`stable_audio_rt.kernels.onnx_plugins`) instead of standard ONNX ops."""
    dtype = DTYPES[precision]
    graph = cast_for_export(module, dtype)
    low, opt, high = profile.frames
    static_frames = low == high
    trace_frames = high if static_frames else min(max(2, low, opt // 8), high)
    sizes = axis_sizes(config, batch=2, frames=trace_frames)
    args = sample_inputs(spec, sizes, dtype, torch.Generator().manual_seed(0), vocab_size=2)
    # The graph's batch stays dynamic (tracing needs two rows); the profile bounds it at run time.
    dims = {"batch": torch.export.Dim("batch", min=1, max=max(2, profile.batch[2]))}
    if not static_frames:
        frames = torch.export.Dim("frames", min=low, max=high)
        dims |= {"frames": frames, "samples": frames * config.vae.downsampling_ratio}
    dynamic = {
        t.name: {i: dims[a] for i, a in enumerate(t.axes) if isinstance(a, str) and a in dims}
        for t in spec.inputs
    }
    external = spec.name in EXTERNAL_DATA
    # The exporter logs a warning per optional torchvision op it cannot register: noise here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad(), without_slices_split():
        warnings.simplefilter("ignore")  # the exporter's notes on renamed axes and opset versions
        try:
            torch.onnx.export(
                graph,
                args,
                str(path),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_shapes=dynamic,
                opset_version=opset,
                dynamo=True,
                external_data=external,
                verbose=False,
                custom_translation_table=_plugin_table() if plugins else None,
            )
        except OSError:  # a full disk, most often: the caller's refusal names its folder and the fix
            raise
        except Exception as e:  # the exporter raises many kinds; name the component
            stop = _interruption(e)
            if stop is not None:  # Ctrl-C or a stop signal, not a failed export
                raise stop from None
            raise ExportError(f"exporting {spec.name} at {precision} failed: {e}") from e
    try:
        # By path, so models past protobuf's 2 GB (external data) are checked too; full_check
        # runs ONNX shape inference over the whole graph.
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported {spec.name} graph is not valid ONNX: {e}") from e
    files = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data)
    return files


def _interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or stop signal (`errors.Terminated`) behind an exporter's error, if any: torch's
    exporter, interrupted mid-trace, fails to restore its dispatch mode on the way out and raises
    "Failed to decompose the FX graph ... Create an issue in the PyTorch GitHub repository"
    from that, the interruption only in the error's chain."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        if isinstance(found, KeyboardInterrupt):
            return found
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


@contextmanager
def without_slices_split() -> Iterator[None]:
    """torch.onnx.export's optimizer (onnxscript's) without its SlicesSplit rewrite.

    SlicesSplit is the one default rule with two output nodes, and onnxscript matches those by
    scanning the whole graph for every node it tries: quadratic in the graph's size. On the real
    SAO 1.0 DiT it took 100 of the export's 161 s (onnxscript 0.7.2, this project's 2-core CPU),
    and it rewrites nothing in our graphs: every component of both families gave the same graph
    with and without it (the DiT's is compared in tests/export/test_onnx_optimizer.py). Where
    onnxscript no longer has the rule list this reads, the export runs its optimizer unchanged."""
    try:
        from onnxscript import rewriter
        from onnxscript.rewriter.rules.common import slice_split_rule
    except ImportError:
        yield
        return
    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", ())
    if slice_split_rule not in rules:
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(rule for rule in rules if rule is not slice_split_rule)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def _plugin_table() -> dict:
    from stable_audio_rt.kernels.onnx_plugins import plugin_translation_table

    return plugin_translation_table()


def plugin_ops(path: Path) -> list[str]:
    """The TensorRT plugin ops ("namespace::name") an exported graph calls, sorted."""
    from stable_audio_rt.kernels.onnx_plugins import PLUGIN_DOMAIN

    graph = onnx.load(str(path), load_external_data=False).graph
    return sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain == PLUGIN_DOMAIN})


def verify_component(
    module: nn.Module,
    spec: ComponentSpec,
    precision: str,
    path: Path,
    config: StableAudioConfig,
    sizes: dict[str, int],
    seed: int,
) -> Verification:
    """Run the graph with onnxruntime's CPU provider on fresh random inputs against the fp32
    torch module; the worst output decides."""
    import onnxruntime as ort

    from stable_audio_rt.runtime.backends.onnxruntime_backend import session_options

    dtype = DTYPES[precision]
    vocab = config_vocab(module)
    inputs = sample_inputs(spec, sizes, dtype, torch.Generator().manual_seed(seed), vocab)
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    got = session.run(None, {t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)})
    with torch.no_grad():
        expected = module(*(x.float() if x.is_floating_point() else x for x in inputs))
    expected = expected if isinstance(expected, tuple) else (expected,)
    worst_abs = worst_rel = 0.0
    finite = True
    for out, ref in zip(got, expected, strict=True):
        out = torch.from_numpy(np.asarray(out, dtype=np.float64))
        finite &= bool(out.isfinite().all())
        worst_abs = max(worst_abs, (out - ref.double()).abs().max().item())
        worst_rel = max(worst_rel, max_relative_error(out, ref))
    shapes = {t.name: tuple(x.shape) for t, x in zip(spec.inputs, inputs, strict=True)}
    return Verification(worst_abs, worst_rel, TOLERANCES[precision], finite, shapes, seed)


def config_vocab(module: nn.Module) -> int:
    """Token ids for T5 inputs come from its vocabulary; other components ignore it."""
    t5 = getattr(module, "t5", None)
    return t5.config.vocab_size if t5 is not None else 2
