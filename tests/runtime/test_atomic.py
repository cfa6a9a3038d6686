"""Atomic writes leave either the old file or the whole new one, and no temp file behind; what
they create has the permissions a plain write would give it."""

import os
import stat
from pathlib import Path

import pytest

from stable_audio_rt.atomic import atomic_path, new_folder_beside, write_atomically, written_for


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
