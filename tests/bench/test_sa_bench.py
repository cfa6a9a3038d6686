"""sa-bench on the tiny model: the report's schema and arithmetic, FLOP counts against a hand
count, the markdown and plot files, the diffusers peer (in each row's precision) and onnxruntime
rows, the auto row, the presets, and bad arguments refused before any work."""

import copy
import functools
import importlib.metadata
import json
import math
import os
import re
import shutil
import tempfile
import types

import pytest
import torch
from seeding import SEED

from stable_audio_rt import precision
from stable_audio_rt.bench import cli
from stable_audio_rt.bench.flops import dit_step_flops, request_flops, t5_flops, vae_decode_flops
from stable_audio_rt.bench.precision_report import compare, stage_outputs
from stable_audio_rt.bench.runner import NEGATIVE_PROMPT, PROMPT, Workload
from stable_audio_rt.models.config import TINY
from stable_audio_rt.runtime.pipeline import StableAudio

# The tests' diffusers checkpoint's T5 (tests/checkpoints.py): d_model 128, d_ff 256, 2 layers.
T5_DIMS = (128, 256, 2)
RUN_FIELDS = {
    "backend", "precision", "label", "kernels", "dtype_reason", "frames", "steps", "batch", "cfg_scale",
    "audio_seconds", "load_s", "cold_s", "warm_s", "per_step_s", "tokenize_s", "t5_s", "peak_memory_mb",
    "rtf", "x_real_time", "flops", "floor", "quality",
}  # fmt: skip


def test_dit_step_flops_equal_a_hand_count():
    # TINY: D = 256, depth 2, 4 heads, C = 8, FF inner 1024, context 33 tokens; 2 rows, 4 frames
    # → 2·5 = 10 tokens. Each term is 2·m·k·n (× depth for the per-block products).
    gemms = (
        2 * 8 * 8 * 8  # preprocess conv, 8 frame-rows
        + 2 * 8 * 8 * 256  # project_in
        + 2 * (2 * 10 * 256 * 768)  # to_qkv, 2 blocks
        + 3 * 2 * (2 * 10 * 256 * 256)  # self out, cross q, cross out
        + 2 * (2 * 10 * 256 * 2048)  # ff proj_in (SwiGLU: 2 × 1024)
        + 2 * (2 * 10 * 1024 * 256)  # ff proj_out
        + 2 * 10 * 256 * 8  # project_out
        + 2 * 8 * 8 * 8  # postprocess conv
    )
    attention = 2 * 2 * (2 * (2 * 5 * 256 * 5) + 2 * (2 * 5 * 256 * 33))  # rows · depth · (self + cross)
    assert dit_step_flops(TINY.dit, rows=2, frames=4, context_tokens=33) == gemms + attention


def test_vae_decode_flops_equal_a_hand_count():
    # TINY VAE: channels 16, widths 16·[1, 2, 4, 8, 16], strides 2, 4, 4, 8, 8 (decoder 8, 8, 4, 4, 2);
    # per block: a transposed conv (kernel 2s, over input positions) and 3 × (k7 + k1) res units.
    f = 1
    total = 2 * 8 * 256 * 7 * f  # in conv, latent 8 → 256
    for c_in, c_out, s, length_in in ((256, 128, 8, 1), (128, 64, 8, 8), (64, 32, 4, 64), (32, 16, 4, 256),
                                      (16, 16, 2, 1024)):  # fmt: skip
        total += 2 * c_in * c_out * 2 * s * length_in
        total += 3 * (2 * c_out * c_out * 7 * length_in * s + 2 * c_out * c_out * length_in * s)
    total += 2 * 16 * 2 * 7 * 2048  # out conv → stereo
    assert vae_decode_flops(TINY.vae, rows=1, frames=1) == total


