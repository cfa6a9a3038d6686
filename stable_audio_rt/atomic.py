"""Atomic writes: a file is either its old self or completely written, never half-written.

Every writer goes through a temp file in the destination's folder (so the final rename stays on
one filesystem, where os.replace is atomic) that is removed if the write fails.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temp path beside `path`, renamed onto it when the block succeeds, removed when not.

    The temp name keeps `path`'s extension, for writers that pick the format by it (matplotlib,
    soundfile), and starts with a dot so it stays out of listings while it exists.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically, creating its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
