"""A uvicorn server in a thread for the sa-serve tests, on a free port of 127.0.0.1."""

import threading
import time

import uvicorn

# Short requests: 2 steps of half a second of the tiny model.
QUICK = {"audio_length": 0.5, "num_inference_steps": 2}
START_TIMEOUT_S = 60


class Running:
    """A uvicorn server in a thread on a free port of 127.0.0.1, stopped by `stop`."""

    def __init__(self, app) -> None:
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
