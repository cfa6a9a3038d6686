"""A dispatch-level watch of an executed region: what CUDA graph capture needs, checked on the CPU.

Every aten op the region runs is recorded. After the region it reports:
- host syncs: ops that read a value to the host or have data-dependent output shapes;
- tensors on another device than the region's;
- writes to the request's inputs (a replay must find them as the host wrote them);
- tensors created inside the region that outlive it (state must live in buffers allocated
  before it, written in place; intermediates die, as they come from the graph's pool in capture);
and the op sequence, split at step boundaries, to compare steps and requests.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Ops that need the host to wait for the device, or whose output shape depends on data.
SYNC_OPS = {
    "aten._local_scalar_dense.default",
    "aten.item.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
    "aten.nonzero.default",
    "aten.nonzero_static.default",
    "aten.masked_select.default",
    "aten._unique2.default",
    "aten.unique_consecutive.default",
    "aten.unique_dim.default",
    "aten.repeat_interleave.Tensor",
    "aten.bincount.default",
}


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@dataclass
class RegionWatch(TorchDispatchMode):
    device: torch.device
    allocated: list[torch.Tensor]  # every buffer allocated before the region
    inputs: list[torch.Tensor]  # the ones the region must only read
    ops: list[str] = field(default_factory=list)
    step_ends: list[int] = field(default_factory=list)
    syncs: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    input_writes: list[str] = field(default_factory=list)
    created: list[tuple[str, weakref.ref]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        self._allocated = {_storage(t) for t in self.allocated}
        self._inputs = {_storage(t) for t in self.inputs}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """A `region.Stage`: the sampling stage's start opens the first step."""
        if name == "sampling":
            self.step_ends.append(len(self.ops))
        yield

    def mark_step(self, _: int) -> None:
        self.step_ends.append(len(self.ops))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        self.ops.append(name)
        if name in SYNC_OPS:
            self.syncs.append(name)
        if func._schema.is_mutable:
            targets = [kwargs["out"]] if "out" in kwargs else [args[0]]
            self.input_writes += [
                name for t in targets if isinstance(t, torch.Tensor) and _storage(t) in self._inputs
            ]
        out = func(*args, **kwargs)
        for t in tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor) and t.device != self.device:
                self.foreign.append(f"{name} on {t.device}")
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and _storage(t) not in self._allocated:
                self.created.append((name, weakref.ref(t)))
        return out

    def outliving(self) -> list[str]:
        """Ops whose outputs are still alive (call after the region returned)."""
        gc.collect()
        return [name for name, ref in self.created if ref() is not None]

    def steps(self) -> list[list[str]]:
        """The op sequence of each step."""
        return [self.ops[a:b] for a, b in pairwise(self.step_ends)]
