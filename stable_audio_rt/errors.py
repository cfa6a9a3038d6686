"""The exceptions the library raises. CLIs turn them into one line and a non-zero exit."""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from stable_audio_rt.stderr_reader import stderr_reader_may_leave


class StableAudioError(Exception):
    """Base class: every error this package raises on purpose."""


class ConfigError(StableAudioError):
    """A model configuration is inconsistent or unsupported."""


class CheckpointError(StableAudioError):
    """A checkpoint is missing, incomplete, corrupt or does not match its config."""


class RequestError(StableAudioError):
    """A generation request asks for something impossible; the message says what to change."""


class WriteError(StableAudioError):
    """A result cannot be written where it was asked to go."""


class ModelAccessError(CheckpointError):
    """A checkpoint could not be fetched: gated repo, no token, no network, unknown repo."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `docker stop`, `timeout`) or SIGHUP (the terminal or SSH session closed)
    inside `reported_errors`: Ctrl-C's path, so that temporary files and folders are removed on
    the way out."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


# Exit statuses: a refusal; interrupted by SIGINT (128 + 2); by another signal, 128 + its number.
EXIT_REFUSED, EXIT_INTERRUPTED, EXIT_BY_SIGNAL = 2, 130, 128
# The signals taken as Ctrl-C (SIGHUP is POSIX only).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@dataclass
class Outcome:
    """What `reported_errors` made of its block: None while it succeeded, else the exit status."""

    exit_status: int | None = None


@contextmanager
def reported_errors(
    program: str,
    interrupted: str | Callable[[], str],
    before_report: Callable[[], None] = lambda: None,
    worded: Callable[[str], str] = str,
) -> Iterator[Outcome]:
    """The CLIs' one policy: a StableAudioError becomes one line on stderr and exit status 2, Ctrl-C
    one line saying what was (not) written (`interrupted`, or what it returns at the signal) and
    130; anything else is a bug and keeps its traceback. `before_report` runs first (a progress bar
    closed so the line stands alone). Warnings raised in the block print as one line too, `worded`
    (the program's names for the API's). SIGTERM and SIGHUP are taken as Ctrl-C (exit 143 and 129)
    while the block runs in the main thread. A reader of stderr that leaves ends nothing
    (`stderr_reader.py`)."""
    outcome = Outcome()

    def terminate(number: int, _frame: object) -> None:
        raise Terminated(number)

    in_main = threading.current_thread() is threading.main_thread()
    previous = {number: signal.signal(number, terminate) for number in STOP_SIGNALS} if in_main else {}

    def one_line(message, category, *_) -> None:  # not Python's file:line and source line
        print(f"{program}: warning: {worded(str(message))}", file=sys.stderr)

    with stderr_reader_may_leave():  # the reports below go through it too
        try:
            with warnings.catch_warnings():
                warnings.showwarning = one_line
                yield outcome
        except StableAudioError as e:
            before_report()
            print(f"{program}: error: {e}", file=sys.stderr)
            outcome.exit_status = EXIT_REFUSED
        except KeyboardInterrupt as e:
            before_report()
            how = "terminated" if isinstance(e, Terminated) else "interrupted"
            left = interrupted if isinstance(interrupted, str) else interrupted()
            print(f"{program}: {how}; {left}", file=sys.stderr)
            outcome.exit_status = EXIT_BY_SIGNAL + e.number if isinstance(e, Terminated) else EXIT_INTERRUPTED
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
