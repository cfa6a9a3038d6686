"""sa-run: bad input is refused with a clear message before any model loads, writing nothing;
good input writes the clip."""

import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from stable_audio_rt.errors import RequestError
from stable_audio_rt.models.config import TINY
from stable_audio_rt.runtime import cli
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request

RATE = 44100


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    t = np.arange(RATE) / RATE
    sf.write(folder / "tone.wav", 0.3 * np.sin(2 * np.pi * 330 * t), RATE)
    sf.write(folder / "empty.wav", np.zeros((0, 2)), RATE)
    sf.write(folder / "long.wav", np.zeros(4 * RATE), RATE)  # past the tiny model's 2.97 s window
    sf.write(folder / "loud.wav", np.full((RATE, 2), 1e30, np.float32), RATE, subtype="FLOAT")
    (folder / "text.wav").write_text("not audio")
    (folder / "clip_1.wav").mkdir()  # where the second clip of `-o clip.wav` would go
    os.mkfifo(folder / "fifo.wav")  # reading it would wait for a writer forever
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model must not be loaded for bad input")

    monkeypatch.setattr(StableAudio, "from_pretrained", refuse)
    monkeypatch.setattr(StableAudio, "from_plan", refuse)  # what sa-run loads with


BAD_ARGUMENTS = [
    (["--seconds", "0"], r"--seconds must be in \(0, 2\.97\]"),  # sa-run's own names
    (["--seconds", "99"], r"--seconds must be in \(0, 2\.97\] for this model, got 99"),
    (["--start", "2", "--seconds", "1"], r"--start \(2\.0\) must be less than --seconds"),
    (["--steps", "0"], r"--steps must be in \[1, 10000\], got 0"),
    (["--seed", "-1"], r"--seed must be in \[0, 2\*\*63\), got -1"),
    (["--cfg-scale", "-1"], r"--cfg-scale must be in \[0, 1000\]"),
    (["--cfg-scale", "1e30"], r"--cfg-scale must be in \[0, 1000\] .* got 1e\+30"),
    (
        ["--sigma-max", "0.3"],
        r"--sigma-max \(0\.3\) must be greater than the schedule's end, σmin \(0\.3\)",
    ),
    (
        ["--init-audio", "{in}/tone.wav", "--init-noise-level", "0.2"],
        r"--init-noise-level \(0\.2\) must be greater",
    ),
    (
        ["--inpaint-audio", "{in}/tone.wav", "--keep-range", "0.5,5"],
        r"--keep-range: 0\.5,5\.0 is outside .*tone\.wav \(0–1\.00 s\)",
    ),
    (
        ["--inpaint-audio", "{in}/long.wav", "--inpaint-range", "3,3.5"],
        r"--inpaint-range: 3\.0,3\.5 is outside the model's window \(0–2\.97 s\)",
    ),
    (["--inpaint-audio", "{in}/tone.wav"], r"needs either --keep-range \(what of --inpaint-audio to keep\)"),
    (
        ["--inpaint-audio", "{in}/long.wav", "--keep-range", "1.5,2", "--window", "trim", "--seconds", "1"],
        r"--keep-range/--inpaint-range marks parts of --inpaint-audio past the window",
    ),
    (
        ["--init-noise-level", "5"],
        r"--init-noise-level is the starting noise of audio-to-audio: give --init-aud",
    ),
    (["--keep-range", "0,1"], r"--keep-range/--inpaint-range need --inpaint-audio"),
    (["--init-audio", "{in}/text.wav"], r"cannot read .*text\.wav as audio"),
    (["--init-audio", "{in}/loud.wav"], r"--init-audio .*loud\.wav's peak is 1e\+30"),
    (["--init-audio", "{in}/empty.wav"], r"audio file .*empty\.wav is empty"),
    (["--init-audio", "{in}/missing.wav"], r"audio file .*missing\.wav does not exist"),
    (["--init-audio", "{in}"], r"/in is a folder: give an audio file"),
    (["--init-audio", "{in}/fifo.wav"], r"fifo\.wav is not a regular file \(a device, FIFO or socket\)"),
    (["--inpaint-audio", "/dev/null"], r"/dev/null is not a regular file \(a device, FIFO or socket\)"),
    (["--frames", "65"], r"a window of 65 latent frames is longer than the model's \(64, 2\.97 s\)"),
    (["--frames", "0"], r"--frames must be at least 1"),
    (
        ["--frames", "10", "--window", "trim"],
        r"give one window, not several: got --window='trim' and --frames=10",
    ),
    (["--init-audio", "{in}/init_audio.wav"], r"audio file .*/init_audio\.wav does not exist"),  # a path kept
    (["-o", "{out}/missing/clip.wav"], r"folder .*missing does not exist"),
    (["-o", "{in}/fifo.wav"], r"cannot write .*fifo\.wav: .*fifo\.wav is not a regular file"),
    (["-o", "{in}/tone.wav/clip.wav"], r"tone\.wav/clip\.wav: .*/in/tone\.wav is a file, not a folder"),
    (["-o", "{in}/tone.wav/sub/clip.wav"], r"sub/clip\.wav: .*/in/tone\.wav is a file, not a folder"),
    (["-o", "{out}/clip.mp3"], r"unsupported extension '\.mp3' \(use \.wav, \.flac\)"),
    (["--num-outputs", "2", "-o", "{in}/clip.wav"], r"cannot write .*clip_1\.wav: it is a folder"),
    (["-o", "/proc/clip.wav"], r"cannot write in /proc \(.*\): give a folder you can write to"),
    (["-o", "{out}"], r"cannot write .*/out: it is a folder; name a file in it, such as .*/out/clip\.wav"),
    (["--num-outputs", "2", "-o", "{out}"], r"cannot write .*/out: it is a folder; name a file in it"),
    (["--no-clip"], r"cannot write .*clip\.wav unclipped \(clip=False, sa-run --no-clip\): only a float WAV"),
    (["--format", "float", "--no-clip", "-o", "{out}/clip.flac"], r"clip\.flac unclipped"),
    (["--model", "tiny-random-small", "--noise", "brownian"], r"use --noise='gaussian'"),
    (
        ["--apg-scale", "0"],
        r"--apg-scale applies to --guidance='apg'; with --guidance='cfg' it would do nothing",
    ),
    (["--device", "tpu"], r"unknown device 'tpu'|device tpu is not supported"),
    (["--backend", "tensorrt"], r"--backend tensorrt runs an engine folder: give --engines DIR"),
    (["--backend", "onnxruntime"], r"--backend onnxruntime runs an engine folder: give --engines DIR"),
    (
        ["--backend", "torch", "--engines", "{in}"],
        r"--engines is for --backend onnxruntime, tensorrt or auto",
    ),
]


