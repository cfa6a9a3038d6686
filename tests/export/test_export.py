"""sa-export on the tiny model: every component's graph against the PyTorch model on fresh
random inputs with onnxruntime, the manifest, reuse, and the CLI."""

import errno
import json
import os
import re
import shutil
import signal
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stable_audio_rt.atomic import OLD_INFIX
from stable_audio_rt.export import cli
from stable_audio_rt.export.engine_folder import ExportError, ExportSettings, export_engines, tool_versions
from stable_audio_rt.manifest import NUMBERS_FILE, FileRecord, Manifest, PlanRecord, file_record
from stable_audio_rt.models.checkpoint import sha256_file
from stable_audio_rt.models.io_spec import (
    COMPONENTS,
    axis_sizes,
    component_module,
    component_specs,
    sample_inputs,
)
from stable_audio_rt.models.loading import load_stable_audio

# max |ort − torch fp32| / max |torch fp32|: fp32 graphs differ by summation order only
# (measured ~1e-6); fp16 graphs keep ~3 significant digits through the stacks (measured
# 1e-3–5e-3 on these random weights).
TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2}


@pytest.fixture(scope="module")
def model(tiny_diffusers_dir):
    return load_stable_audio(tiny_diffusers_dir)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("batch,frames", [(1, 1), (2, 13), (1, 64)])
def test_graph_matches_torch(engines, model, generator, precision, component, batch, frames):
    folder, manifest = engines[precision]
    entry = manifest.components[component]
    spec = component_specs(model.config)[component]
    rows = batch * spec.rows_per_clip
    dtype = torch.float16 if entry.precision == "fp16" else torch.float32
    vocab = model.conditioner.text_encoder.t5.config.vocab_size
    inputs = sample_inputs(spec, axis_sizes(model.config, rows, frames), dtype, generator, vocab)
    session = ort.InferenceSession(str(folder / entry.file), providers=["CPUExecutionProvider"])
    got = session.run(None, {t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)})
    with torch.no_grad():
        expected = component_module(model, component)(
            *(x.float() if x.is_floating_point() else x for x in inputs)
        )
    expected = expected if isinstance(expected, tuple) else (expected,)
    for out, ref in zip(got, expected, strict=True):
        assert out.shape == tuple(ref.shape)
        error = np.abs(out.astype(np.float64) - ref.double().numpy()).max() / ref.abs().max().item()
        assert error <= TOLERANCE[precision], (component, error)


def test_manifest_records_everything(engines, model):
    folder, manifest = engines["fp16"]
    data = json.loads((folder / "manifest.json").read_text())
    assert data["format"] == 1 and data["opset"] == 18
    assert set(data["tools"]) == {"torch", "onnx", "onnxscript", "onnxruntime", "stable-audio-rt"}
    assert Manifest.read(folder).model_config == model.config
    assert set(manifest.components) == set(COMPONENTS)
    for name, entry in manifest.components.items():
        assert entry.verification.status == "passed" and entry.verification.max_rel <= 3e-2, name
        assert entry.requested_precision == "fp16"
        assert entry.batch == ((1, 4, 4) if name in ("dit", "t5") else (1, 1, 1))  # the VAE: one clip
        assert entry.frames == (1, 16, 64)
        assert entry.inputs == component_specs(model.config)[name].inputs
        assert entry.outputs == component_specs(model.config)[name].outputs
        for file, record in entry.files.items():
            assert record == FileRecord(sha256_file(folder / file), (folder / file).stat().st_size)
    assert "dit.onnx.data" in manifest.components["dit"].files  # weights in one external file


def test_the_folder_reads_as_plainly_written_files_do(engines):
    """Readable by whoever could read a file written plainly there (a server running as another
    user), not private as temp folders and safetensors' files are made."""
    folder, _ = engines["fp32"]
    umask = os.umask(0o022)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_a_folder_exported_again_keeps_its_permissions(engines, tiny_diffusers_dir, tmp_path):
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    folder.chmod(0o750)
    export_engines(tiny_diffusers_dir, folder, ExportSettings("fp32", max_batch=2, frames=(1, 16, 64)))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750 and Manifest.read(folder).components


