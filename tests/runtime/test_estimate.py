"""A CPU request that takes minutes says so before it starts: its FLOPs over the CPU's matrix
rate in the model's dtype, and the options that would shorten it."""

import pytest
import torch

from stable_audio_rt import precision
from stable_audio_rt.bench.flops import request_flops
from stable_audio_rt.bench.runner import Workload
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0, STABLE_AUDIO_OPEN_SMALL, TINY
from stable_audio_rt.runtime import cli, estimate
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request

CPU = torch.device("cpu")


@pytest.fixture
def slow_cpu(monkeypatch):
    """A CPU measured at 10 GFLOP/s, with bf16 units or not as the test says."""
    monkeypatch.setattr(estimate, "matrix_rate", lambda width, dtype: 10.0)

    def bf16_units(present: bool) -> None:
        answer = {name: present for name in precision.BF16_MATRIX_FEATURES}
        monkeypatch.setattr(precision, "cpu_capabilities", lambda: answer)

    return bf16_units


def test_the_floor_is_the_request_flops_over_the_measured_rate(slow_cpu):
    slow_cpu(True)
    seconds = torch.randint(2, 40, ()).item()
    resolved = resolve_request(
        GenerationRequest(("x",), seconds_total=seconds, steps=50), STABLE_AUDIO_OPEN_1_0
    )
    found = estimate.estimate(STABLE_AUDIO_OPEN_1_0, resolved, CPU, torch.float32)
    flops = request_flops(STABLE_AUDIO_OPEN_1_0, 1, resolved.frames, 50, True, estimate.T5_BASE_DIMS)
    assert found.flops == flops.total and found.seconds == pytest.approx(flops.total / 10e9)
    assert f"{flops.total / 1e12:.1f} TFLOP: at least" in found.line()
    assert [option.split(" ")[0] for option in found.faster] == ["--window", "Stable", "--dtype"]


def test_only_the_options_that_apply_are_offered(slow_cpu):
    slow_cpu(False)
    trimmed = GenerationRequest(("x",), seconds_total=5, window="trim")
    found = estimate.estimate(
        STABLE_AUDIO_OPEN_1_0, resolve_request(trimmed, STABLE_AUDIO_OPEN_1_0), CPU, torch.float32
    )
    assert [option.split(" ")[0] for option in found.faster] == ["Stable"]  # no bf16 units, trimmed
    small = resolve_request(
        GenerationRequest(("x",), seconds_total=11, window="trim"), STABLE_AUDIO_OPEN_SMALL
    )
    assert estimate.estimate(STABLE_AUDIO_OPEN_SMALL, small, CPU, torch.bfloat16).faster == ()


def test_short_requests_and_gpus_are_not_announced(slow_cpu):
    slow_cpu(True)
    resolved = resolve_request(GenerationRequest(("x",), seconds_total=1, steps=3), TINY)
    assert estimate.announce(TINY, resolved, CPU, torch.float32) is None
    full = resolve_request(GenerationRequest(("x",)), STABLE_AUDIO_OPEN_1_0)
    assert estimate.announce(STABLE_AUDIO_OPEN_1_0, full, torch.device("cuda"), torch.float16) is None
    assert (
        estimate.announce(STABLE_AUDIO_OPEN_1_0, full, CPU, torch.float32).seconds >= estimate.ANNOUNCE_FROM_S
    )


def test_the_measured_rate_is_the_probes_flops_over_its_time(monkeypatch):
    """The timer answers a fixed time: the rate must be the probe's FLOPs over it, from a product
    of the probe's shape that really ran."""
    seconds, products = 2e-3, []

    def timed(product, repeats):
        products.append(product())
        return seconds

    monkeypatch.setattr(estimate, "best_seconds", timed)
    width = 64
    rate = estimate.matrix_rate(width, torch.float32)
    (product,) = products
    assert product.shape == (estimate.PROBE_ROWS, 4 * width) and torch.isfinite(product).all()
    assert rate == pytest.approx(2 * estimate.PROBE_ROWS * width * 4 * width / seconds / 1e9, rel=1e-12)
    monkeypatch.undo()
    assert estimate.matrix_rate(width, torch.float32) > 0  # and the real timer gives a figure


def test_sa_run_says_so_before_loading(slow_cpu, monkeypatch, tmp_path, capsys):
    slow_cpu(False)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # the load: the estimate must already be printed

    monkeypatch.setattr(StableAudio, "from_plan", stop)
    argv = ["x", "--model", "random-stable-audio-open-1.0", "--seconds", "20", "-o", str(tmp_path / "x.wav")]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "dtype fp32: auto:" in err and "has no bf16 matrix units" in err
    assert "sa-run: this request is" in err and "faster: --window trim" in err


def test_sa_bench_says_how_long_its_fp32_row_takes_at_the_least(slow_cpu):
    slow_cpu(True)
    steps, runs = torch.randint(5, 100, ()).item(), torch.randint(1, 6, ()).item()
    workloads = [Workload(frames, steps, 1, 0, 7.0) for frames in (64, 1024)]
    found = estimate.announce_benchmark(STABLE_AUDIO_OPEN_1_0, workloads, runs, CPU, ("--steps 10",))
    each = [
        request_flops(STABLE_AUDIO_OPEN_1_0, 1, f, steps, True, estimate.T5_BASE_DIMS).total
        for f in (64, 1024)
    ]
    assert found.flops == runs * sum(each) and found.seconds == pytest.approx(runs * sum(each) / 10e9)
    assert found.line().startswith("this benchmark's fp32 row alone is")
    assert found.line().endswith("; faster: --steps 10")
    tiny = [Workload(8, 2, 1, 0, 7.0)]
    assert estimate.announce_benchmark(TINY, tiny, runs, CPU, ()) is None
    gpu = torch.device("cuda")
    assert estimate.announce_benchmark(STABLE_AUDIO_OPEN_1_0, workloads, runs, gpu, ()) is None
