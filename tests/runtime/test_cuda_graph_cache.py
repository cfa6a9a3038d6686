"""The pipeline's CUDA-graph path, run on the CPU: graph keys, the LRU with its count and memory
caps, inputs written into a captured request's buffers before each replay, and the fallback to
eager with one warning. CUDA graphs themselves cannot run here: a stand-in "graph" replays the
region eagerly on the captured buffers, so everything around the graph runs for real (the GPU
tests in tests/gpu/ replay real graphs)."""

import threading
import warnings

import numpy as np
import pytest
import torch
from reference_path import REFERENCE_PATH

from stable_audio_rt.runtime import pipeline as pipeline_module
from stable_audio_rt.runtime import planning
from stable_audio_rt.runtime.cuda_graph import CapturedRequest, GraphCache
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request

RATE = 44100


class StandInGraph:
    """Replays `run(request)` eagerly; counts replays and resets."""

    def __init__(self, request, run):
        self.request, self.run = request, run
        self.replays, self.was_reset = 0, False

    def replay(self):
        self.replays += 1
        self.run(self.request)

    def reset(self):
        self.was_reset = True


def _stand_in_capture(request, run):
    run(request)  # the warm-up
    return CapturedRequest(
        request,
        StandInGraph(request, run),
        bytes=request.state.x.numel() * 4,
        host_audio=torch.empty(request.audio.shape),
        host_latents=torch.empty(request.state.x.shape),
    )


@pytest.fixture
def graphed(monkeypatch):
    """The tiny model with the graph path on (as on CUDA) and the stand-in capture."""
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    monkeypatch.setattr(StableAudio, "uses_graphs", property(lambda self: self.cuda_graph))
    monkeypatch.setattr(StableAudio, "meets_captures", property(lambda self: True))
    monkeypatch.setattr(pipeline_module, "capture_request", _stand_in_capture)
    return pipe


def _tone():
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE))[None].repeat(2, 0).astype(np.float32)