def test_t5_flops_equal_a_hand_count():
    per_layer = 4 * 2 * 32 * 128 * 128 + 2 * 2 * 32 * 128 * 32 + 2 * 2 * 32 * 128 * 256
    assert t5_flops(128, 256, 2, tokens=32, rows=3) == 3 * 2 * per_layer


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, engines, tiny_diffusers_dir):
    out = tmp_path_factory.mktemp("bench")
    folder, _ = engines["fp32"]  # exported from tiny_diffusers_dir
    outputs = ["--json", str(out / "b.json"), "--markdown", str(out / "b.md"), "--plot", str(out / "b.png")]
    argv = ["--model", str(tiny_diffusers_dir), "--backend", "all", "--engines", str(folder),
            "--frames", "4", "8", "--steps", "2", "--repeats", "2", "--warmup", "0", *outputs]  # fmt: skip
    assert cli.main(argv) == 0
    return out, json.loads((out / "b.json").read_text())


def test_report_has_every_field_and_right_arithmetic(bench_run):
    _, report = bench_run
    assert {"date", "device", "torch", "onnxruntime", "malloc", "command", "model", "preset", "gemm_floor",
            "runs", "peer", "precision_report"} <= report.keys()  # fmt: skip
    # The CPU by name, as torch's cpuinfo reads it (not only "x86_64"), and the libraries' versions.
    cpu_name = precision.cpu_capabilities().get("cpu_name")
    assert cpu_name and report["device"].startswith(f"{cpu_name} (") and "threads" in report["device"]
    assert report["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert report["malloc"] == "freed memory kept for reuse (glibc mallopt)"  # sa-run's default on a CPU
    assert {(r["backend"], r["frames"]) for r in report["runs"]} == {
        ("torch", 4),
        ("torch", 8),
        ("onnxruntime", 4),
        ("onnxruntime", 8),
    }
    for run in report["runs"]:
        assert RUN_FIELDS <= run.keys()
        warm = run["warm_s"]["total"]["p50"]
        assert run["audio_seconds"] == pytest.approx(run["frames"] * 2048 / 44100)
        assert run["rtf"] == pytest.approx(warm / run["audio_seconds"])
        assert run["x_real_time"] == pytest.approx(1 / run["rtf"])
        # The median of each run's sampling / steps is the median sampling time / steps (2 steps).
        assert run["per_step_s"] == pytest.approx(run["warm_s"]["sampling"]["p50"] / 2, rel=1e-12)
        expected = request_flops(TINY, 1, run["frames"], 2, True, T5_DIMS)
        assert run["flops"]["dit_step"] == expected.dit_step and run["flops"]["total"] == expected.total
        floor = run["floor"]
        assert floor["dit_step_fraction"] == pytest.approx(floor["dit_step_s"] / run["per_step_s"])
    reference = [r for r in report["runs"] if r["backend"] == "torch"]
    assert all(r["quality"]["latent_cosine_distance"] is None for r in reference)
    ort = [r for r in report["runs"] if r["backend"] == "onnxruntime"]
    assert all(r["quality"]["latent_cosine_distance"] <= 1e-8 for r in ort)  # fp32 vs fp32: rounding
    assert set(report["gemm_floor"]) == {
        "torch-float32 2x4",
        "torch-float32 2x8",
        "onnxruntime-float32 2x4",
        "onnxruntime-float32 2x8",
    }


def test_markdown_and_plot_are_written(bench_run):
    out, report = bench_run
    table = (out / "b.md").read_text()
    assert table.count("\n| torch | fp32 |") == 2 and "| onnxruntime | fp32 |" in table
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_rows_gemm_floor_is_drawn_in_the_rows_colour(bench_run):
    import matplotlib.pyplot as plt

    from stable_audio_rt.bench.report import latency_figure

    _, report = bench_run
    figure = latency_figure(report)
    lines = figure.axes[0].get_lines()
    plt.close(figure)
    labels = {f"{r['backend']} {r['label']} (steps 2, batch 1)" for r in report["runs"]}
    measured = [line for line in lines if line.get_label() in labels]
    assert len(measured) == len(labels) == 2
    for line in measured:
        frames = line.get_xdata()
        floors = [ln for ln in lines if ln.get_linestyle() == "--" and ln.get_color() == line.get_color()]
        assert len(floors) == 1, "one dashed floor per row, in the row's colour"
        assert list(floors[0].get_xdata()) == list(frames) == [4, 8]
        assert all(0 < f for f in floors[0].get_ydata())
    assert len({line.get_color() for line in measured}) == 2


def test_a_floor_measured_low_is_flagged_in_the_markdown(bench_run):
    from stable_audio_rt.bench.report import markdown

    _, report = bench_run
    quiet = copy.deepcopy(report)  # this run's own floors may have met a busy machine
    for run in quiet["runs"]:
        run["floor"]["dit_step_fraction"] = 0.5
    assert "measured low" not in markdown(quiet)
    disturbed = copy.deepcopy(quiet)
    disturbed["runs"][0]["floor"]["dit_step_fraction"] = 2.6  # faster than the floor: impossible
    note = next(line for line in markdown(disturbed).splitlines() if "measured low" in line)
    assert f"floor / step above 1 for {report['runs'][0]['label']}): other work" in note, note


def test_a_probe_times_many_calls_until_its_minimum_time_and_answers_the_fastest(monkeypatch):
    from stable_audio_rt.runtime import timing

    clock = [0.0]  # perf_counter as the probe reads it: each call takes the next duration
    durations = iter([0.0, 0.004, 0.001, 0.003] + [0.002] * 100)  # the first call is untimed
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    calls = []

    def call():
        calls.append(1)
        clock[0] += next(durations)

    assert timing.best_seconds(call, 3) == 0.001 and len(calls) == 4
    calls.clear()
    durations = iter([0.0, 0.004, 0.003, 0.005] + [0.002] * 100)
    assert timing.best_seconds(call, 3, min_total_s=0.03) == pytest.approx(0.002)  # past the first three
    assert len(calls) == 1 + 3 + 9  # 0.012 s in three, then 0.002 s a call until 0.03


def test_diffusers_peer_runs_the_same_work_interleaved(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the peer's weights are written
    argv = ["--model", "tiny-random", "--frames", "8", "--steps", "2", "--repeats", "2", "--warmup", "0",
            "--diffusers", "--json", str(tmp_path / "p.json")]  # fmt: skip
    assert cli.main(argv) == 0
    assert not list(scratch.glob("sa-bench-peer-*"))  # the peer's weights (GBs at real size) are gone
    (peer,) = json.loads((tmp_path / "p.json").read_text())["peer"]
    assert (peer["frames"], peer["steps"], peer["batch"]) == (8, 2, 1)
    assert len(peer["pairs"]) == 2
    for pair in peer["pairs"]:
        assert pair["ratio"] == pytest.approx(pair["diffusers_s"] / pair["ours_s"])


def test_on_a_gpu_the_peers_queued_work_is_timed_as_the_peers(monkeypatch):
    """diffusers returns its audio on the device with the decode still queued; our next request
    (which returns host audio) would wait for it and be charged its time."""
    from stable_audio_rt.bench import runner

    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    queued = [0.0]  # device seconds the peer left queued, spent by whoever synchronises next

    def synchronize(device=None) -> None:
        clock[0] += queued[0]
        queued[0] = 0.0

    def peer_generate(*args) -> None:
        clock[0] += 2.0  # its steps, synchronised by its scheduler
        queued[0] = 1.0  # its decode, not

    def our_generate(prompt, **options) -> None:
        synchronize()  # the first copy of our inputs waits for what the device has queued
        clock[0] += 0.5

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    peer = types.SimpleNamespace(generate=peer_generate)
    ours = types.SimpleNamespace(config=TINY, device=torch.device("cuda"), generate=our_generate)
    workload = Workload(frames=8, steps=2, batch=1, seed=0, cfg_scale=7.0)
    pairs = runner.interleave_with_peer(peer, ours, workload, repeats=2)["pairs"]
    assert [(p["ours_s"], p["diffusers_s"]) for p in pairs] == [(0.5, 3.0)] * 2


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--backend", "onnxruntime"], "needs --engines"),
        (["--backend", "tensorrt"], "needs --engines"),
        (["--backend", "tensorrt", "--engines", "."], "TensorRT is not usable here"),
        (["--frames", "0"], r"--frames values must be ≥ 1"),
        (["--frames", "65"], "exceeds the model's window of 64"),
        (["--frames", "4", "8", "4"], "--frames gives 4 more than once: give each value once"),
        (["--batch", "1", "2", "2", "1"], "--batch gives 1, 2 more than once"),
        (["--repeats", "0"], "--repeats must be ≥ 1"),
        (["--json", "out.txt"], "must name a .json file"),
        (["--plot", "/no/such/folder/p.png"], "does not exist"),
        (["--diffusers", "--frames", "4", "8"], "give one --frames value"),
        (["--model", "tiny-random-small", "--diffusers"], "Stable Audio Open 1.0's structure only"),
        (["--engines", "."], "is not an engine folder (no manifest.json)"),
        (["--precision-report"], "compares non-fp32 torch rows with fp32, and this run has none"),
        (["--model", ""], "the model name is empty: give a Hub repo id"),
        (["--cfg-scale", "5000"], "--cfg-scale must be in [0, 1000], got 5000"),
        (
            ["--frames", "4", "--steps", "2", "20000"],
            "--steps must be in [1, 10000], got 20000",
        ),  # was after the load
        (["--json", "dangling.json"], "--json: folder /no/such/folder does not exist"),  # a link's target's
    ],
)
def test_bad_arguments_are_refused_before_any_work(arguments, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "run_workload", lambda *a, **k: pytest.fail("no run may start"))
    (tmp_path / "dangling.json").symlink_to("/no/such/folder/report.json")
    assert cli.main(["--model", "tiny-random", *arguments]) == 2
    assert message in capsys.readouterr().err.replace("\\", "")
    assert [p.name for p in tmp_path.iterdir()] == ["dangling.json"], "nothing may be written"