def test_reexport_reuses_unchanged_components(engines, tiny_diffusers_dir, tmp_path):
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    manifest = engines["fp32"][1]
    inode = os.stat(folder / "dit.onnx.data").st_ino
    exported, reused = [], []
    again = export_engines(
        tiny_diffusers_dir,
        folder,
        ExportSettings("fp32", max_batch=2, frames=(1, 16, 64)),
        on_component=exported.append,
        on_reused=reused.append,
    )
    assert exported == reused == list(COMPONENTS)  # each one said, and said to be reused
    assert os.stat(folder / "dit.onnx.data").st_ino == inode, (
        "the unchanged graph must be reused, not rebuilt"
    )
    assert again.components["dit"].files == manifest.components["dit"].files


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--components", "dit,unet"], r"unknown component\(s\) \['unet'\]"),
        (["--frames", "64:16:1"], r"frames 64:16:1 must satisfy 1 ≤ min ≤ opt ≤ max"),
        (["--max-batch", "0"], r"max batch must be at least 1"),
        (["--fp16", "--components", ""], r"unknown component\(s\) \(none given\)"),
        (["--components", "dit,t5,dit"], r"component\(s\) dit given more than once in --components"),
        (["--opset", "5"], r"opset 5 is outside what this exporter writes: give --opset from 18 to 25"),
        (["--opset", "26"], r"opset 26 is outside what this exporter writes: give --opset from 18 to 25"),
        (["--bf16", "--opset", "18"], r"bf16 graphs need opset 22 or later .*: give --opset 22"),
        (["--frames", "1:64:100"], r"frames 1:64:100 reach past the model's window of 64 latent frames"),
        (["--model", ""], r"the model name is empty: give a Hub repo id"),  # not the current folder
    ],
)
def test_cli_refuses_bad_arguments(tiny_diffusers_dir, tmp_path, capsys, arguments, message):
    out = tmp_path / "engines"
    assert cli.main(["--model", str(tiny_diffusers_dir), "--out", str(out), *arguments]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_folders_above_out_are_made_and_removed_again_if_the_export_fails(
    tiny_diffusers_dir, tmp_path, monkeypatch
):
    settings = ExportSettings("fp32", components=("t5",), max_batch=2, frames=(1, 16, 64))
    from stable_audio_rt.export import engine_folder

    def fails(*args, **kwargs):
        raise RuntimeError("an export that fails")

    with monkeypatch.context() as patched:
        patched.setattr(engine_folder, "_build_entry", fails)
        with pytest.raises(RuntimeError, match="an export that fails"):
            export_engines(tiny_diffusers_dir, tmp_path / "a" / "b" / "engines", settings)
    assert list(tmp_path.iterdir()) == []  # nothing made is left
    export_engines(tiny_diffusers_dir, tmp_path / "a" / "b" / "engines", settings)  # as `mkdir -p`
    assert list(Manifest.read(tmp_path / "a" / "b" / "engines").components) == ["t5"]


def test_a_folder_nothing_can_be_written_in_is_refused_before_loading(
    tiny_diffusers_dir, capsys, monkeypatch
):
    monkeypatch.setattr(
        "stable_audio_rt.export.engine_folder.load_model", lambda *a, **k: pytest.fail("loaded")
    )
    assert cli.main(["--model", str(tiny_diffusers_dir), "--out", "/proc/engines"]) == 2
    assert "cannot write in /proc (" in capsys.readouterr().err


def test_a_mount_point_as_out_is_refused_before_loading(tiny_diffusers_dir, tmp_path, capsys, monkeypatch):
    """A volume mounted at --out (`docker run -v engines:/engines`) cannot be renamed: the swap
    at the end failed with EBUSY's traceback after the whole export."""
    volume = tmp_path / "engines"
    volume.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == volume)
    monkeypatch.setattr(
        "stable_audio_rt.export.engine_folder.load_model", lambda *a, **k: pytest.fail("loaded")
    )
    assert cli.main(["--model", str(tiny_diffusers_dir), "--out", str(volume)]) == 2
    err = capsys.readouterr().err
    assert f"--out {volume} is a mount point" in err and f"--out {volume / 'engines'}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"] and not any(volume.iterdir())


def _short_write(*args, **kwargs):
    """What the ONNX exporter raises when a full disk cuts its external data's write short
    (onnx_ir's tofile: numpy's words, no errno; it removes the partial file)."""
    raise OSError("problem writing element 17408 to file")


