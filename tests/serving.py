"""What the sa-serve tests share: short requests of the tiny model, and a server around it."""

from collections.abc import Iterator
from contextlib import contextmanager

from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.serve.app import ServeSettings, create_app
from stable_audio_rt.serve.background import BackgroundServer

# Short requests: 2 steps of half a second of the tiny model.
QUICK = {"audio_length": 0.5, "num_inference_steps": 2}


@contextmanager
def serving(pipe: StableAudio, **settings) -> Iterator[BackgroundServer]:
    """sa-serve's app on `pipe` with these ServeSettings, on 127.0.0.1 until the block ends."""
    running = BackgroundServer(create_app(pipe, ServeSettings("tiny-random", **settings)))
    try:
        yield running
    finally:
        running.stop()