def test_an_output_path_that_is_a_folder_is_refused_before_any_work(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "run_workload", lambda *a, **k: pytest.fail("no run may start"))
    (tmp_path / "dir.json").mkdir()
    assert cli.main(["--model", "tiny-random", "--json", str(tmp_path / "dir.json")]) == 2
    assert "dir.json is a folder; name a file in it, such as" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["dir.json"]


def test_with_engines_the_model_defaults_to_the_one_they_were_exported_from(engines):
    folder, manifest = engines["fp32"]
    parsed = cli.build_parser().parse_args(["--engines", str(folder)])
    read = cli.read_engines(parsed)
    args = cli.apply_preset(parsed, read)
    assert args.model == manifest.source and args.backend == "all"
    given = cli.apply_preset(cli.build_parser().parse_args(["--engines", str(folder), "--model", "x"]), read)
    assert given.model == "x"  # a model given is checked against the folder's weights, not replaced


def test_engines_from_other_weights_are_refused_before_any_run(
    engines, tiny_single_file_dir, capsys, monkeypatch
):
    # The engines were exported from tiny_diffusers_dir; the single-file copy's files differ.
    monkeypatch.setattr(cli, "run_workload", lambda *a, **k: pytest.fail("no run may start"))
    folder, _ = engines["fp32"]
    argv = ["--model", str(tiny_single_file_dir), "--backend", "onnxruntime", "--engines", str(folder)]
    assert cli.main(argv) == 2
    assert "was built from other weights" in capsys.readouterr().err