@pytest.mark.parametrize("arguments,message", BAD_ARGUMENTS, ids=[m for _, m in BAD_ARGUMENTS])
def test_bad_input_is_refused_before_loading(arguments, message, inputs, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["a prompt", "--model", "tiny-random", "-o", str(out / "clip.wav")]
    argv += [a.format(**{"in": inputs, "out": out}) for a in arguments]
    assert cli.main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert list(out.rglob("*")) == [], "nothing may be written"


def test_clips_that_would_land_in_one_file_are_refused_before_loading(tmp_path, capsys, no_model_load):
    (tmp_path / "c_0.wav").symlink_to("c_1.wav")  # c_0.wav and c_1.wav: one file, two names
    argv = ["x", "--model", "tiny-random", "--num-outputs", "2", "-o", str(tmp_path / "c.wav")]
    assert cli.main(argv) == 2
    assert re.search(
        rf"cannot write both .*c_0\.wav and .*c_1\.wav: both lead to {re.escape(str(tmp_path / 'c_1.wav'))}",
        capsys.readouterr().err,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["c_0.wav"] and (tmp_path / "c_0.wav").is_symlink()


def test_an_audio_file_this_user_may_not_read_says_so(inputs, tmp_path, capsys, monkeypatch, no_model_load):
    unreadable = inputs / "tone.wav"
    unreadable.chmod(0)
    if os.geteuid() == 0:  # root reads it regardless: the kernel's refusal is made here
        os_open = os.open

        def denied(path, *args, **kwargs):
            if os.fspath(path) == os.fspath(unreadable):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return os_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    argv = ["x", "--model", "tiny-random", "--init-audio", str(unreadable), "-o", str(tmp_path / "a.wav")]
    assert cli.main(argv) == 2
    assert re.search(
        r"cannot read .*tone\.wav \(Permission denied\): give an audio file you can read",
        capsys.readouterr().err,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_requested_without_cuda(tmp_path, capsys, no_model_load):
    assert cli.main(["x", "--model", "tiny-random", "--device", "cuda", "-o", str(tmp_path / "a.wav")]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err


def test_unknown_model_id(tmp_path, monkeypatch, capsys, no_model_load):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert cli.main(["x", "--model", "someone/no-such-model", "-o", str(tmp_path / "a.wav")]) == 2
    assert "someone/no-such-model is not in the local cache" in capsys.readouterr().err
    assert not (tmp_path / "a.wav").exists()


@pytest.mark.parametrize(
    "mask,message",
    [
        (np.ones(100), r"inpaint_mask must be 1-D with 44100 values, one per sample .* got shape \(100,\)"),
        (np.full(RATE, 0.5), r"inpaint_mask values must be 0 \(regenerate\) or 1 \(keep\)"),
        (np.ones((2, RATE)), r"inpaint_mask must be 1-D"),
    ],
)
def test_bad_inpaint_masks(mask, message):
    audio = np.zeros((2, RATE), np.float32)
    request = GenerationRequest(("x",), inpaint_audio=(audio, RATE), inpaint_mask=mask)
    with pytest.raises(RequestError, match=message):
        resolve_request(request, TINY)


def test_runs_end_to_end_and_prints_the_seed(tmp_path, capsys):
    out = tmp_path / "noise.flac"
    argv = [
        "rain",
        "--model",
        "tiny-random",
        "--seconds",
        "1",
        "--steps",
        "3",
        "--num-outputs",
        "2",
        "-o",
        str(out),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert re.match(r"seed \d+: 2 clip\(s\) of 1\.00 s", printed.out)
    assert "random weights" in printed.err
    for k in range(2):
        info = sf.info(str(tmp_path / f"noise_{k}.flac"))
        assert (info.samplerate, info.channels, info.frames) == (RATE, 2, RATE)


def test_a_full_disk_is_one_line_and_exit_2(tmp_path, capsys, full_disk):
    full_disk("clip.wav")
    argv = [
        "rain",
        "--model",
        "tiny-random",
        "--seconds",
        "0.5",
        "--steps",
        "2",
        "-o",
        str(tmp_path / "clip.wav"),
    ]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(
        r"sa-run: error: cannot write .*clip\.wav \(No space left on device\): free space.*", error
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seconds", [0.0, -1.0, 47.56])
def test_seconds_bound_of_the_real_model(seconds):
    from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0

    with pytest.raises(RequestError, match=r"seconds_total must be in \(0, 47\.55\]"):
        resolve_request(GenerationRequest(("x",), seconds_total=seconds), STABLE_AUDIO_OPEN_1_0)
    assert (
        resolve_request(GenerationRequest(("x",), seconds_total=47.55), STABLE_AUDIO_OPEN_1_0).frames == 1024
    )


def test_small_smoke_model_runs_with_its_defaults(tmp_path, capsys):
    out = tmp_path / "small.wav"
    assert cli.main(["loop", "--model", "tiny-random-small", "--seconds", "0.5", "-o", str(out)]) == 0
    assert "8/8" in capsys.readouterr().err  # Small's default: 8 pingpong steps
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (RATE, 2, RATE // 2)


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--start", "0.2"], "not conditioned on a start time: leave --start at 0"),
        (["--noise", "brownian"], "fresh Gaussian noise each step"),
        (["--seconds", "3.5"], r"--seconds must be in \(0, 2\.97\]"),
    ],
)
def test_small_refusals_come_before_the_model_loads(arguments, message, tmp_path, capsys, no_model_load):
    out = tmp_path / "x.wav"
    assert cli.main(["x", "--model", "tiny-random-small", *arguments, "-o", str(out)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("flag,expected", [([], True), (["--no-cuda-graph"], False)])
def test_cuda_graph_flag_reaches_the_pipeline(flag, expected, tmp_path, monkeypatch):
    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before generating

    monkeypatch.setattr(StableAudio, "from_plan", record)
    assert cli.main(["x", "--model", "tiny-random", "-o", str(tmp_path / "x.wav"), *flag]) == 130
    assert seen["cuda_graph"] is expected


@pytest.mark.parametrize(
    "flag,device,applied",
    [([], "cpu", True), (["--no-reuse-memory"], "cpu", False), ([], "cuda", False)],
)
def test_malloc_reuses_freed_memory_on_the_cpu_unless_told_not_to(
    flag, device, applied, tmp_path, monkeypatch, mallopt_calls
):
    from stable_audio_rt.runtime import cpu_memory

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # before generating

    monkeypatch.setattr(StableAudio, "from_plan", stop)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only planned, never used
    argv = ["x", "--model", "tiny-random", "--device", device, "-o", str(tmp_path / "x.wav"), *flag]
    assert cli.main(argv) == 130
    expected = [
        (cpu_memory.M_ARENA_MAX, 1),
        (cpu_memory.M_MMAP_MAX, 0),
        (cpu_memory.M_TRIM_THRESHOLD, cpu_memory.NEVER_TRIM),
    ]
    assert mallopt_calls == (expected if applied else [])


def test_warnings_print_as_one_line_naming_the_tool(tmp_path, capsys):
    argv = ["x", "--model", "tiny-random", "--seconds", "2.5", "--steps", "1", "--window", "trim"]
    argv += ["--cfg-scale", "1", "--negative-prompt", "hiss", "--guidance", "apg", "--vae-chunk", "21"]
    assert cli.main([*argv, "-o", str(tmp_path / "a.wav")]) == 0
    err = capsys.readouterr().err
    # In sa-run's words: its options, not the Python API's fields.
    assert (
        "sa-run: warning: the negative prompt and --guidance='apg' have no effect at a CFG scale of 1" in err
    )
    assert "sa-run: warning: --vae-chunk=21 with overlaps of 10 frames decodes" in err
    assert "UserWarning" not in err and "requests.py" not in err


def test_prompts_may_follow_options_and_a_reader_leaving_early_is_no_error(tmp_path):
    """`sa-run "rain" -o out.wav "thunder" ... | head -1`: both prompts make the batch, and the
    closed pipe after the clips are written is neither a traceback nor a failure."""
    import subprocess
    import sys

    argv = ["rain", "-o", str(tmp_path / "out.wav"), "thunder", "--model", "tiny-random", "--steps", "1",
            "--seconds", "0.2", "--window", "trim"]  # fmt: skip
    run = subprocess.Popen(
        [sys.executable, "-m", "stable_audio_rt.runtime.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    run.stdout.close()  # the reader is gone before the first line
    _, err = run.communicate(timeout=300)
    err = err.decode()
    assert run.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_0.wav", "out_1.wav"]


def test_a_stderr_reader_gone_before_the_first_line_loses_no_clip(tmp_path):
    """`sa-run ... 2>&1 | head -2`, a closed `tee`: the notes and the progress bar on stderr are for
    a person; with its reader gone the clip is still made and written, and stdout names it."""
    import subprocess
    import sys

    out = tmp_path / "out.wav"
    argv = ["rain", "-o", str(out), "--model", "tiny-random", "--steps", "2", "--seconds", "0.2",
            "--window", "trim"]  # fmt: skip
    run = subprocess.Popen(
        [sys.executable, "-m", "stable_audio_rt.runtime.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    run.stderr.close()  # before the first note
    stdout, _ = run.communicate(timeout=300)
    assert run.returncode == 0
    assert stdout.decode().splitlines()[-1] == str(out) and out.stat().st_size > 0


def test_stderr_closed_at_the_start_loses_no_clip(tmp_path):
    """`sa-run ... 2>&-`: Python starts with sys.stderr None; the notes go nowhere, the clip is
    written and stdout names it (exited 1 with nothing written: the stderr wrapper wrote to None)."""
    import subprocess
    import sys

    out = tmp_path / "out.wav"
    argv = ["rain", "-o", str(out), "--model", "tiny-random", "--steps", "2", "--seconds", "0.2",
            "--window", "trim"]  # fmt: skip
    command = [sys.executable, "-m", "stable_audio_rt.runtime.cli", *argv]
    run = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", *command], stdout=subprocess.PIPE, timeout=300)
    assert run.returncode == 0
    assert run.stdout.decode().splitlines()[-1] == str(out) and out.stat().st_size > 0


@pytest.mark.parametrize(
    "argv,prompts",
    [
        (["rain", "-o", "a.wav", "thunder"], ["rain", "thunder"]),
        (["--steps", "2", "rain", "--keep-range", "0,1", "--keep-range", "2,3", "hail"], ["rain", "hail"]),
        (["--", "-a prompt that starts with a dash"], ["-a prompt that starts with a dash"]),
        (["rain", "--steps", "2", "--", "--steps"], ["rain", "--steps"]),
    ],
)
def test_prompts_come_before_after_and_among_the_options(argv, prompts):
    args = cli.parse_arguments(argv)
    assert args.prompt == prompts
    assert args.steps == (2 if "--steps" in argv[: argv.index("--") if "--" in argv else None] else None)


def test_no_prompt_is_argparses_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_arguments(["-o", "a.wav", "--"])
    assert (
        stopped.value.code == 2 and "the following arguments are required: prompt" in capsys.readouterr().err
    )
