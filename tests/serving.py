"""What the sa-serve tests share: short requests of the tiny model, and a server around it."""

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.serve.app import ServeSettings, create_app
from stable_audio_rt.serve.background import BackgroundServer

# Short requests: 2 steps of half a second of the tiny model.
QUICK = {"audio_length": 0.5, "num_inference_steps": 2}
# The tests' long requests run thousands of quick steps (sa-serve's own limit is 500).
TEST_MAX_STEPS = 5000
# How often a starting server is asked whether it is ready (seconds).
HEALTH_POLL_S = 0.2


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server process to listen on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Until the server process at `url` answers /health with 200 (failing if it exits first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            # What it printed (stdout or stderr, whichever the test piped) says why it stopped.
            printed = "".join(part or "" for part in process.communicate())
            raise AssertionError(f"{process.args} exited with {process.returncode}:\n{printed[-4000:]}")
        assert time.monotonic() < deadline, f"{process.args} did not start in {timeout_s:g} s"
        time.sleep(HEALTH_POLL_S)


@contextmanager
def serving(pipe: StableAudio, **settings) -> Iterator[BackgroundServer]:
    """sa-serve's app on `pipe` with these ServeSettings, on 127.0.0.1 until the block ends."""
    settings.setdefault("max_steps", TEST_MAX_STEPS)
    running = BackgroundServer(create_app(pipe, ServeSettings("tiny-random", **settings)))
    try:
        yield running
    finally:
        running.stop()