@pytest.mark.parametrize(
    "cause",
    [
        r"problem writing element 17408 to file: the write was cut short, as on a full disk",
        r"No space left on device",
    ],
    ids=["graph", "number-conditioners"],
)
def test_a_full_disk_mid_export_is_one_line_naming_the_folder_and_the_fix(
    tiny_diffusers_dir, tmp_path, capsys, monkeypatch, cause
):
    """The exporter's short write was "exporting dit at fp32 failed: problem writing element
    17408 to file", and the number conditioners' ENOSPC a traceback."""
    out = tmp_path / "engines"
    if "element" in cause:
        monkeypatch.setattr(torch.onnx, "export", _short_write)
    else:
        # ENOSPC raised where the file is written, not a link to /dev/full: a write that replaced
        # its link's target (as the atomic writes do) would replace /dev/full itself, as root.
        real_write_bytes = Path.write_bytes

        def write_bytes(self: Path, data: bytes) -> int:
            if self.name == NUMBERS_FILE:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real_write_bytes(self, data)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)
    argv = _t5_alone(tiny_diffusers_dir, out)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    refusal = rf"sa-export: error: cannot write {re.escape(str(out))} \({cause}\): free space on that disk"
    assert re.search(refusal, err) and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written left


def _free_space(monkeypatch, free: int) -> None:
    """Every filesystem reports `free` bytes free to `shutil.disk_usage`, which sa-export asks."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))


def test_a_disk_too_full_for_the_graphs_is_refused_before_loading(
    tiny_diffusers_dir, tmp_path, capsys, monkeypatch
):
    """A disk too full for the graphs was found only when a write failed, after the model's load
    and trace (minutes, at real size)."""
    _free_space(monkeypatch, 2**20)
    monkeypatch.setattr(
        "stable_audio_rt.export.engine_folder.load_model", lambda *a, **k: pytest.fail("loaded")
    )
    out = tmp_path / "a" / "engines"
    assert cli.main(["--model", str(tiny_diffusers_dir), "--out", str(out), "--fp16"]) == 2
    err = capsys.readouterr().err
    refusal = (
        rf"sa-export: error: cannot export into {re.escape(str(out))}: its filesystem \(mounted at /\S*\) "
        r"has 1\.0 MiB \(1048576 bytes\) free, and the graphs need at least \d+\.\d MiB \((\d+) bytes\): "
        r"free space on that disk, or give another --out\n"
    )
    found = re.search(refusal, err)
    assert found and int(found[1]) > 2**20 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the folders above --out


def test_a_reexport_needs_room_only_for_the_graphs_it_does_not_reuse(
    engines, tiny_diffusers_dir, tmp_path, monkeypatch
):
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    _free_space(monkeypatch, 0)
    reused: list[str] = []
    settings = ExportSettings("fp32", max_batch=2, frames=(1, 16, 64))
    export_engines(tiny_diffusers_dir, folder, settings, on_reused=reused.append)  # hard links: no room
    assert reused == list(COMPONENTS)
    monkeypatch.setattr(
        "stable_audio_rt.export.engine_folder.load_model", lambda *a, **k: pytest.fail("loaded")
    )
    with pytest.raises(ExportError, match=r"free, and the graphs need at least"):  # every graph anew
        export_engines(tiny_diffusers_dir, folder, replace(settings, precision="fp16"))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_the_room_asked_for_is_no_more_than_the_graphs_take(engines):
    """The check refuses only a disk sure to fill: its floor is at most what each graph's files
    take, at either precision."""
    from stable_audio_rt.export.disk_space import graph_bytes_floor

    for precision in ("fp32", "fp16"):
        folder, manifest = engines[precision]
        for name, entry in manifest.components.items():
            written = sum(record.bytes for record in entry.files.values())
            floor = graph_bytes_floor(manifest.model_config, [name], precision)
            assert 0 < floor <= written or (name == "t5" and floor == 0), (precision, name, floor, written)


def test_a_signal_while_the_old_folder_is_removed_leaves_nothing_beside_the_new_one(
    tiny_diffusers_dir, tmp_path, monkeypatch
):
    """Ctrl-C or SIGTERM after the swap, while the replaced folder was being removed, left it
    half-removed as `.engines.old-*` beside the new folder, and nothing removed it after."""
    out = tmp_path / "engines"
    settings = ExportSettings("fp32", components=("t5",), max_batch=2, frames=(1, 16, 64))
    export_engines(tiny_diffusers_dir, out, settings)
    real_rmtree = shutil.rmtree
    cut: list[Path] = []

    def cut_short(path, *args, **kwargs):  # the signal lands once the removal has begun
        if OLD_INFIX in Path(path).name and not cut:
            cut.append(Path(path))
            next(p for p in Path(path).iterdir() if p.is_file()).unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt):  # passed on once the old folder is gone
        export_engines(tiny_diffusers_dir, out, replace(settings, max_batch=3))  # T5 exported anew
    assert cut and sorted(p.name for p in tmp_path.iterdir()) == ["engines"]
    manifest = Manifest.read(out)
    assert manifest.components["t5"].batch == (1, 6, 6)  # the new folder, whole
    manifest.check_files(out, "t5")
    manifest.check_shared_files(out)


def test_a_signal_after_the_swap_says_the_new_folder_is_in_place(
    tiny_diffusers_dir, tmp_path, monkeypatch, capsys
):
    """Stopped while the replaced folder was removed, sa-export said "the engine folder was left
    as it was", with the new one already in its place."""
    from stable_audio_rt.export import cli

    out = tmp_path / "engines"
    assert cli.main(_t5_alone(tiny_diffusers_dir, out)) == 0
    real_rmtree = shutil.rmtree

    stops: list[Path] = []

    def stopped(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        if OLD_INFIX in Path(path).name and not stops:
            stops.append(Path(path))
            raise KeyboardInterrupt  # a signal as the old folder's removal ends

    monkeypatch.setattr(shutil, "rmtree", stopped)
    capsys.readouterr()
    assert cli.main([*_t5_alone(tiny_diffusers_dir, out), "--max-batch", "3"]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"sa-export: interrupted; {out} holds the new export"
    assert stops and Manifest.read(out).components["t5"].batch == (1, 6, 6)
    assert [p.name for p in tmp_path.iterdir()] == ["engines"]


def _t5_alone(model: Path, out: Path) -> list[str]:
    """sa-export's arguments for the quickest export: T5 alone."""
    return ["--model", str(model), "--out", str(out), "--components", "t5", "--frames", "1:16:64"]


def test_a_stdout_reader_gone_after_the_export_is_no_failure(tiny_diffusers_dir, tmp_path, monkeypatch):
    """`sa-export ... | head -1` (or `2>&1 | head`): the folder was written, then the summary's
    print met the closed pipe, a traceback and exit 1."""
    import sys

    reading, writing = os.pipe()
    stream = os.fdopen(writing, "w")
    os.close(reading)  # the reader is gone
    monkeypatch.setattr(sys, "stdout", stream)
    out = tmp_path / "engines"
    argv = _t5_alone(tiny_diffusers_dir, out)
    try:
        assert cli.main(argv) == 0
        assert list(Manifest.read(out).components) == ["t5"]
    finally:
        stream.close()


def test_bf16_graphs_are_written_at_the_opset_whose_conv_takes_bfloat16(tiny_diffusers_dir, tmp_path):
    """At opset 18 the DiT's and the VAE's Conv on bfloat16 were invalid ONNX."""
    settings = ExportSettings("bf16", components=("dit", "vae_decoder"), frames=(1, 8, 16))
    manifest = export_engines(tiny_diffusers_dir, tmp_path / "engines", settings)
    assert manifest.opset == 22
    for name in settings.components:
        graph = onnx.load(tmp_path / "engines" / f"{name}.onnx", load_external_data=False)
        assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {22}
        assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in graph.graph.initializer), name


def test_leaving_out_a_component_every_request_runs_is_warned_of():
    lacks = r"the folder will lack t5, vae_decoder, which every request runs: .*"
    with pytest.warns(UserWarning, match=lacks + r" \(give --components t5,dit,vae_decoder\)"):
        ExportSettings(components=("dit",)).check(64)


def test_a_folder_holding_other_files_is_refused_and_kept(tiny_diffusers_dir, tmp_path, capsys):
    """An export replaces its folder whole, so `--out` at a folder of the user's is refused before
    anything is loaded or written, and the folder stays as it was."""
    music = tmp_path / "music"
    music.mkdir()
    (music / "song.wav").write_bytes(b"RIFF")
    (music / "t5.onnx").write_bytes(b"an export's name is fine beside it")
    assert cli.main(["--model", str(tiny_diffusers_dir), "--out", str(music)]) == 2
    err = capsys.readouterr().err
    assert "music holds what sa-export did not write (song.wav)" in err and "component/s" not in err  # no bar
    assert "loading" not in err  # refused before the model loads
    assert sorted(p.name for p in music.iterdir()) == ["song.wav", "t5.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["music"]  # no temp folder beside it
    a_file = tmp_path / "engines"
    a_file.write_text("not a folder")
    assert cli.main(["--model", str(tiny_diffusers_dir), "--out", str(a_file)]) == 2
    assert "engines is a file" in capsys.readouterr().err and a_file.read_text() == "not a folder"


def test_a_folder_whose_files_only_bear_an_exports_names_is_refused_and_kept(tiny_diffusers_dir, tmp_path):
    app = tmp_path / "app"
    (app / "tokenizer").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "my web app"}')
    (app / "tokenizer" / "notes.txt").write_text("my notes")
    settings = ExportSettings("fp32", components=("dit",), max_batch=2, frames=(1, 16, 64))
    with pytest.raises(ExportError, match=r"app holds files but is not an engine folder sa-export wrote"):
        export_engines(tiny_diffusers_dir, app, settings)
    assert (app / "tokenizer" / "notes.txt").read_text() == "my notes"
    assert json.loads((app / "manifest.json").read_text()) == {"name": "my web app"}


def test_an_export_through_a_symbolic_link_replaces_its_target(engines, tiny_diffusers_dir, tmp_path):
    target = shutil.copytree(engines["fp32"][0], tmp_path / "disk" / "engines")
    link = tmp_path / "engines"
    link.symlink_to(target)
    before = Manifest.read(target)
    settings = ExportSettings("fp32", components=("t5", "dit", "vae_decoder", "vae_encoder"), max_batch=3,
                              frames=(1, 16, 64))  # fmt: skip
    export_engines(tiny_diffusers_dir, link, settings)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert Manifest.read(target).components["dit"].batch != before.components["dit"].batch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "engines"]  # nothing left beside
    assert sorted(p.name for p in target.parent.iterdir()) == ["engines"]


