"""A CLI's stderr whose reader may leave mid-run (`sa-export ... 2>&1 | head`, a closed `tee`): its
notes and progress bars are for a person, the files are the product, so once the reader has gone
the rest of stderr goes to /dev/null and the work goes on. (A terminal that hangs up sends SIGHUP,
which stops the run as a signal: `errors.reported_errors`.)"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class _ReaderMayLeave(io.TextIOBase):
    """Writes through to `stream` until a write finds its pipe closed; then the stream's file
    descriptor is pointed at /dev/null, so the rest (this object, holders of the stream itself such
    as logging handlers, and C code writing to the descriptor) go nowhere without an error."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard_from_now()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard_from_now()

    def _discard_from_now(self) -> None:
        try:
            descriptor = self._stream.fileno()
        except (OSError, ValueError):  # no descriptor (an in-memory stream): nothing left to write to
            return
        to_nowhere(descriptor)
        self._stream.flush()  # what the closed pipe refused, now to /dev/null

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding


def to_nowhere(descriptor: int) -> None:
    """Point `descriptor` at /dev/null: its reader has left, so what is still written there, the
    exit's flush included, goes nowhere without an error."""
    nowhere = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nowhere, descriptor)
    os.close(nowhere)


@contextmanager
def stdout_reader_may_leave() -> Iterator[None]:
    """The CLI's last prints, of what it wrote (`sa-run ... | head -1`): a reader gone before
    them fails nothing, the files being written already; stdout then goes nowhere."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        to_nowhere(sys.stdout.fileno())


@contextmanager
def stderr_reader_may_leave() -> Iterator[None]:
    """sys.stderr, for the block, survives its reader leaving (see the module). Started with
    stderr closed (`2>&-`: Python's sys.stderr is None), nothing reads it: the block's stderr is
    /dev/null (opened first, it takes descriptor 2 where that is still free, so C code writing
    there writes no file opened later)."""
    original = sys.stderr
    with contextlib.ExitStack() as closing:
        if original is None:
            sys.stderr = closing.enter_context(open(os.devnull, "w"))
        else:
            sys.stderr = _ReaderMayLeave(original)
        try:
            yield
        finally:
            sys.stderr = original