def _mask():
    keep = np.ones(RATE)
    keep[RATE // 3 :] = 0
    return keep


MODES = {
    "text": {},
    "audio": {"init_audio": (_tone(), RATE)},
    "inpaint": {"inpaint_audio": (_tone(), RATE), "inpaint_mask": _mask()},
}


@pytest.mark.parametrize("mode", MODES)
def test_replays_equal_eager_runs_and_reuse_one_capture(graphed, generator, mode):
    eager = StableAudio(graphed.components, cuda_graph=False)
    seeds = torch.randint(0, 2**31, (2,), generator=generator).tolist()
    prompts = ["pad", "rain"]
    for prompt, seed in zip(prompts, seeds, strict=True):
        options = dict(
            seconds_total=1.0, frames=24, steps=4, seed=seed, negative_prompt="hiss", **MODES[mode]
        )
        ours, expected = graphed.generate(prompt, **options), eager.generate(prompt, **options)
        assert torch.equal(ours.audio, expected.audio) and torch.equal(ours.latents, expected.latents)
        assert "replay" in ours.timings and "sampling" not in ours.timings
    ((shape, entry),) = graphed.graphs.entries.items()
    assert shape.mode == mode and entry.graph.replays == 2
    assert (graphed.graphs.captures, graphed.graphs.replays) == (1, 1)


def _drifting(readings):
    """A reading that changes on every call, as free GPU memory does after each capture."""
    values = iter(readings)
    return lambda *args, **kwargs: next(values)


def test_auto_decode_chunk_is_read_once_so_drifting_free_memory_keeps_one_key(monkeypatch):
    # Only the key is computed (no run), so the pipeline may claim CUDA on this CPU machine.
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", cuda_graph=False, **REFERENCE_PATH)
    pipe.device = torch.device("cuda")
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", _drifting([(g * gib, 80 * gib) for g in (40, 39, 38)]))
    request = resolve_request(GenerationRequest(("x",), seconds_total=1.0, steps=4), pipe.config)
    shapes = {pipe.request_shape(request) for _ in range(3)}
    assert len(shapes) == 1
    assert shapes.pop().decode_chunk is None, "one chunk covers the request: no chunk in the key"


@pytest.mark.parametrize("readings,stored", [((70, 69, 68, 67), None), ((40, 39, 38, 37), 40)])
def test_one_shape_captures_once_however_free_memory_drifts(graphed, monkeypatch, readings, stored):
    monkeypatch.setattr(pipeline_module, "auto_chunk_frames", _drifting(readings))
    options = dict(seconds_total=1.0, steps=3, seed=5)
    results = [graphed.generate("x", **options) for _ in range(3)]
    assert (graphed.graphs.captures, graphed.graphs.replays) == (1, 2)
    ((shape, _),) = graphed.graphs.entries.items()
    assert shape.frames == 64 and shape.decode_chunk == stored
    assert all(torch.equal(r.audio, results[0].audio) for r in results)


def test_graph_keys_follow_what_changes_the_region(graphed):
    def shape(**options):
        request = GenerationRequest(("x",), **{"seconds_total": 1.0, "steps": 4, **options})
        return graphed.request_shape(resolve_request(request, graphed.config))

    base = shape(seed=1)
    assert shape(seed=2, cfg_scale=3.0) == base, "seed and CFG scale are inputs, not keys"
    assert shape(negative_prompt="n") != base
    assert shape(cfg_scale=1.0) != base
    assert shape(steps=5) != base
    assert shape(frames=30) != base
    assert shape(guidance="apg") != base
    assert shape(num_outputs=2) != base
    assert shape(vae_chunk=40) != base


def _entry(size):
    graph = StandInGraph(None, None)
    return CapturedRequest(None, graph, size, torch.empty(0), torch.empty(0))


def test_lru_evicts_the_least_recently_used_past_the_count_cap():
    cache = GraphCache(max_graphs=2)
    a, b, c = _entry(1), _entry(1), _entry(1)
    assert cache.add("a", a) == [] and cache.add("b", b) == []
    assert cache.get("a") is a  # a is now the most recent
    assert cache.add("c", c) == ["b"]
    assert list(cache.entries) == ["a", "c"] and b.graph.was_reset and not a.graph.was_reset
    assert cache.get("b") is None


def test_lru_keeps_the_pools_under_the_memory_cap_but_always_the_newest():
    cache = GraphCache(max_graphs=10, max_bytes=100)
    cache.add("a", _entry(40))
    cache.add("b", _entry(40))
    assert cache.add("c", _entry(40)) == ["a"] and cache.total_bytes == 80
    assert cache.add("huge", _entry(500)) == ["b", "c"]
    assert list(cache.entries) == ["huge"]


def test_a_failed_capture_warns_once_and_runs_eagerly(graphed, monkeypatch):
    def failing_capture(request, run):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(pipeline_module, "capture_request", failing_capture)
    eager = StableAudio(graphed.components, cuda_graph=False)
    options = dict(seconds_total=1.0, frames=24, steps=3, seed=5)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed .*not permitted.*--no-cuda-graph"):
        first = graphed.generate("x", **options)
    assert torch.equal(first.audio, eager.generate("x", **options).audio)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graphed.generate("x", **options)  # the same shape: no retry, no second warning
        graphed.generate("x", **{**options, "steps": 4})  # another shape fails too, silently
    why = "RuntimeError: operation not permitted when stream is capturing"
    assert list(graphed.graphs.failed.values()) == [why, why] and not graphed.graphs.entries


def test_no_cuda_graph_runs_eagerly(graphed):
    graphed.cuda_graph = False
    result = graphed.generate("x", seconds_total=1.0, frames=24, steps=3, seed=5)
    assert "sampling" in result.timings and not graphed.graphs.entries


def test_threads_sharing_a_pipeline_get_their_own_audio_from_one_graph(graphed, generator):
    """A graph's buffers are one per shape: calls from several threads capture and replay one at
    a time, each getting what it gets alone (threads overwrote each other's inputs)."""
    eager = StableAudio(graphed.components, cuda_graph=False)
    seeds = torch.randint(0, 2**31, (4,), generator=generator).tolist()
    options = [dict(seconds_total=0.5, steps=3, seed=seed) for seed in seeds]
    alone = [eager.generate(f"prompt {k}", **o).audio for k, o in enumerate(options)]
    answers: list[torch.Tensor | None] = [None] * len(options)
    start = threading.Barrier(len(options))

    def call(k: int) -> None:
        start.wait()
        answers[k] = graphed.generate(f"prompt {k}", **options[k]).audio

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(options))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert graphed.graphs.captures == 1
    for k, (ours, expected) in enumerate(zip(answers, alone, strict=True)):
        assert ours is not None and torch.equal(ours, expected), k


# How long a held capture waits for another thread's device work to start before it ends anyway
# (seconds): that work starts in milliseconds when nothing holds it back.
HELD_CAPTURE_S = 3.0