@pytest.mark.parametrize("out,inside", [(".", ""), ("..", "tokenizer")])
def test_the_folder_a_command_runs_in_is_refused_as_out(
    tiny_diffusers_dir, tmp_path, monkeypatch, out, inside
):
    """An export replaces its folder whole: the shell it ran in would be left in the deleted one."""
    here = tmp_path / "here"
    (here / "tokenizer").mkdir(parents=True)
    monkeypatch.chdir(here / inside)
    settings = ExportSettings("fp32", components=("t5",), max_batch=2, frames=(1, 16, 64))
    with pytest.raises(ExportError, match=r"is the folder this command runs in, or holds it"):
        export_engines(tiny_diffusers_dir, Path(out), settings)
    assert sorted(p.name for p in here.iterdir()) == ["tokenizer"]


def test_sigterm_during_an_export_leaves_the_folder_as_it_was_and_nothing_beside(
    engines, tiny_diffusers_dir, tmp_path, capsys, monkeypatch
):
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    from stable_audio_rt.export import engine_folder

    def terminated(*args, **kwargs):  # as `kill`, `docker stop` or `timeout` would, mid-export
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(engine_folder, "_build_entry", terminated)
    argv = [
        "--model",
        str(tiny_diffusers_dir),
        "--out",
        str(folder),
        "--max-batch",
        "3",
        "--frames",
        "1:16:64",
    ]

    def guard(*_):  # were the signal not taken by sa-export, it would end pytest itself
        raise AssertionError("SIGTERM reached the test: sa-export did not take it")

    previous = signal.signal(signal.SIGTERM, guard)
    try:
        assert cli.main(argv) == 143
        assert signal.getsignal(signal.SIGTERM) is guard  # given back after the command
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "sa-export: terminated; the engine folder was left as it was" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]  # no half-written folder beside