def test_diffusers_beside_engines_not_from_a_diffusers_folder_is_refused_before_any_work(
    engines, tiny_single_file_dir, capsys, monkeypatch
):
    """The peer's random weights (4.9 GB at real size) were built, then refused as not the
    engines' weights, naming the deleted temp folder as the model to export from."""
    monkeypatch.setattr(cli, "_peer_pipelines", lambda *a, **k: pytest.fail("the peer was built"))
    argv = ["--engines", str(engines["fp32"][0]), "--diffusers", "--frames", "4"]
    assert cli.main([*argv, "--model", str(tiny_single_file_dir)]) == 2
    err = capsys.readouterr().err
    assert "--diffusers with --engines runs diffusers on the weights the engines were exported from" in err
    assert f"and {tiny_single_file_dir} is not: export the engines from such a folder" in err


def test_rows_outside_the_engines_profiles_are_refused_before_any_run(
    engines, tiny_diffusers_dir, capsys, monkeypatch
):
    monkeypatch.setattr(cli, "run_workload", lambda *a, **k: pytest.fail("no run may start"))
    argv = ["--model", str(tiny_diffusers_dir), "--engines", str(engines["fp32"][0]), "--frames", "4"]
    assert cli.main([*argv, "--batch", "3"]) == 2  # 2 clips a run, exported with --max-batch 2
    assert "dit engine takes batch 1–4 rows, this request needs 6" in capsys.readouterr().err


