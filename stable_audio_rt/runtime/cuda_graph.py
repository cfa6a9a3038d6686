"""Whole-request CUDA graphs: one per request shape, captured once and replayed.

A request's region (`region.run_region`) is warmed up eagerly on a side stream, then captured
into a `torch.cuda.CUDAGraph` over its static buffers; later requests of the same shape only
copy their inputs into those buffers, replay, and copy the outputs out to pinned host memory.
A small LRU keeps the graphs, bounded in count and in the memory their private pools hold.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from stable_audio_rt.runtime.region import RequestBuffers, RequestShape

DEFAULT_MAX_GRAPHS = 4
# Share of the GPU's memory that the captured graphs' pools may hold together.
DEFAULT_MEMORY_FRACTION = 0.25
# Eager runs before capture: the first lets cuDNN/cuBLAS and TensorRT pick and allocate what
# they need, so that none of it happens inside the capture.
WARMUP_RUNS = 1


class CaptureGate:
    """torch.cuda.graph captures in CUDA's global mode: while one thread captures, a potentially
    unsafe CUDA call from any other thread (a cudaMalloc, a synchronising copy), on any device,
    fails and breaks the capture. So a capture has the process's device work to itself: requests'
    work (eager runs, inputs written, replays; any pipeline's) and loads onto a GPU wait while one
    runs, and a capture waits for the work under way while new work waits behind it (a capture is
    once per shape; it is never starved). Work entered again from inside a thread's own work (an
    `on_step` that runs a request) goes on at once: no capture can be running then. A capture from
    inside it would wait for that work, its own: `capturing` refuses it, and the pipeline runs
    such a request eagerly (`inside_work`)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._working = 0
        self._captures_waiting = 0
        self._capturing = False
        self._mine = threading.local()  # .depth: how deep this thread is in work of its own

    def inside_work(self) -> bool:
        """Whether this thread is in work of its own (say, an `on_step` of a request running)."""
        return getattr(self._mine, "depth", 0) > 0

    @contextmanager
    def working(self) -> Iterator[None]:
        # Only a thread's outermost work counts: inner work goes on at once (its own work holds
        # every capture off; behind a waiting one, it would wait for itself).
        outermost = not self.inside_work()
        if outermost:
            with self._changed:
                self._changed.wait_for(lambda: not self._capturing and not self._captures_waiting)
                self._working += 1
        self._mine.depth = getattr(self._mine, "depth", 0) + 1
        try:
            yield
        finally:
            self._mine.depth -= 1
            if outermost:
                with self._changed:
                    self._working -= 1
                    self._changed.notify_all()

    @contextmanager
    def capturing(self) -> Iterator[None]:
        if self.inside_work():
            raise RuntimeError(
                "a CUDA graph capture inside this thread's own request (an on_step that runs another) "
                "would wait for that request to end: run the inner one outside the callback"
            )
        with self._changed:
            self._captures_waiting += 1
            try:
                self._changed.wait_for(lambda: not self._capturing and not self._working)
            finally:  # however the wait ends (Ctrl-C in it too): work no longer waits for this one
                self._captures_waiting -= 1
                self._changed.notify_all()
            self._capturing = True
        try:
            yield
        finally:
            with self._changed:
                self._capturing = False
                self._changed.notify_all()


# One per process, as CUDA's global capture mode is.
CAPTURE_GATE = CaptureGate()


class Replayable(Protocol):
    def replay(self) -> None: ...

    def reset(self) -> None: ...


@dataclass
class CapturedRequest:
    request: RequestBuffers
    graph: Replayable
    bytes: int  # GPU memory its private pool holds
    host_audio: torch.Tensor  # pinned (B, channels, samples)
    host_latents: torch.Tensor  # pinned (B, C, T)

    def replay(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the graph on the inputs now in `request`'s buffers → (audio, latents) on the host."""
        self.graph.replay()
        self.host_audio.copy_(self.request.audio, non_blocking=True)
        self.host_latents.copy_(self.request.state.x, non_blocking=True)
        device = self.request.audio.device
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        return self.host_audio.clone(), self.host_latents.clone()


@dataclass
class GraphCache:
    """LRU of captured requests by shape. Adding one evicts the least recently used until at most
    `max_graphs` remain and their pools hold at most `max_bytes` (the newest is always kept).
    Shapes whose capture failed are remembered, with why, so they run eagerly without retrying.

    `captures` counts the graphs added, `replays` the lookups that found one: the requests served
    by a graph an earlier request captured. N requests of one shape give 1 and N − 1."""

    max_graphs: int = DEFAULT_MAX_GRAPHS
    max_bytes: int | None = None
    entries: OrderedDict[RequestShape, CapturedRequest] = field(default_factory=OrderedDict)
    failed: dict[RequestShape, str] = field(default_factory=dict)  # shape → "Error: message"
    captures: int = 0
    replays: int = 0

    def get(self, shape: RequestShape) -> CapturedRequest | None:
        entry = self.entries.get(shape)
        if entry is not None:
            self.entries.move_to_end(shape)
            self.replays += 1
        return entry

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.entries.values())

    def add(self, shape: RequestShape, entry: CapturedRequest) -> list[RequestShape]:
        """Keep `entry`, a new capture; returns the shapes evicted for it."""
        self.captures += 1
        self.entries[shape] = entry
        self.entries.move_to_end(shape)
        evicted = []
        while len(self.entries) > 1 and (
            len(self.entries) > self.max_graphs
            or (self.max_bytes is not None and self.total_bytes > self.max_bytes)
        ):
            old, dropped = self.entries.popitem(last=False)
            dropped.graph.reset()
            evicted.append(old)
        return evicted

    def clear(self) -> None:
        for entry in self.entries.values():
            entry.graph.reset()
        self.entries.clear()


def capture_request(request: RequestBuffers, run: Callable[[RequestBuffers], None]) -> CapturedRequest:
    """Warm up `run(request)` on a side stream, then capture it; raises if capture fails."""
    device = request.audio.device
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            run(request)
    current.wait_stream(side)
    torch.cuda.synchronize(device)
    # torch.cuda.graph empties the cache on entry: emptied here first, the warm-up's cached
    # blocks are not counted against the new pool (which then measured about nothing).
    torch.cuda.empty_cache()
    reserved = torch.cuda.memory_reserved(device)
    graph = torch.cuda.CUDAGraph()
    # On the request's device: torch.cuda.graph's default capture stream is made once, on
    # whichever device is current the first time.
    with torch.cuda.graph(graph, stream=side):
        run(request)
    pool_bytes = torch.cuda.memory_reserved(device) - reserved
    return CapturedRequest(
        request,
        graph,
        pool_bytes,
        torch.empty(request.audio.shape, dtype=torch.float32, pin_memory=True),
        torch.empty(request.state.x.shape, dtype=torch.float32, pin_memory=True),
    )


def default_memory_cap(device: torch.device) -> int:
    return int(torch.cuda.get_device_properties(device).total_memory * DEFAULT_MEMORY_FRACTION)