def _interrupted_inside_the_exporter(*args, **kwargs):
    """A stop signal landing mid-trace, as torch's exporter then reports it: restoring its dispatch
    mode fails on the way out, and it raises its own error from that."""
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # sa-export's handler raises here
    except KeyboardInterrupt:
        try:
            raise RuntimeError("Attempted to unset ProxyTorchDispatchMode, but there wasn't one active.")
        except RuntimeError as e:
            raise RuntimeError("Failed to decompose the FX graph for ONNX compatibility.") from e


def test_a_signal_inside_the_onnx_exporter_stops_the_export_as_a_signal(
    engines, tiny_diffusers_dir, tmp_path, capsys, monkeypatch
):
    """It was 'error: exporting t5 at fp16 failed: Failed to decompose the FX graph ... Create an
    issue in the PyTorch GitHub repository', exit 2."""
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    monkeypatch.setattr(torch.onnx, "export", _interrupted_inside_the_exporter)

    def guard(*_):  # were the signal not taken by sa-export, it would end pytest itself
        raise AssertionError("SIGHUP reached the test: sa-export did not take it")

    previous = signal.signal(signal.SIGHUP, guard)
    try:
        assert cli.main(["--model", str(tiny_diffusers_dir), "--out", str(folder), "--fp16"]) == 129
    finally:
        signal.signal(signal.SIGHUP, previous)
    err = capsys.readouterr().err
    assert "sa-export: terminated; the engine folder was left as it was" in err and "PyTorch" not in err
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]