@pytest.mark.parametrize("other", ["eager pipeline", "stream"])
def test_a_capture_has_the_device_to_itself(graphed, monkeypatch, other):
    """CUDA's global capture mode fails another thread's unsafe calls (cudaMalloc, synchronising
    copies) during a capture, and the capture with them: a pipeline's eager run (another pipeline,
    or `generate_stream` of this one) waits while a capture runs, and takes the device after it.
    Recorded here in the order things happen: the capture is held until the other thread has
    begun its device work or HELD_CAPTURE_S has passed."""
    events: list[str] = []
    other_began = threading.Event()
    capture_began = threading.Event()

    def held_capture(request, run):
        events.append("capture begins")
        capture_began.set()
        other_began.wait(HELD_CAPTURE_S)
        captured = _stand_in_capture(request, run)
        events.append("capture ends")
        return captured

    real_fresh = StableAudio._fresh

    def fresh(self, shape, resolved):  # a request's first device work: its buffers
        if threading.current_thread() is not threading.main_thread():
            events.append("other begins")
            other_began.set()
        return real_fresh(self, shape, resolved)

    monkeypatch.setattr(pipeline_module, "capture_request", held_capture)
    monkeypatch.setattr(StableAudio, "_fresh", fresh)
    eager = StableAudio(graphed.components, cuda_graph=False)

    def run_other() -> None:
        capture_began.wait(HELD_CAPTURE_S)
        if other == "eager pipeline":
            eager.generate("rain", seconds_total=0.5, steps=2, seed=1)
        else:
            torch.cat(list(graphed.generate_stream("rain", seconds_total=0.5, steps=2, seed=1)), -1)

    thread = threading.Thread(target=run_other)
    thread.start()
    graphed.generate("hail", seconds_total=0.5, steps=2, seed=2)
    thread.join(timeout=120)
    assert events == ["capture begins", "capture ends", "other begins"]


def test_work_arriving_behind_a_waiting_capture_waits_for_it():
    """A capture waits for the work under way, and work that arrives meanwhile waits behind the
    capture: under steady work (a server's requests) a capture is never starved."""
    from stable_audio_rt.runtime.cuda_graph import CaptureGate

    gate, order = CaptureGate(), []
    first_in, first_may_leave = threading.Event(), threading.Event()

    def first_work() -> None:
        with gate.working():
            first_in.set()
            first_may_leave.wait(HELD_CAPTURE_S)
            order.append("first work ends")

    def capture() -> None:
        with gate.capturing():
            order.append("capture")

    later_done = threading.Event()

    def later_work() -> None:
        with gate.working():
            order.append("later work")
        later_done.set()

    threads = [threading.Thread(target=first_work)]
    threads[0].start()
    first_in.wait(HELD_CAPTURE_S)
    threads.append(threading.Thread(target=capture))
    threads[1].start()
    while not gate._captures_waiting:  # the capture is queued before the later work arrives
        threading.Event().wait(0.01)
    threads.append(threading.Thread(target=later_work))
    threads[2].start()
    later_done.wait(1.0)  # done in milliseconds if nothing held it back
    first_may_leave.set()
    for thread in threads:
        thread.join(timeout=60)
    assert order == ["first work ends", "capture", "later work"]


def test_a_capture_stopped_while_it_waits_holds_no_work_back(monkeypatch):
    """Ctrl-C (or any exception) in a capture's wait for the work under way: that capture never
    runs, so later work must not wait behind it (it waited for ever: the gate still counted it)."""
    from stable_audio_rt.runtime.cuda_graph import CaptureGate

    gate = CaptureGate()
    real_wait_for, interrupts = gate._changed.wait_for, [KeyboardInterrupt]

    def wait_for(predicate, timeout=None):
        if interrupts and not predicate():  # Ctrl-C lands in the first wait that waits
            raise interrupts.pop()
        return real_wait_for(predicate, timeout)

    monkeypatch.setattr(gate._changed, "wait_for", wait_for)
    first_in, first_may_leave, later_in = threading.Event(), threading.Event(), threading.Event()

    def work(came_in: threading.Event, may_leave: threading.Event | None = None) -> None:
        with gate.working():
            came_in.set()
            if may_leave is not None:
                may_leave.wait(HELD_CAPTURE_S)

    first = threading.Thread(target=work, args=(first_in, first_may_leave), daemon=True)
    first.start()
    assert first_in.wait(HELD_CAPTURE_S)
    with pytest.raises(KeyboardInterrupt):
        with gate.capturing():
            pytest.fail("the capture ran")
    first_may_leave.set()
    later = threading.Thread(target=work, args=(later_in,), daemon=True)  # daemon: were it stuck
    later.start()
    assert later_in.wait(HELD_CAPTURE_S)  # in milliseconds when nothing holds it back


