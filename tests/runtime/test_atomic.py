"""Atomic writes leave either the old file or the whole new one, and no temp file behind."""

from pathlib import Path

import pytest

from stable_audio_rt.atomic import atomic_path, write_atomically


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