def test_torch_precisions_are_refused_where_only_an_engine_backend_runs(
    engines, tiny_diffusers_dir, capsys, monkeypatch
):
    # --backend onnxruntime runs the fp32 torch reference and the engines: a bf16 torch row was
    # silently left out.
    monkeypatch.setattr(cli, "run_workload", lambda *a, **k: pytest.fail("no run may start"))
    argv = ["--model", str(tiny_diffusers_dir), "--engines", str(engines["fp32"][0]), "--frames", "4"]
    assert cli.main([*argv, "--backend", "onnxruntime", "--precision", "fp32", "bf16"]) == 2
    assert "--precision fp32 bf16 sets the torch rows' precisions, and --backend onnxruntime runs no" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_a_precision_report_without_torch_rows_is_refused_with_advice_that_runs(backend):
    """With --backend onnxruntime or tensorrt, the refusal said "add --precision bf16 or fp16",
    which is refused in turn with those backends (--precision sets the torch rows alone)."""
    import argparse

    args = argparse.Namespace(precision_report=True, backend=backend, precision=["fp32"])
    with pytest.raises(
        cli.ConfigError, match=f"--backend {backend} runs no torch row but the fp32 reference"
    ):
        cli._check_precision_report(args, torch.device("cpu"))
    followed = argparse.Namespace(precision_report=True, backend="all", precision=["bf16"])
    cli._check_precision_report(followed, torch.device("cpu"))  # the advice: taken


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: (f / "dit.onnx.data").write_bytes((f / "dit.onnx.data").read_bytes()[:-100]),
         r"dit\.onnx\.data does not match manifest\.json"),
        (lambda f: (f / "vae_decoder.onnx").unlink(), r"vae_decoder\.onnx is missing"),
    ],
    ids=["truncated", "missing"],
)  # fmt: skip
def test_a_damaged_engine_folder_is_refused_before_any_run(
    engines, tiny_diffusers_dir, tmp_path, capsys, monkeypatch, damage, message
):
    monkeypatch.setattr(cli, "run_workload", lambda *a, **k: pytest.fail("no run may start"))
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    damage(folder)
    assert cli.main(["--model", str(tiny_diffusers_dir), "--engines", str(folder), "--frames", "4"]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    "library,dtype",
    [("torch", torch.float32), ("onnxruntime", torch.float32), ("onnxruntime", torch.float16)],
)
def test_gemm_rate_is_the_steps_flops_over_its_products_times(library, dtype, monkeypatch):
    """Each product's timer answers its own time: the rate must count every product `count`
    times, and the products timed must be the step's shapes."""
    from stable_audio_rt.bench import gemm
    from stable_audio_rt.bench.flops import dit_step_gemms

    gemms = dit_step_gemms(TINY.dit, 2, 8)
    shapes, times = [], iter(1e-4 * (k + 1) for k in range(len(gemms)))

    def timed(product, repeats, min_total_s=0.0):
        assert min_total_s == gemm.PROBE_TOTAL_S  # every shape probed for a while, not 3 calls
        out = product()
        out = out[0] if isinstance(out, list) else out
        shapes.append(tuple(out.shape))
        dtypes.add(str(out.dtype).removeprefix("torch."))
        return next(times)

    dtypes = set()
    monkeypatch.setattr(gemm, "best_seconds", timed)
    rate = (
        gemm.torch_gemm_rate(gemms, torch.device("cpu"), dtype)
        if library == "torch"
        else gemm.onnxruntime_gemm_rate(gemms, dtype, torch.device("cpu"))
    )
    assert shapes == [(g.m, g.n) for g in gemms]
    assert dtypes == {str(dtype).removeprefix("torch.")}  # the products run in the row's precision
    step_s = sum(1e-4 * (k + 1) * g.count for k, g in enumerate(gemms))
    assert rate.library == library and rate.seconds_per_step == pytest.approx(step_s, rel=1e-12)
    assert rate.gflops_per_s == pytest.approx(sum(g.flops for g in gemms) / step_s / 1e9, rel=1e-12)


