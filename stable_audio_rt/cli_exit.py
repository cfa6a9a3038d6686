"""A CLI's exit without the interpreter's teardown.

Once a command's work is done and its output written, Python's own exit tears the interpreter
down: it collects and frees every object the imports made (~0.5 M with torch, Triton, transformers
and onnx loaded). On a 2-core EPYC that took 2.1-3.6 s after sa-run's, sa-export's or sa-bench's
last line, 93 % of it in the garbage collector; 0.1-0.2 s without it. Nothing a command makes
waits on that teardown, so `exit_without_teardown` does the steps of Python's exit that someone
relies on, in Python's order, and then ends the process at once. `gc.freeze()` instead would
spare the collections, but the objects it keeps alive are reported as leaks on stderr by
Triton's nanobind bindings, which expose no switch for that report."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def exit_without_teardown(status: int) -> NoReturn:
    """End the process with `status` as Python's exit would, less the teardown.

    Kept, in Python's order: other non-daemon threads and the executors' shutdown hooks are
    waited for (`threading._shutdown`), the atexit handlers run (logging's flush, weakref.finalize:
    TemporaryDirectory's cleanup; multiprocessing's and Inductor's worker pools stopped;
    filelock's locks released), then Python's and C's buffered stdout and stderr are written out.
    Skipped: the collection and freeing of what is left, and so the `__del__` of objects that
    live until exit, which Python does not promise to run anyway, and of cycles not yet collected
    (at sa-run's end: 213 unreachable objects, Dynamo's, none with a `__del__`, no file); the CLIs
    close and rename their files before they return (`atomic.py`) and hold no temporary file
    outside a `with`.
    Where there is no C library to flush by name (Windows), Python's own exit."""
    if os.name != "posix":
        sys.exit(status)
    # Both are what the interpreter itself calls at exit, before its teardown (Py_FinalizeEx).
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):  # None where started closed (`2>&-`)
        if stream is not None and not stream.closed:
            # A reader gone by now loses nothing of the files (`stderr_reader.py`): no error.
            with contextlib.suppress(BrokenPipeError):
                stream.flush()
    ctypes.CDLL(None).fflush(None)  # C code's buffered stdout (printf, std::cout); exit() flushes it
    os._exit(status)


def run_without_teardown(main: Callable[[], int]) -> NoReturn:
    """A command as pyproject's scripts run it: `main()`, then `exit_without_teardown` with its
    status; an early `sys.exit` (argparse's --help, --version and usage errors) ends the same way,
    with the status and message Python's exit gives it."""
    try:
        status = main()
    except SystemExit as e:  # as the interpreter reads it: None is 0, a non-int is printed, 1
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            status = 1
    exit_without_teardown(status)
