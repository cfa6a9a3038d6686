"""Shared fixtures: one fresh random seed per run (printed, and settable with SA_TEST_SEED),
random-weight tiny checkpoints in both layouts built from one set of reference modules, and
engine folders exported from them once per run; each pytest-xdist worker on its share of the
cores."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

# Triton decides at import whether kernels are compiled or interpreted: the kernel tests run
# them on the CPU under the interpreter, so it is on before anything imports Triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Each pytest-xdist worker computes on its share of the cores, and the CLIs and scripts it starts
# on theirs (OMP_NUM_THREADS, read by torch at import, and by onnxruntime's sessions through
# torch): by default each process took every core, and two workers on the 2-core machines ran
# four spinning OpenMP threads on two cores, twice as slow (measured: 200 s against 94 s for the
# VAE-decode, reference, capturability and batching files). Set in the workers only: they inherit
# the controller's environment.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    cores_each = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores_each)))

import pytest
import torch
from checkpoints import build_reference, write_diffusers_checkpoint, write_single_file_checkpoint
from filelock import FileLock
from seeding import SEED

from stable_audio_rt.models.config import TINY

Built = TypeVar("Built")

# Every write to it fails with ENOSPC, as on a full disk.
FULL_DEVICE = Path("/dev/full")


# The files that take longest, longest first (60-225 s each on the 2-core EPYC, 2026-12-01, each
# beside the other worker), run before the rest: pytest-xdist hands each worker whole files in
# collection order, and a long file started last kept one worker busy minutes after the other.
LONGEST_FILES = (
    "serve/test_ray_serve.py",
    "export/test_export.py",
    "benchmarks/test_gpu_check_script.py",
    "benchmarks/test_serve_ray_script.py",
    "export/test_real_size_dit.py",
    "kernels/test_onnx_plugin_export.py",
    "runtime/test_vae_decode.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0].removeprefix("tests/"), len(first)))


def pytest_report_header() -> str:
    return f"stable-audio-rt test seed: {SEED} (rerun with SA_TEST_SEED={SEED})"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """torch's global generator (module inits, `torch.randn` without a generator) seeded from the
    run's seed before each test and the fixtures set up for it: fresh each run, and replayed by
    SA_TEST_SEED whichever tests ran before it in its process (pytest-xdist shares them out)."""
    torch.manual_seed(SEED)


@pytest.fixture(scope="session", autouse=True)
def recorded_mallopt() -> Iterator[list[tuple[int, int]]]:
    """The CLIs' malloc policy (`runtime/cpu_memory.py`) recorded instead of applied, from before
    any fixture runs a CLI: applied, it would last the pytest process's life.
    tests/runtime/test_cpu_memory.py applies it in a subprocess."""
    from stable_audio_rt.runtime import cpu_memory

    calls: list[tuple[int, int]] = []

    def record(param: int, value: int) -> int:
        calls.append((param, value))
        return 1  # mallopt's success

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_memory, "glibc_mallopt", lambda: record)
        yield calls


@pytest.fixture
def mallopt_calls(recorded_mallopt) -> list[tuple[int, int]]:
    """The mallopt calls from here on in this test."""
    recorded_mallopt.clear()
    return recorded_mallopt


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


@pytest.fixture(scope="session")
def tiny_reference():
    return build_reference(TINY, torch.Generator().manual_seed(SEED + 1))


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Built]) -> Built:
    """`build(folder)`'s result, built by one process for the whole run: with pytest-xdist, the
    first worker to ask builds it in the run's shared temp folder (the workers' folders' parent)
    under a file lock, and the others wait for it and read its result back (pickled). The
    engines' export took each worker 90 s."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, result = root / name, root / f"{name}.pickle"
    with FileLock(root / f"{name}.lock"):
        if result.exists():
            return pickle.loads(result.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # what a worker failing mid-build left
        folder.mkdir()
        built = build(folder)
        result.write_bytes(pickle.dumps(built))
        return built


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tiny_reference, tmp_path_factory):
    """One folder for every worker: the engine folders record the path they were exported from."""
    return built_once(
        tmp_path_factory, "diffusers", lambda folder: write_diffusers_checkpoint(tiny_reference, folder)
    )


@pytest.fixture(scope="session")
def tiny_single_file_dir(tiny_reference, tmp_path_factory):
    return write_single_file_checkpoint(tiny_reference, TINY, tmp_path_factory.mktemp("single_file"))


@pytest.fixture(scope="session", params=["diffusers", "single_file"])
def tiny_model(request, tiny_diffusers_dir, tiny_single_file_dir):
    """Our model loaded from each layout of the same random weights."""
    from stable_audio_rt.models.loading import load_stable_audio

    folder = tiny_diffusers_dir if request.param == "diffusers" else tiny_single_file_dir
    return load_stable_audio(folder)


# A profile that covers the tests' shapes: two clips (four CFG rows) and 1–64 latent frames.
ENGINE_PROFILE = dict(max_batch=2, frames=(1, 16, 64))


@pytest.fixture(scope="session")
def engines(tiny_diffusers_dir, tmp_path_factory):
    """{precision: (folder, manifest)} for fp32 and fp16, exported from the tiny checkpoint once
    per run (`built_once`): the folders are shared, so a test that writes to one copies it first."""
    from stable_audio_rt.export.engine_folder import ExportSettings, export_engines

    def export(root: Path) -> dict:
        out = {}
        for precision in ("fp32", "fp16"):
            folder, settings = root / precision, ExportSettings(precision, **ENGINE_PROFILE)
            out[precision] = (folder, export_engines(tiny_diffusers_dir, folder, settings))
        return out

    return built_once(tmp_path_factory, "engines", export)


@pytest.fixture
def full_disk(monkeypatch) -> Callable[[str], None]:
    """`full_disk(name)`: the temp files then made for a file called `name` are links to /dev/full,
    so writing them fails as on a full disk, with the kernel's own ENOSPC. A rename or removal
    moves the link, never the device."""
    if not FULL_DEVICE.is_char_device():
        pytest.skip(f"needs {FULL_DEVICE}")
    from stable_audio_rt import atomic

    created = atomic._new_file

    def make(name: str) -> None:
        def new_file(path: Path) -> None:
            if atomic.written_for(path.name) == name:
                path.symlink_to(FULL_DEVICE)
            else:
                created(path)

        monkeypatch.setattr(atomic, "_new_file", new_file)

    return make