def test_small_runs_with_its_own_defaults(tmp_path):
    # Stable Audio Open Small's structure: 8 pingpong steps, no CFG (one DiT row per clip).
    argv = ["--model", "tiny-random-small", "--frames", "8", "--repeats", "1", "--warmup", "0",
            "--json", str(tmp_path / "s.json")]  # fmt: skip
    assert cli.main(argv) == 0
    (run,) = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert (run["steps"], run["cfg_scale"]) == (8, 1.0)
    assert run["floor"]["gflops_per_s"] > 0 and run["flops"]["steps"] == 8


def test_a_stdout_reader_gone_loses_no_report_file(tmp_path, monkeypatch):
    """`sa-bench --json r.json | head` (or `2>&1 | head`): the markdown's print met the closed
    pipe, a traceback and exit 1, and the files after it were never written."""
    import sys

    reading, writing = os.pipe()
    stream = os.fdopen(writing, "w")
    os.close(reading)  # the reader is gone
    monkeypatch.setattr(sys, "stdout", stream)
    argv = ["--model", "tiny-random", "--frames", "4", "--steps", "1", "--repeats", "1", "--warmup", "0",
            "--json", str(tmp_path / "r.json")]  # fmt: skip
    try:
        assert cli.main(argv) == 0
        assert json.loads((tmp_path / "r.json").read_text())["runs"]
    finally:
        stream.close()


def test_peer_runs_in_the_precision_of_each_row(tmp_path, tiny_diffusers_dir, monkeypatch):
    paired = []
    interleave = cli.interleave_with_peer

    def spy(peer, ours, workload, repeats):
        pipeline = peer.pipeline
        paired.append(
            (ours.dtype, pipeline.transformer.dtype, pipeline.vae.dtype, pipeline.text_encoder.dtype)
        )
        return interleave(peer, ours, workload, repeats)

    monkeypatch.setattr(cli, "interleave_with_peer", spy)
    argv = ["--model", str(tiny_diffusers_dir), "--precision", "bf16", "--diffusers", "--frames", "8",
            "--steps", "2", "--repeats", "1", "--warmup", "0", "--json", str(tmp_path / "p.json"),
            "--markdown", str(tmp_path / "p.md")]  # fmt: skip
    assert cli.main(argv) == 0
    assert paired == [(torch.float32,) * 4, (torch.bfloat16,) * 4]
    fp32, bf16 = json.loads((tmp_path / "p.json").read_text())["peer"]
    assert (fp32["ours"], fp32["diffusers_precision"]) == ("torch fp32", "fp32")
    assert (bf16["ours"], bf16["diffusers_precision"]) == ("torch bf16", "bf16")
    assert set(bf16["diffusers_dtypes"].values()) == {"bfloat16"}
    assert "StableAudioPipeline in bf16" in (tmp_path / "p.md").read_text()


