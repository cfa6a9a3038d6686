"""CONTRACT TEST, not evidence that TensorRT works: our TensorRT plugin definitions are
registered against a stand-in of `tensorrt.plugin` (tests/fakes, written from NVIDIA's API
docs) and their aot_impl runs for real (Triton → PTX for sm_90), so the names, signatures,
type hints, autotune sets, launch grids and integer extras TensorRT would receive are checked
against what the torch ops launch for the same tensors. TensorRT itself never runs here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import fakes.tensorrt
import pytest

from stable_audio_rt.kernels import trt_plugins
from stable_audio_rt.kernels.ptx import HIDDEN_PARAMETERS
from stable_audio_rt.kernels.specs import KERNELS
from stable_audio_rt.trt_import import TensorRTUnavailable, import_tensorrt

ARCH = 90


@pytest.fixture(scope="module")
def calls():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("plugin_contract.py")
    done = subprocess.run(
        [sys.executable, str(script), str(ARCH)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_plugin_dtype_and_tactic_is_compiled(calls):
    dtypes = ("torch.float32", "torch.float16", "torch.bfloat16")
    expected = {(s.name, d, t.id) for s in KERNELS for d in dtypes for t in s.tactics}
    assert {(c["plugin"], c["dtype"], c["tactic"]) for c in calls} == expected
    assert set(calls[0]["ids"]) == {f"stable_audio_rt::{s.name}" for s in KERNELS}


def test_extras_and_grid_equal_what_the_torch_op_launches(calls):
    for c in calls:
        assert c["extras"] == c["torch_extras"], c["plugin"]
        assert c["grid"] == c["torch_grid"], c["plugin"]
        assert c["threads"] == 32 * c["warps"]


def test_ptx_entry_takes_inputs_extras_output_and_the_hidden_pointers(calls):
    for c in calls:
        assert c["ptx_has_entry"]
        assert c["ptx_parameters"] == c["spec_parameters"] + HIDDEN_PARAMETERS


def test_autotune_types_activations_together_and_tables_as_fp32(calls):
    for c in calls:
        positions = c["positions"]
        assert len(positions) == c["n_inputs"] + 1  # every input and the output has a type set
        tables = {k for k, v in positions.items() if v == "FP32"}
        expected_tables = {
            "rope_self_attention": {"3", "4"},
            "gqa_cross_attention": set(),
            "snake": {"1", "2"},
        }
        assert tables == expected_tables[c["plugin"]]


def test_output_has_the_shape_of_the_first_input(calls):
    for c in calls:
        assert c["out_shape"] == {"snake": [2, 128, 70001]}.get(c["plugin"], [2, 24, 1025, 64])


def test_without_tensorrt_one_clear_error():
    with pytest.raises(TensorRTUnavailable, match=r"pip install 'stable-audio-rt\[trt\]'"):
        trt_plugins.import_tensorrt_plugin()


def test_plans_run_without_tensorrt_plugin_and_only_plugin_builds_need_it(monkeypatch):
    """A TensorRT without tensorrt.plugin (before 10.9's Python AOT plugins) still runs plans
    (their plugins' kernels are in the engine); building with our plugins says what it needs."""
    monkeypatch.setitem(sys.modules, "tensorrt", fakes.tensorrt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)  # what `import` then fails on
    assert import_tensorrt() is fakes.tensorrt
    with pytest.raises(TensorRTUnavailable, match="needs TensorRT 10.9 or later"):
        trt_plugins.import_tensorrt_plugin()


def test_the_tensorrt_backend_loads_neither_the_plugins_nor_triton():
    # When the plugins are loaded: by the engine build only, before parsing a graph that calls
    # them (tests/export/test_trt_build.py). An AOT plugin's PTX is serialized into the plan, so
    # running it needs no Python definition (NVIDIA/TensorRT samples/python/
    # quickly_deployable_plugins, "Loading and running a TRT engine containing an AOT plugin").
    code = (
        "import sys, stable_audio_rt.runtime.backends.tensorrt_backend; "
        "print([m for m in ('stable_audio_rt.kernels.trt_plugins', 'triton') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "[]"