def test_a_request_run_from_another_requests_on_step_ends(graphed):
    """An `on_step` that runs a request: inside the outer request's work, the inner one's capture
    waited for that work to end, which waited for the inner request (hung for ever, one thread
    alone). It runs eagerly, and its shape is captured when asked outside the callback."""
    eager = StableAudio(graphed.components, cuda_graph=False)
    inner: list[torch.Tensor] = []

    def on_step(done: int, total: int) -> None:
        if not inner:
            inner.append(graphed.generate("hail", seconds_total=0.5, steps=2, seed=2).audio)

    request = GenerationRequest(prompts=("rain",), seconds_total=0.5, steps=2, seed=1)

    def outer() -> None:
        eager.run_resolved(resolve_request(request, eager.config), on_step=on_step)

    thread = threading.Thread(target=outer, daemon=True)  # daemon: were it stuck
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive() and len(inner) == 1
    assert graphed.graphs.captures == 0 and not graphed.graphs.failed
    again = graphed.generate("hail", seconds_total=0.5, steps=2, seed=2).audio
    assert graphed.graphs.captures == 1 and torch.equal(again, inner[0])


def test_work_inside_a_threads_own_work_goes_on_behind_a_waiting_capture():
    """Nested work (an on_step that runs a request, a stream read inside one) behind a capture
    that waits for the outer work waited for itself."""
    from stable_audio_rt.runtime.cuda_graph import CaptureGate

    gate, order = CaptureGate(), []
    outer_in, nested_done = threading.Event(), threading.Event()

    def outer() -> None:
        with gate.working():
            outer_in.set()
            while not gate._captures_waiting:  # a capture now waits for this work
                threading.Event().wait(0.01)
            with gate.working():
                order.append("nested work")
            nested_done.set()
        order.append("outer work ends")

    def capture() -> None:
        with gate.capturing():
            order.append("capture")

    threads = [threading.Thread(target=outer, daemon=True)]
    threads[0].start()
    assert outer_in.wait(HELD_CAPTURE_S)
    threads.append(threading.Thread(target=capture, daemon=True))
    threads[1].start()
    assert nested_done.wait(HELD_CAPTURE_S)
    for thread in threads:
        thread.join(timeout=60)
    assert order == ["nested work", "outer work ends", "capture"]
    with gate.working(), pytest.raises(RuntimeError, match="would wait for that request to end"):
        with gate.capturing():
            pytest.fail("a capture ran inside work")


def test_a_graph_evicted_for_a_new_one_is_reset_inside_the_gate(graphed, monkeypatch):
    """Resetting an evicted graph destroys its executable graph and gives back its pool: device
    work, which another thread's capture must not meet (it ran between the gate's blocks)."""
    from stable_audio_rt.runtime.cuda_graph import CAPTURE_GATE

    resets = []
    monkeypatch.setattr(StandInGraph, "reset", lambda self: resets.append(CAPTURE_GATE.inside_work()))
    graphed.graphs.max_graphs = 1
    graphed.generate("rain", seconds_total=0.5, steps=2, seed=1)
    graphed.generate("rain", seconds_total=0.5, steps=3, seed=1)  # another shape: the first goes
    assert resets == [True]


def test_a_cpu_pipelines_requests_never_wait_for_a_capture(generator):
    """The gate is CUDA's: in a process with a GPU pipeline beside a CPU one, a capture waited for
    the CPU's minutes-long requests and every GPU request behind it."""
    from stable_audio_rt.runtime.cuda_graph import CAPTURE_GATE

    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    held = []
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    request = GenerationRequest(prompts=("rain",), seconds_total=0.5, steps=2, seed=seed)
    pipe.run_resolved(
        resolve_request(request, pipe.config), on_step=lambda *_: held.append(CAPTURE_GATE.inside_work())
    )
    assert held == [False, False]


def _order_around_a_capture(monkeypatch, owner, name, act) -> list[str]:
    """What happens, in order, when `act` runs on another thread while this one holds a capture;
    `owner.name`, the act's first device work, is wrapped to record when it begins. The capture
    is held until that work has begun or HELD_CAPTURE_S has passed."""
    from stable_audio_rt.runtime.cuda_graph import CAPTURE_GATE

    events, began = [], threading.Event()
    real = getattr(owner, name)

    def recorded(*args, **kwargs):
        if not began.is_set():
            events.append("other begins")
            began.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    other = threading.Thread(target=act, daemon=True)  # daemon: were it stuck
    with CAPTURE_GATE.capturing():
        events.append("capture begins")
        other.start()
        began.wait(HELD_CAPTURE_S)
        events.append("capture ends")
    other.join(timeout=60)
    assert not other.is_alive()
    return events