def test_auto_row_is_resolved_labelled_floored_and_precision_reported(tmp_path, monkeypatch):
    # A CPU with bf16 matrix units, whatever this one has: auto resolves to bf16.
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {"avx512_bf16": True, "cpu_name": "TestCPU"})
    argv = ["--model", "tiny-random", "--device", "cpu", "--precision", "auto", "--precision-report",
            "--frames", "8", "--steps", "2", "--repeats", "1", "--warmup", "0",
            "--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md")]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    reference, auto = report["runs"]
    assert (reference["label"], reference["kernels"]) == ("fp32", "compiled")
    assert (auto["label"], auto["precision"], auto["kernels"]) == ("auto→bf16", "bf16", "compiled")
    assert "TestCPU" in auto["dtype_reason"]
    # Each row's step against the GEMM floor of its own precision.
    assert (reference["floor"]["gemm"], auto["floor"]["gemm"]) == ("torch-float32 2x8", "torch-bfloat16 2x8")
    assert auto["floor"]["gflops_per_s"] == report["gemm_floor"]["torch-bfloat16 2x8"]["gflops_per_s"]
    (entry,) = report["precision_report"]
    assert (entry["ours"], entry["frames"], entry["batch"]) == ("torch auto→bf16", 8, 1)
    assert [s["stage"] for s in entry["stages"]] == V_STAGES
    assert all(math.isfinite(s["snr_db"]) and s["snr_db"] < BF16_SNR_BELOW_DB for s in entry["stages"])
    table = (tmp_path / "a.md").read_text()
    assert "| torch | auto→bf16 | compiled |" in table and "Precision, one call per stage" in table
    assert "torch bfloat16 (2 rows × 8 frames)" in table


# The report's stages for each objective, in order.
V_STAGES = ["t5", "dit σ=500", "dit σ=100", "dit σ=10", "dit σ=0.3", "decode"]
RF_STAGES = ["t5", "dit t=0.9", "dit t=0.5", "dit t=0.1", "decode"]
# bf16 keeps 8 bits of mantissa: no stage of it comes near this against fp32, and fp32 against
# itself is above the other bound (a comparison of the wrong tensors breaks one or the other).
BF16_SNR_BELOW_DB, FP32_SNR_ABOVE_DB = 80.0, 100.0


@pytest.mark.parametrize(
    "model,cfg_scale,stages", [("tiny-random", 7.0, V_STAGES), ("tiny-random-small", 1.0, RF_STAGES)]
)
def test_precision_report_has_each_stage_bf16_below_and_fp32_above_the_bounds(model, cfg_scale, stages):
    workload = Workload(frames=8, steps=2, batch=1, seed=SEED, cfg_scale=cfg_scale)
    load = functools.partial(StableAudio.from_pretrained, model, device="cpu")
    reference = stage_outputs(load(dtype=torch.float32), workload)
    bf16 = compare(stage_outputs(load(dtype=torch.bfloat16), workload), reference)
    fp32 = compare(stage_outputs(load(dtype=torch.float32), workload), reference)  # a second load
    assert [e.stage for e in bf16] == [e.stage for e in fp32] == stages
    for low, high in zip(bf16, fp32, strict=True):
        assert math.isfinite(low.snr_db) and low.snr_db < BF16_SNR_BELOW_DB, low
        assert 0 < low.max_relative_error < 1, low
        assert high.snr_db >= FP32_SNR_ABOVE_DB, high
        assert (low.denoised_snr_db is None) == (not low.stage.startswith("dit")), low
    rows = 2 if cfg_scale != 1.0 else 1
    assert all(reference[s].output.shape[0] == rows for s in stages if s.startswith("dit"))
    # Each level is a different input: the DiT's outputs differ.
    dit_outputs = [reference[s].output for s in stages if s.startswith("dit")]
    assert not torch.equal(dit_outputs[0], dit_outputs[-1])


def test_precision_report_dit_stage_is_the_dit_on_the_sampler_input_at_that_sigma():
    # Independently of the sampler's code: at σ the v-model sees (x0 + σ·ε)/√(σ² + 1) at time
    # atan(σ)·2/π, on the [prompt; negative prompt] rows, with the seeded draws (latents, then noise).
    sigma, frames = 10.0, 8
    workload = Workload(frames=frames, steps=2, batch=1, seed=SEED, cfg_scale=7.0)
    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", dtype=torch.float32)
    reported = stage_outputs(pipe, workload)[f"dit σ={sigma:g}"].output
    generator = torch.Generator().manual_seed(SEED)
    latents, noise = (torch.randn(1, TINY.dit.io_channels, frames, generator=generator) for _ in range(2))
    x = ((latents + sigma * noise) / math.sqrt(sigma**2 + 1)).repeat(2, 1, 1)
    conditioner = pipe.components.conditioner
    seconds = {"seconds_start": torch.zeros(1), "seconds_total": torch.tensor([frames * 2048 / 44100])}
    with torch.no_grad():
        context, global_cond = conditioner.encode(*conditioner.tokenize([PROMPT]), seconds)
        negative, _ = conditioner.encode(*conditioner.tokenize([NEGATIVE_PROMPT]), seconds)
        t = torch.full((2,), math.atan(sigma) * 2 / math.pi)
        v = pipe.components.model.dit(x, t, torch.cat((context, negative)), global_cond.repeat(2, 1))
    torch.testing.assert_close(reported, v, rtol=1e-4, atol=1e-5)


