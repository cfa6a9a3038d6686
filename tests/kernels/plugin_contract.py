"""Run in a process without TRITON_INTERPRET, with tests/fakes first on sys.path: register our
TensorRT plugins against the contract stand-in of `tensorrt.plugin`, call each plugin's
autotune and aot_impl at SAO shapes for every tactic, and print one JSON line per call with
what TensorRT would receive next to what the torch op's launch passes for the same tensors and
tactic (recorded at `ops._kernel`, not copied by hand)."""

import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "fakes"))

import tensorrt as trt  # noqa: E402  (the contract stand-in)
import tensorrt.plugin as trtp  # noqa: E402
import torch  # noqa: E402

from stable_audio_rt.kernels import ops, trt_plugins  # noqa: E402
from stable_audio_rt.kernels.ptx import ptx_entry_parameters  # noqa: E402
from stable_audio_rt.kernels.specs import GQA_CROSS_ATTENTION, ROPE_SELF_ATTENTION, SNAKE  # noqa: E402

assert trt.CONTRACT_STAND_IN
ARCH = int(sys.argv[1])
# No GPU here: compile for a named target instead of the build machine's GPU.
trt_plugins.compile_kernel = functools.partial(trt_plugins.compile_kernel, arch=ARCH)
ids = trt_plugins.register_plugins()

TRT_DTYPES = {torch.float32: trt.float32, torch.float16: trt.float16, torch.bfloat16: trt.bfloat16}


def desc(t: torch.Tensor, dynamic: tuple[int, ...]):
    # Batch and sequence axes are dynamic in our engines; the rest are build-time constants.
    exprs = [trtp.ShapeExpr(n, constant=i not in dynamic) for i, n in enumerate(t.shape)]
    return trtp.TensorDesc(TRT_DTYPES.get(t.dtype, t.dtype), exprs)


class LaunchRecorder:
    """`ops._kernel`'s stand-in: each launch's grid, integer arguments and warps, recorded as the
    torch ops pass them, instead of running the kernel."""

    def __init__(self) -> None:
        self.launches: list[dict] = []

    def __call__(self, spec):
        return self

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            extras = [a for a in args if isinstance(a, int)]
            self.launches.append({"grid": list(grid), "extras": extras, "warps": kwargs["num_warps"]})

        return launch


recorder = LaunchRecorder()
ops._kernel = recorder


def launched(launch, tactic: int) -> dict:
    """What the torch op's launch passes for this tactic (its output contiguous, as TensorRT's)."""
    launch(tactic)
    return recorder.launches.pop()


B, H, HKV, T, S, D, HALF, C, N = 2, 24, 12, 1025, 130, 64, 16, 128, 70001
cases = []
for dtype in TRT_DTYPES:
    q = torch.empty(B, H, T, D, dtype=dtype)
    out = torch.empty_like(q)
    cos = torch.empty(T, HALF)
    ctx = torch.empty(B, HKV, S, D, dtype=dtype)
    x = torch.empty(B, C, N, dtype=dtype)
    y = torch.empty_like(x)
    vec = torch.empty(C)
    cases += [
        (ROPE_SELF_ATTENTION, [(q, (0, 2))] * 3 + [(cos, (0,))] * 2, q,
         lambda t, q=q, cos=cos, out=out: ops.launch_rope_self_attention(q, q, q, cos, cos, out, t)),
        (GQA_CROSS_ATTENTION, [(q, (0, 2)), (ctx, (0,)), (ctx, (0,))], q,
         lambda t, q=q, ctx=ctx, out=out: ops.launch_gqa_cross_attention(q, ctx, ctx, out, t)),
        (SNAKE, [(x, (0, 2)), (vec, ()), (vec, ())], x,
         lambda t, x=x, vec=vec, y=y: ops.launch_snake(x, vec, vec, y, t)),
    ]  # fmt: skip

for spec, inputs, output, launch in cases:
    plugin = trtp.REGISTRY[f"stable_audio_rt::{spec.name}"]
    descs = [desc(t, dyn) for t, dyn in inputs]
    out_desc = plugin["register"](*descs)
    tune = plugin["autotune"](*descs, (out_desc,))
    for tactic in tune[0].tactic_ids:
        name, ptx, params, extras = plugin["aot_impl"](*descs, (out_desc,), tactic)
        torch_launch = launched(launch, tactic)
        record = {
            "plugin": spec.name,
            "dtype": str(output.dtype),
            "tactic": tactic,
            "ids": list(ids),
            "positions": {str(k): v for k, v in tune[0].positions.items()},
            "n_inputs": len(inputs),
            "out_shape": [e.value for e in out_desc.shape_expr],
            "entry": name.decode(),
            "ptx_has_entry": f".entry {name.decode()}(" in ptx.decode(),
            "ptx_parameters": ptx_entry_parameters(ptx.decode(), name.decode()),
            "spec_parameters": len(spec.parameters),
            "extras": [e.value for e in extras],
            "torch_extras": torch_launch["extras"],
            "grid": [params.grid_x.value, params.grid_y.value],
            "torch_grid": torch_launch["grid"],
            "threads": params.block_x,
            "warps": torch_launch["warps"],
            "shared_mem": params.shared_mem,
        }
        print(json.dumps(record), flush=True)
