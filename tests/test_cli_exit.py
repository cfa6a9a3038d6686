"""The CLIs' exit (`cli_exit.exit_without_teardown`): what Python's exit does that someone relies on
is kept, the teardown of every object the imports made is not. Each case runs in a process of its
own: the exit ends the process it runs in. (How long the teardown took is in the module's doc.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stable_audio_rt import cli_exit

ROOT = Path(__file__).resolve().parents[1]  # pyproject.toml, and the package a subprocess imports
# Held in a global to the end: its __del__ runs only in the interpreter's teardown.
HELD_TO_THE_END = """
import sys
from pathlib import Path

class HeldToTheEnd:
    def __init__(self, folder):
        self.mark = (folder / "torn down").touch  # bound now: the teardown clears module globals

    def __del__(self):
        self.mark()

out = Path(sys.argv[1])
held = HeldToTheEnd(out)
"""


def _run(code: str, *argv: str) -> subprocess.CompletedProcess:
    # Without PYTHONUNBUFFERED, Python's stdout and C's are block-buffered into the pipe, as a
    # user's `sa-run ... | tee` has them: the exit must write them out.
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, env=environment, capture_output=True, timeout=300
    )


# What Python's exit keeps: a thread still running, an atexit handler, a temporary folder outside
# a `with` (removed by its weakref.finalize), lines left in Python's and C's stdout buffers.
LEFT_AT_THE_EXIT = """
import atexit, ctypes, tempfile, threading, time
from stable_audio_rt.cli_exit import exit_without_teardown

def late():
    time.sleep(0.2)
    (out / "thread finished").touch()

threading.Thread(target=late).start()  # not a daemon: Python's exit waits for it
atexit.register((out / "atexit ran").touch)
left = tempfile.TemporaryDirectory(dir=out)
print("Python's line", end=" ")
ctypes.CDLL(None).printf(b"C's line")
exit_without_teardown(3)
"""


def test_the_exit_keeps_threads_atexit_handlers_temporary_folders_and_buffered_output(tmp_path):
    done = _run(HELD_TO_THE_END + LEFT_AT_THE_EXIT, str(tmp_path))
    assert done.returncode == 3, done.stderr.decode()
    assert done.stdout == b"Python's line C's line"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atexit ran", "thread finished"]


# A command run as pip's script for it runs it: the function pyproject names, its status the exit's.
AS_ITS_SCRIPT = """
import importlib, tomllib
name = sys.argv[2]
with open("pyproject.toml", "rb") as file:
    module, function = tomllib.load(file)["project"]["scripts"][name].split(":")
sys.argv = [name, *sys.argv[3:]]
sys.exit(getattr(importlib.import_module(module), function)())
"""


@pytest.mark.parametrize(
    "name,argv,refusal",
    [
        ("sa-run", ["x", "--model", "tiny-random", "--seconds", "0", "-o", "{out}/a.wav"], "--seconds must"),
        ("sa-export", ["--model", "tiny-random", "--out", "{out}/a-file"], "a-file is a file: --out takes"),
        ("sa-bench", ["--engines", "{out}/no-folder"], "no-folder is not an engine folder"),
        ("sa-serve", ["--model", "tiny-random", "--max-queue", "0"], "--max-queue must be at least 1"),
    ],
)
def test_each_command_exits_with_its_status_and_without_the_teardown(name, argv, refusal, tmp_path):
    """A refusal, the quickest way to each command's end: its status (2) and its line stand, and
    nothing held to the end is torn down."""
    pytest.importorskip("tomllib")  # Python 3.11's; on 3.10 the scripts' table is not read here
    (tmp_path / "a-file").touch()
    done = _run(HELD_TO_THE_END + AS_ITS_SCRIPT, str(tmp_path), name, *(a.format(out=tmp_path) for a in argv))
    err = done.stderr.decode()
    assert done.returncode == 2 and f"{name}: error: " in err and refusal in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# --help for each command; --version and a usage error once (the same path through argparse).
ARGPARSE_EXITS = [*((name, "--help", 0) for name in ("sa-run", "sa-export", "sa-bench", "sa-serve")),
                  ("sa-run", "--version", 0), ("sa-serve", "--no-such-option", 2)]  # fmt: skip


@pytest.mark.parametrize("name,option,status", ARGPARSE_EXITS)
def test_argparse_s_own_exits_skip_the_teardown_too(name, option, status, tmp_path):
    """--help, --version and a usage error end inside argparse (`sys.exit`): the same exit, with
    argparse's status and output."""
    pytest.importorskip("tomllib")
    done = _run(HELD_TO_THE_END + AS_ITS_SCRIPT, str(tmp_path), name, option)
    assert done.returncode == status, done.stderr.decode()
    shown = done.stdout.decode() if status == 0 else done.stderr.decode()
    assert shown.startswith(f"usage: {name}") or shown.startswith(f"{name} "), shown[:300]
    assert list(tmp_path.iterdir()) == []


class Exited(Exception):
    pass


@pytest.mark.parametrize("code,status,err", [(None, 0, ""), (4, 4, ""), ("a message", 1, "a message\n")])
def test_a_sys_exit_inside_main_keeps_python_s_status_and_message(code, status, err, monkeypatch, capsys):
    def exit_with(status):
        raise Exited(status)

    def main():
        sys.exit(code)

    monkeypatch.setattr(cli_exit, "exit_without_teardown", exit_with)
    with pytest.raises(Exited) as exited:
        cli_exit.run_without_teardown(main)
    assert exited.value.args == (status,) and capsys.readouterr().err == err
