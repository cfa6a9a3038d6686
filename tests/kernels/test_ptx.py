"""Every kernel, dtype and plugin tactic compiles to PTX and cubin for sm_80 and sm_90 on this
CPU-only machine, with the launch ABI the torch ops and the TensorRT plugins assume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stable_audio_rt.kernels.ptx import HIDDEN_PARAMETERS
from stable_audio_rt.kernels.specs import KERNELS, SHARED_MEMORY_LIMITS, TRITON_DTYPES

ARCHS = (80, 90)
# Triton targets the arch-specific sm_90a on Hopper.
PTX_TARGETS = {80: "sm_80", 90: "sm_90a"}


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_all_ptx.py")
    done = subprocess.run(
        [sys.executable, str(script), *map(str, ARCHS)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_variant_compiles(compiled):
    expected = {
        (spec.name, dtype, tactic.id, arch)
        for spec in KERNELS
        for dtype in TRITON_DTYPES.values()
        for tactic in spec.tactics
        for arch in ARCHS
    }
    assert {(r["kernel"], r["dtype"], r["tactic"], r["arch"]) for r in compiled} == expected
    assert all(r["ptx_target"] == PTX_TARGETS[r["arch"]] for r in compiled)
    assert all(r["cubin_bytes"] > 0 for r in compiled)


def test_entry_takes_inputs_extras_outputs_then_the_two_hidden_pointers(compiled):
    for r in compiled:
        assert r["ptx_parameters"] == r["spec_parameters"] + HIDDEN_PARAMETERS, r


def test_every_tactic_fits_the_shared_memory_of_every_target(compiled):
    # The smallest opt-in limit among the archs we know (sm_86/sm_89: 99 KB) bounds them all: a
    # plugin compiles for whichever of them builds the engine.
    smallest = min(SHARED_MEMORY_LIMITS.values())
    assert all(r["shared_bytes"] <= smallest for r in compiled), [
        r for r in compiled if r["shared_bytes"] > smallest
    ]
