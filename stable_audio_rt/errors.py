"""The exceptions the library raises. CLIs turn them into one line and a non-zero exit."""

from __future__ import annotations

import sys
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
    Warnings raised in the block print as one line too."""
    outcome = Outcome()

    def one_line(message, category, *_) -> None:  # not Python's file:line and source line
        print(f"{program}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            yield outcome
    except StableAudioError as e:
        before_report()
        print(f"{program}: error: {e}", file=sys.stderr)
        outcome.exit_status = 2
    except KeyboardInterrupt:
        before_report()
        print(f"{program}: interrupted; {interrupted}", file=sys.stderr)
        outcome.exit_status = 130
