"""The exceptions the library raises. CLIs turn them into one line and a non-zero exit."""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


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
    """SIGTERM (`kill`, `docker stop`, `timeout`) inside `reported_errors`: Ctrl-C's path, so
    that temporary files and folders are removed on the way out."""


# Exit statuses: a refusal; interrupted by SIGINT (128 + 2) or SIGTERM (128 + 15).
EXIT_REFUSED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


@dataclass
class Outcome:
    """What `reported_errors` made of its block: None while it succeeded, else the exit status."""

    exit_status: int | None = None


@contextmanager
def reported_errors(
    program: str, interrupted: str, before_report: Callable[[], None] = lambda: None
) -> Iterator[Outcome]:
    """The CLIs' one policy: a StableAudioError becomes one line on stderr and exit status 2, Ctrl-C
    one line saying what was (not) written (`interrupted`) and 130; anything else is a bug and keeps
    its traceback. `before_report` runs first (a progress bar closed so the line stands alone).
    Warnings raised in the block print as one line too. SIGTERM is taken as Ctrl-C (exit 143)
    while the block runs in the main thread."""
    outcome = Outcome()

    def terminate(*_) -> None:
        raise Terminated

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if in_main else None

    def one_line(message, category, *_) -> None:  # not Python's file:line and source line
        print(f"{program}: warning: {message}", file=sys.stderr)

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
        print(f"{program}: {how}; {interrupted}", file=sys.stderr)
        outcome.exit_status = EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