def test_the_first_free_memory_read_waits_for_a_capture(graphed, monkeypatch):
    """vae_chunk="auto" reads free GPU memory at the first request's shape: cudaMemGetInfo during
    another thread's capture broke it (read outside the gate by `check`, `request_shape` or
    `batch_key`, which a server's handler threads call while the model runs)."""
    monkeypatch.setattr(pipeline_module, "auto_chunk_frames", lambda *args: 40)
    request = resolve_request(GenerationRequest(("x",), seconds_total=1.0, steps=4), graphed.config)
    events = _order_around_a_capture(
        monkeypatch, pipeline_module, "auto_chunk_frames", lambda: graphed.request_shape(request)
    )
    assert events == ["capture begins", "capture ends", "other begins"]


@pytest.mark.parametrize("call", ["prepare", "write_inputs"])
def test_buffers_prepared_or_written_alone_wait_for_a_capture(graphed, monkeypatch, call):
    """`prepare` and `write_inputs` called alone, not through generate: buffers allocated, and a
    request's host part copied into them from pageable memory, met another thread's capture."""
    request = GenerationRequest(("x",), seconds_total=0.5, steps=2, seed=1, vae_chunk=None)
    resolved = resolve_request(request, graphed.config)  # vae_chunk None: no free-memory read
    if call == "prepare":
        owner, name, act = pipeline_module, "allocate_request", lambda: graphed.prepare(resolved)
    else:
        buffers = graphed.prepare(resolved)
        owner, name, act = planning, "write_inputs", lambda: graphed.write_inputs(buffers, resolved)
    events = _order_around_a_capture(monkeypatch, owner, name, act)
    assert events == ["capture begins", "capture ends", "other begins"]


def test_a_pipeline_loaded_onto_a_gpu_waits_for_a_capture(graphed, monkeypatch):
    """Loading onto a GPU allocates the weights there and copies them from pageable memory: it
    met another thread's capture (a server loading a second model while the first captures)."""

    class OnCuda:  # a plan for a GPU; its components, the CPU's already loaded, stand in
        device = torch.device("cuda")

        def components(self):
            return graphed.components

    events = _order_around_a_capture(
        monkeypatch, OnCuda, "components", lambda: StableAudio.from_plan(OnCuda(), cuda_graph=False)
    )
    assert events == ["capture begins", "capture ends", "other begins"]


@pytest.mark.parametrize("outer_runs", ["eagerly", "as a replay"])
def test_a_request_run_from_an_on_step_of_the_same_pipeline_ends(graphed, monkeypatch, outer_runs):
    """An `on_step` runs while its request holds the pipeline's `replaying` (at every step of an
    eager run of a graph pipeline, after a replay): a request it ran on the same pipeline waited
    for that lock, held by its own thread (hung for ever). Neither request's buffers are the
    other's, so each gets what it gets alone."""
    # The lock is the pipeline's, not the process-wide gate's: kept off the gate, a request stuck
    # here (as it was) does not hold off every later test's capture.
    monkeypatch.setattr(StableAudio, "meets_captures", property(lambda self: False))
    eager = StableAudio(graphed.components, cuda_graph=False)
    options = dict(seconds_total=0.5, steps=2)
    outer = resolve_request(GenerationRequest(prompts=("rain",), seed=1, **options), graphed.config)
    if outer_runs == "eagerly":  # as after a failed capture
        graphed.graphs.failed[graphed.request_shape(outer)] = "RuntimeError: a stand-in failure"
    else:
        graphed.run_resolved(outer)  # captured: the next request of its shape replays
    inner: list[torch.Tensor] = []

    def on_step(done: int, total: int) -> None:
        if not inner:  # the same shape: eager too, or a replay of the same graph
            inner.append(graphed.generate("hail", seed=2, **options).audio)

    results = []
    thread = threading.Thread(
        target=lambda: results.append(graphed.run_resolved(outer, on_step=on_step)), daemon=True
    )  # daemon: were it stuck
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive() and len(inner) == 1
    assert torch.equal(results[0].audio, eager.run_resolved(outer).audio)
    assert torch.equal(inner[0], eager.generate("hail", seed=2, **options).audio)