def test_an_export_that_would_drop_components_is_refused_unless_forced(engines, tiny_diffusers_dir, tmp_path):
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    before = sorted(p.name for p in folder.iterdir())
    encoder_only = ExportSettings("fp32", components=("vae_encoder",), max_batch=2, frames=(1, 16, 64))
    with pytest.raises(ExportError, match=r"has t5, dit, vae_decoder, which this export would drop .* "
                       r"--components t5,dit,vae_decoder,vae_encoder to keep them"):  # fmt: skip
        export_engines(tiny_diffusers_dir, folder, encoder_only)
    assert sorted(p.name for p in folder.iterdir()) == before
    with pytest.raises(ExportError, match=r"unknown component\(s\) \['unet'\]"):  # not "would drop"
        export_engines(tiny_diffusers_dir, folder, replace(encoder_only, components=("unet",)))
    forced = export_engines(tiny_diffusers_dir, folder, replace(encoder_only, force=True))
    assert list(forced.components) == ["vae_encoder"] and not (folder / "dit.onnx").exists()


def test_t5_is_reused_by_a_reexport_with_trt_plugins(tiny_diffusers_dir, tmp_path):
    """T5 calls none of the kernels, so its graph has no plugin nodes with --trt-plugins either:
    it was taken for a graph without them, and exported again every time."""
    settings = ExportSettings("fp32", components=("t5",), max_batch=2, frames=(1, 16, 64), trt_plugins=True)
    export_engines(tiny_diffusers_dir, tmp_path / "engines", settings)
    reused: list[str] = []
    export_engines(tiny_diffusers_dir, tmp_path / "engines", settings, on_reused=reused.append)
    assert reused == ["t5"]


def test_a_reexport_keeps_the_plans_of_the_components_it_reuses(engines, tiny_diffusers_dir, tmp_path):
    """Re-exported without TensorRT (to add a component, say), the folder lost its plans and
    timing cache but its manifest still recorded them."""
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    (folder / "dit.plan").write_bytes(b"a plan built from dit.onnx")
    (folder / "timing.cache").write_bytes(b"TensorRT's timings")
    record = file_record(folder / "dit.plan")
    plan = PlanRecord("dit.plan", record.sha256, record.bytes, "10.9.0", "NVIDIA H200", "9.0")
    manifest = Manifest.read(folder)
    manifest.components["dit"] = replace(manifest.components["dit"], engine=plan)
    manifest.components["t5"] = replace(manifest.components["t5"], engine=replace(plan, file="t5.plan"))
    manifest.write(folder)  # t5's plan is recorded, but not there
    again = export_engines(
        tiny_diffusers_dir, folder, ExportSettings("fp32", max_batch=2, frames=(1, 16, 64))
    )
    assert again.components["dit"].engine == plan and Manifest.read(folder).components["dit"].engine == plan
    assert (folder / "dit.plan").read_bytes() == b"a plan built from dit.onnx"
    assert (folder / "timing.cache").read_bytes() == b"TensorRT's timings"
    assert again.components["t5"].engine is None and not (folder / "t5.plan").exists()


