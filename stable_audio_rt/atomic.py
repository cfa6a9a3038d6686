"""Atomic writes: a file is either its old self or completely written, never half-written.

Every writer goes through a temp file in the destination's folder (so the final rename stays on
one filesystem, where os.replace is atomic) that is removed if the write fails. Temp files and
folders are created as `open` and `mkdir` create them (0666 and 0777 less the umask), not private
as `tempfile`'s are (0600, 0700): a WAV or an engine folder must be readable by whoever could
read a file written plainly there, such as a server running as another user. A file written over
an existing one keeps that one's permissions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stable_audio_rt.errors import WriteError

# The permissions `open` and `mkdir` ask for; the umask then takes away what it takes away.
NEW_FILE_MODE = 0o666
NEW_FOLDER_MODE = 0o777


# What to do about a failed write, by its errno; any other: WRITE_FIX.
WRITE_FIX = "give a folder you can write to"
SPACE_FIX = "free space on that disk, or give a folder on another one"
WRITE_FIXES = {
    errno.ENOSPC: SPACE_FIX,
    errno.EDQUOT: SPACE_FIX,
    errno.EISDIR: "a folder is in its place: move it, or name another file",
}

# A folder replaced by a new one is renamed `.<name><OLD_INFIX><hex>` before it is removed.
OLD_INFIX = ".old-"
# `_beside`'s names: a dot, the stem, 8 hex digits, the extension.
TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.[0-9a-f]{8}(?P<suffix>\.[^.]*)?")


def _beside(path: Path, create: Callable[[Path], None]) -> Path:
    """A new entry made by `create` under a name nobody uses beside `path`: a dot (out of
    listings), `path`'s stem, random hex digits, and its extension (writers such as matplotlib and
    soundfile pick the format by it)."""
    while True:
        candidate = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{path.suffix}")
        try:
            create(candidate)
        except FileExistsError:
            continue
        except OSError as e:
            raise write_failed(path, e) from e
        return candidate


def write_failed(path: Path, error: OSError) -> WriteError:
    """The refusal of a write to `path` that failed with `error`: its cause and what to do."""
    if error.errno is None:
        # A short write reported without its errno: numpy's tofile, through which the ONNX
        # exporter writes a graph's external data ("problem writing element 17408 to file"), on
        # a full disk; the exporter removes the partial file, so the disk no longer looks full.
        return WriteError(
            f"cannot write {path} ({error}: the write was cut short, as on a full disk): {SPACE_FIX}"
        )
    return WriteError(f"cannot write {path} ({error.strerror}): {WRITE_FIXES.get(error.errno, WRITE_FIX)}")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A write towards `path` (its temp file, its rename): an OSError in the block (a full disk)
    is a WriteError naming `path`, its cause and what to do."""
    try:
        yield
    except OSError as e:
        raise write_failed(path, e) from e


def check_writable(folder: Path) -> None:
    """Refuse, before any work, a folder this process cannot create files in (read-only, another
    user's, /proc): the write would otherwise fail only once the work is done."""
    probe = Path(folder) / f".write-probe.{secrets.token_hex(4)}"
    try:
        _new_file(probe)
    except OSError as e:
        raise WriteError(f"cannot write in {folder} ({e.strerror}): give a folder you can write to") from e
    finally:  # removed even if a signal lands here; where none was made, nothing to say
        with contextlib.suppress(OSError):
            probe.unlink()


def written_for(name: str) -> str | None:
    """The name a temp file or folder called `name` was made for (left by a write that was
    killed), or None if `name` is not one of ours."""
    found = TEMP_NAME.fullmatch(name)
    return None if found is None else found["stem"] + (found["suffix"] or "")


def left_beside(path: Path) -> list[Path]:
    """The temp folders a killed write of `path` left beside it (its new folder being filled, or
    the old one being swapped out): a SIGKILL or an out-of-memory kill removes nothing. Whether
    another write is filling one now cannot be told from here."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # no such folder, or one that cannot be listed: nothing to say
        return []
    return sorted(
        entry
        for entry in entries
        if (written_for(entry.name) == path.name or entry.name.startswith(f".{path.name}{OLD_INFIX}"))
        and entry.is_dir()
        and not entry.is_symlink()
    )


def bytes_in(folder: Path) -> int:
    """The bytes of the files under `folder` now (those that vanish while counted, not)."""
    total = 0
    for file in Path(folder).rglob("*"):
        with contextlib.suppress(OSError):
            total += file.stat().st_size if file.is_file() else 0
    return total


def remove_swapped_out(old: Path) -> None:
    """Remove `old`, a folder swapped out for its new version (named with OLD_INFIX), to the end
    even when a stop signal (Ctrl-C; SIGTERM as `errors.Terminated`) lands meanwhile; the signal
    is passed on once the folder is gone. The new folder is in place by then and no process needs
    the old one, so a removal cut short would leave it beside the new folder for good. Finishing
    it here is simpler than a later run telling such a leftover from one another export is
    removing now, and costs a moment (unlinks only), so further signals in it wait too. A
    SIGKILL still leaves it: the next export names it (`left_beside`)."""
    stop: KeyboardInterrupt | None = None
    removed = False
    while not removed:
        try:
            shutil.rmtree(old, ignore_errors=True)
            removed = True
        except KeyboardInterrupt as e:
            if stop is None:
                stop = e
    if stop is not None:
        raise stop


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, NEW_FILE_MODE))


def new_folder_beside(path: Path) -> Path:
    """A new empty folder beside `path`, hidden, with a folder's usual permissions, to be filled and
    then renamed onto `path`."""
    return _beside(Path(path), lambda candidate: candidate.mkdir(NEW_FOLDER_MODE))


def write_target(path: Path) -> Path:
    """Where a write to `path` lands: a symbolic link's target (what the link's readers see), as
    `open` writes through a link, else `path` itself."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_replaceable(path: Path) -> None:
    """Refuse a path whose write target (`write_target`) exists but is no regular file: a device,
    FIFO, socket or folder would be replaced by the new file (root's rename replaces even
    /dev/null)."""
    target = write_target(path)
    if target.exists() and not target.is_file():
        raise WriteError(
            f"cannot write {path}: {target} is not a regular file (a device, FIFO, socket or folder) "
            "and would be replaced by one; name a file"
        )


def check_distinct(paths: Sequence[Path]) -> None:
    """Refuse paths of which two lead to one file (a symbolic link to another's name): written
    together, the second would replace the first."""
    first_to: dict[Path, Path] = {}
    for path in paths:
        target = Path(os.path.realpath(path))
        if target in first_to:
            raise WriteError(
                f"cannot write both {first_to[target]} and {path}: both lead to {target}, so one would "
                "replace the other; name files that differ (or remove the symbolic link joining them)"
            )
        first_to[target] = path


@contextlib.contextmanager
def atomic_paths(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """A fresh temp path beside each of `paths` (a link's target: `write_target`), all renamed
    onto them when the block succeeds and all removed when not: several files are written whole
    or not at all, but for the moment the renames take. Two paths that lead to one file are
    refused (`check_distinct`), and so is a path to something other than a file (`check_replaceable`)."""
    check_distinct(paths)
    for path in paths:
        check_replaceable(path)
    targets = [write_target(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            temps.append(_beside(target, _new_file))
        yield temps
        for tmp, target in zip(temps, targets, strict=True):
            with writing(target):
                if target.exists():
                    shutil.copymode(target, tmp)
        for tmp, target in zip(temps, targets, strict=True):
            with writing(target):
                os.replace(tmp, target)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temp path beside `path`, renamed onto it when the block succeeds, removed when not."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically, creating its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, writing(path):
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
