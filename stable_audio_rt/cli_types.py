"""argparse types the command-line tools share."""

from __future__ import annotations

import argparse
from pathlib import Path


def folder_path(text: str) -> Path:
    """A folder option's value; an empty one (an unset shell variable) is refused, not taken for
    the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("the folder is empty (an unset variable?): give its path")
    return Path(text)