def test_a_killed_writes_leftovers_do_not_block_the_next_export(engines, tiny_diffusers_dir, tmp_path):
    folder = shutil.copytree(engines["fp32"][0], tmp_path / "engines")
    (folder / ".dit.0123abcd.plan").write_bytes(b"half a plan")  # atomic_path's name for dit.plan
    (folder / ".dit.onnx.89abcdef.data").write_bytes(b"half the weights")
    export_engines(tiny_diffusers_dir, folder, ExportSettings("fp32", max_batch=2, frames=(1, 16, 64)))
    assert not any(p.name.startswith(".") for p in folder.iterdir())


def test_tool_versions_need_no_installed_metadata_for_this_package(monkeypatch):
    # The offline GPU machines run the checkout through PYTHONPATH: no dist-info of ours there.
    import importlib.metadata

    import stable_audio_rt

    installed = importlib.metadata.version

    def version(name):
        if name == "stable-audio-rt":
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    versions = tool_versions()
    assert versions["stable-audio-rt"] == stable_audio_rt.__version__
    assert versions["torch"] == installed("torch")


def test_sa_export_takes_a_random_model_and_sa_run_checks_its_weights(tmp_path, capsys):
    from stable_audio_rt.models.source import fingerprint
    from stable_audio_rt.runtime import cli as run_cli

    out = tmp_path / "tiny"
    argv = ["--model", "tiny-random", "--fp32", "--out", str(out), "--components", "t5,dit,vae_decoder"]
    assert cli.main(argv) == 0
    assert "sa-export: loading tiny-random" in capsys.readouterr().err  # said before the silent load
    manifest = Manifest.read(out)
    assert manifest.source == "tiny-random" and manifest.weights_sha256 == fingerprint("tiny-random")
    clip = tmp_path / "clip.wav"
    run = ["x", "--engines", str(out), "--backend", "onnxruntime", "--steps", "2", "--seconds", "0.5"]
    assert run_cli.main([*run, "--model", "tiny-random", "-o", str(clip)]) == 0 and clip.is_file()
    capsys.readouterr()
    assert run_cli.main([*run, "--model", "tiny-random-small", "-o", str(tmp_path / "no.wav")]) == 2
    assert "was built from other weights than tiny-random-small" in capsys.readouterr().err
    assert not (tmp_path / "no.wav").exists()


def test_a_model_given_by_a_relative_path_is_recorded_by_its_absolute_one(
    tiny_diffusers_dir, tmp_path, monkeypatch
):
    """sa-bench (whose model defaults to the folder's source) and `--backend auto` load it from
    wherever they run: run elsewhere, `ck/sao` was taken for a Hub repo id."""
    monkeypatch.chdir(tiny_diffusers_dir.parent)
    settings = ExportSettings("fp32", components=("t5",), max_batch=2, frames=(1, 16, 64))
    manifest = export_engines(tiny_diffusers_dir.name, tmp_path / "engines", settings)
    assert manifest.source == Manifest.read(tmp_path / "engines").source == str(tiny_diffusers_dir.resolve())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-random").mkdir()
    random = export_engines("tiny-random", tmp_path / "random", settings)
    assert random.source == "tiny-random"  # a name, not a path, even beside a folder of that name


def test_what_a_killed_export_left_beside_the_folder_is_named_before_the_next(tmp_path, capsys):
    """A SIGKILL (or an out-of-memory kill) removes nothing: the next export says what was left,
    gigabytes for a real model, without removing it (another export may be filling it)."""
    from stable_audio_rt.export import cli

    out = tmp_path / "eng"
    filling, swapped = tmp_path / ".eng.5d3c6738", tmp_path / ".eng.old-0a1b2c3d"
    for left in (filling, swapped, tmp_path / ".other.5d3c6738"):
        left.mkdir()
        (left / "dit.onnx").write_bytes(bytes(2**20))
    (tmp_path / ".eng.5d3c6739").write_bytes(b"a file, not an export's folder")
    assert cli.main(["--model", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    notes = [line for line in capsys.readouterr().err.splitlines() if "sa-export: note:" in line]
    assert [line.split()[2] for line in notes] == [str(filling), str(swapped)]
    assert all("(1 MiB) is what an export that was killed left; remove it unless" in n for n in notes)
    assert filling.is_dir() and swapped.is_dir()
