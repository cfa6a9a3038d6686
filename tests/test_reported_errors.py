"""The CLIs' one error policy (`errors.reported_errors`): refusals, Ctrl-C and stop signals."""

import os
import signal

import pytest

from stable_audio_rt.errors import RequestError, reported_errors


def test_a_refusal_is_one_line_and_exit_2(capsys):
    with reported_errors("sa-x", "nothing written") as failed:
        raise RequestError("steps must be in [1, 10000], got 0")
    assert failed.exit_status == 2
    assert capsys.readouterr().err == "sa-x: error: steps must be in [1, 10000], got 0\n"


@pytest.mark.parametrize("name,status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_stop_signal_takes_ctrl_cs_path_and_its_handler_is_given_back(name, status, capsys):
    number = getattr(signal, name)
    cleaned = []

    def guard(*_):  # were the signal not taken inside the block, it would end pytest itself
        raise AssertionError(f"{name} reached the test")

    previous = signal.signal(number, guard)
    try:
        with reported_errors("sa-x", "nothing written") as failed:
            try:
                os.kill(os.getpid(), number)  # its handler runs before the next line
                pytest.fail(f"{name} did not stop the block")
            finally:
                cleaned.append(True)  # what a temporary file's cleanup would do
        assert signal.getsignal(number) is guard
    finally:
        signal.signal(number, previous)
    assert failed.exit_status == status and cleaned == [True]
    assert capsys.readouterr().err == "sa-x: terminated; nothing written\n"


def test_a_stderr_reader_leaving_ends_nothing_and_the_rest_goes_nowhere(monkeypatch):
    """`sa-export ... 2>&1 | head -3`: the block's notes after the reader left, and the report of
    its refusal, neither raise BrokenPipeError nor stop the block; the descriptor then writes to
    /dev/null, so holders of the stream itself (logging handlers) write without error too."""
    import sys

    reading, writing = os.pipe()
    stream = os.fdopen(writing, "w", buffering=1)
    os.close(reading)  # the reader is gone
    monkeypatch.setattr(sys, "stderr", stream)
    ran_on = []
    try:
        with reported_errors("sa-x", "nothing written") as failed:
            print("progress", file=sys.stderr)
            ran_on.append(True)
            raise RequestError("steps must be in [1, 10000], got 0")
        assert sys.stderr is stream and failed.exit_status == 2 and ran_on == [True]
        stream.write("a logging handler's line\n")  # the stream itself, past the block
        stream.flush()
        assert os.path.samestat(os.fstat(writing), os.stat(os.devnull))
    finally:
        stream.close()


def test_a_closed_stderr_ends_nothing(monkeypatch, capsys):
    """`sa-run ... 2>&-`: Python starts with sys.stderr None, and the block's notes and its
    refusal's report raised AttributeError through the wrapper (sa-run exited 1, nothing written)."""
    import sys

    monkeypatch.setattr(sys, "stderr", None)
    ran_on = []
    with reported_errors("sa-x", "nothing written") as failed:
        print("progress", file=sys.stderr)
        ran_on.append(True)
        raise RequestError("steps must be in [1, 10000], got 0")
    assert sys.stderr is None and failed.exit_status == 2 and ran_on == [True]
    assert capsys.readouterr().out == ""  # stdout carries the paths written: no notes there
