"""Atomic writes leave either the old file or the whole new one, and no temp file behind; what
they create has the permissions a plain write would give it."""

import os
import re
import stat
from pathlib import Path

import pytest

from stable_audio_rt import atomic
from stable_audio_rt.atomic import (
    atomic_path,
    atomic_paths,
    check_writable,
    new_folder_beside,
    write_atomically,
    written_for,
)
from stable_audio_rt.errors import WriteError


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_text_and_bytes_creating_the_folder(tmp_path: Path):
    write_atomically(tmp_path / "a" / "x.json", "text\n")
    write_atomically(tmp_path / "a" / "y.bin", b"\x00\x01")
    assert (tmp_path / "a" / "x.json").read_text() == "text\n"
    assert (tmp_path / "a" / "y.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "y.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path):
    path = tmp_path / "out.wav"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".wav"
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_several_files_are_written_all_or_none(tmp_path: Path):
    paths = [tmp_path / f"clip_{k}.wav" for k in range(3)]
    paths[1].write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_paths(paths) as temps:
        temps[0].write_text("new 0")
        raise KeyboardInterrupt  # Ctrl-C or SIGTERM while the second clip is written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_1.wav"] and paths[1].read_text() == "old"
    with atomic_paths(paths) as temps:
        for k, tmp in enumerate(temps):
            tmp.write_text(f"new {k}")
    assert [p.read_text() for p in paths] == ["new 0", "new 1", "new 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]


def test_a_write_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path: Path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "target.wav"
    target.write_text("old")
    link = tmp_path / "link.wav"
    link.symlink_to(target)
    write_atomically(link, "new")
    assert link.is_symlink() and target.read_text() == "new" and link.read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["target.wav"]


def test_two_paths_that_lead_to_one_file_are_refused_before_any_write(tmp_path: Path):
    clips = [tmp_path / f"clip_{k}.wav" for k in range(3)]
    (tmp_path / "real").mkdir()
    clips[2].symlink_to(tmp_path / "real" / ".." / clips[0].name)  # clip_2 is clip_0 under another name
    refusal = rf"cannot write both .*clip_0\.wav and .*clip_2\.wav: both lead to {re.escape(str(clips[0]))}"
    with pytest.raises(WriteError, match=refusal):
        with atomic_paths(clips):
            pytest.fail("nothing may be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_2.wav", "real"] and clips[2].is_symlink()


def test_a_path_to_no_regular_file_is_refused_not_replaced(tmp_path: Path):
    """A FIFO stands for a device here: root's rename would replace /dev/null itself."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "report.json"
    link.symlink_to(fifo)
    for path in (fifo, link):
        with pytest.raises(WriteError, match=rf"cannot write .*{path.name}: .*fifo is not a regular file"):
            write_atomically(path, "new")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "report.json"]


def test_the_write_probe_is_removed_even_if_interrupted(tmp_path: Path, monkeypatch):
    created = atomic._new_file

    def interrupted(path: Path) -> None:
        created(path)
        raise KeyboardInterrupt  # the signal lands between the probe's creation and removal

    monkeypatch.setattr(atomic, "_new_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_a_write_error_that_keeps_the_old_file(tmp_path: Path, full_disk):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    full_disk(path.name)
    with pytest.raises(
        WriteError, match=r"manifest\.json \(No space left on device\): free space on that disk"
    ):
        write_atomically(path, "new")
    assert list(tmp_path.iterdir()) == [path] and path.read_text() == "old"


def test_a_rename_that_fails_is_a_write_error_naming_its_target(tmp_path: Path):
    paths = [tmp_path / f"clip_{k}.wav" for k in range(2)]
    with pytest.raises(
        WriteError, match=r"cannot write .*clip_1\.wav \(Is a directory\): a folder is in its place"
    ):
        with atomic_paths(paths) as temps:
            for tmp in temps:
                tmp.write_text("new")
            paths[1].mkdir()  # made by someone else while the clips were written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_0.wav", "clip_1.wav"] and paths[1].is_dir()


def test_a_folder_without_search_permission_is_one_clear_refusal(tmp_path: Path, monkeypatch):
    """In a folder this user may read but not search (chmod 600, another user's), creating the
    probe and removing it both fail with EACCES: the refusal must stay the one-line WriteError,
    not the removal's PermissionError. (Root searches any folder, so EACCES is made here.)"""

    def denied(path: Path, *args) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "_new_file", denied)
    monkeypatch.setattr(Path, "unlink", denied)
    with pytest.raises(WriteError, match=r"cannot write in .* \(Permission denied\): give a folder"):
        check_writable(tmp_path)


def test_new_files_and_folders_get_what_open_and_mkdir_give(tmp_path: Path, umask):
    write_atomically(tmp_path / "clip.wav", b"RIFF")
    (tmp_path / "plain.wav").write_bytes(b"RIFF")  # what `open` gives under this umask
    assert _mode(tmp_path / "clip.wav") == _mode(tmp_path / "plain.wav") == 0o666 & ~umask
    folder = new_folder_beside(tmp_path / "engines")
    assert folder.parent == tmp_path and folder.name.startswith(".engines.") and folder.is_dir()
    assert _mode(folder) == 0o777 & ~umask and list(folder.iterdir()) == []
    assert new_folder_beside(tmp_path / "engines") != folder  # a fresh one each time


def test_a_file_written_over_keeps_its_permissions(tmp_path: Path, umask):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    path.chmod(0o640)
    write_atomically(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o640


@pytest.mark.parametrize("name", ["dit.plan", "dit.onnx.data", "manifest.json", "tokenizer"])
def test_a_temp_name_says_what_it_was_for(tmp_path: Path, name):
    with atomic_path(tmp_path / name) as tmp:
        assert written_for(tmp.name) == name
    assert written_for(new_folder_beside(tmp_path / name).name) == name
    assert written_for(name) is None and written_for(".notes.txt") is None


def test_leftovers_beside_a_folder_that_cannot_be_listed_are_none(tmp_path, monkeypatch):
    from stable_audio_rt.atomic import left_beside

    (tmp_path / ".eng.5d3c6738").mkdir()
    assert left_beside(tmp_path / "eng") == [tmp_path / ".eng.5d3c6738"]

    def unlistable(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(tmp_path), "iterdir", unlistable)
    assert left_beside(tmp_path / "eng") == []


def test_a_swapped_out_folder_is_removed_through_repeated_stop_signals(tmp_path, monkeypatch):
    """Each stop signal cut the removal short again; the first is passed on once it is done."""
    from stable_audio_rt.atomic import OLD_INFIX, remove_swapped_out

    old = tmp_path / f".eng{OLD_INFIX}0a1b2c3d"
    (old / "tokenizer").mkdir(parents=True)
    (old / "dit.onnx").write_bytes(b"graph")
    removal = atomic.shutil.rmtree
    signals = [KeyboardInterrupt("first"), KeyboardInterrupt("second")]

    def cut_short(path, *args, **kwargs):
        if signals:
            raise signals.pop(0)
        removal(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", cut_short)
    with pytest.raises(KeyboardInterrupt, match="first"):
        remove_swapped_out(old)
    assert not signals and list(tmp_path.iterdir()) == []