def test_presets_set_defaults_that_flags_override():
    def settings(*argv):
        args = cli.apply_preset(cli.build_parser().parse_args(list(argv)), None)
        return args.model, args.frames, args.steps, args.cfg_scale, args.batch

    assert settings() == (cli.DEFAULT_MODEL, None, None, None, [1])
    assert settings("--preset", "sao") == ("random-stable-audio-open-1.0", [64], [10], 7.0, [1])
    # Small: its whole window (frames left to the model), 8 steps, no CFG.
    assert settings("--preset", "small") == ("random-stable-audio-open-small", None, [8], 1.0, [1])
    overridden = ("--preset", "sao", "--model", "tiny-random", "--frames", "8", "--steps", "2", "--cfg-scale",
                  "3", "--batch", "2")  # fmt: skip
    assert settings(*overridden) == ("tiny-random", [8], [2], 3.0, [2])
    help_text = cli.build_parser().format_help()
    assert "--preset {sao,small}" in help_text
    assert "sao: --model random-stable-audio-open-1.0, 64 frames, 10 steps, CFG 7" in help_text
    assert "small: --model random-stable-audio-open-small" in help_text


def test_a_preset_runs_with_its_settings(tmp_path):
    argv = ["--preset", "sao", "--model", "tiny-random", "--frames", "8", "--repeats", "1", "--warmup", "0",
            "--json", str(tmp_path / "s.json")]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    (run,) = report["runs"]
    assert report["preset"] == "sao"
    assert (run["frames"], run["steps"], run["cfg_scale"], run["batch"]) == (8, 10, 7.0, 1)


@pytest.fixture
def bf16_folder(engines, tmp_path):
    """An engine folder whose T5 is bf16, as sa-export --bf16 writes it (onnxruntime feeds none)."""
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "bf16")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["components"]["t5"]["precision"] = "bf16"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_engines_onnxruntime_cannot_run_are_refused_or_left_out_before_any_run(
    bf16_folder, tiny_diffusers_dir, capsys, monkeypatch
):
    class Started(Exception):
        """The first run began: the rows were planned."""

    def start(*args, **kwargs):
        raise Started

    monkeypatch.setattr(cli, "run_workload", lambda *a, **k: pytest.fail("no run may start"))
    argv = ["--model", str(tiny_diffusers_dir), "--engines", str(bf16_folder), "--frames", "4"]
    assert cli.main([*argv, "--backend", "onnxruntime"]) == 2
    assert "--backend onnxruntime cannot run" in capsys.readouterr().err
    monkeypatch.setattr(cli, "run_workload", start)
    with pytest.raises(Started):
        cli.main([*argv, "--steps", "2", "--repeats", "1", "--warmup", "0"])  # backends: all, by --engines
    err = capsys.readouterr().err
    assert "sa-bench: no onnxruntime row: t5 is bf16, which onnxruntime cannot feed" in err
    assert "sa-bench: no tensorrt row: " in err  # was left out without a word: the folder has no plans


def test_the_estimate_offers_only_what_shortens_this_run():
    long = [Workload(1024, 100, 1, 0, 7.0)]
    assert cli._faster(long, 5) == ("--frames 64", "--steps 10", "--warmup 0 --repeats 1")
    assert cli._faster([Workload(64, 8, 1, 0, 1.0)], 1) == ()
