"""The package runs on an image without soundfile, soxr and torchsde (the offline GPU machines
before their wheelhouse is installed): only what needs them fails, naming the module."""

import subprocess
import sys

# Each import of the three raises ImportError, as on an image that lacks them.
BLOCK = "import sys; sys.modules.update(soundfile=None, soxr=None, torchsde=None)\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True)


def test_pingpong_generation_needs_none_of_them():
    done = _run(
        "from stable_audio_rt import StableAudio\n"
        "r = StableAudio.from_pretrained('tiny-random-small', device='cpu').generate('x', steps=2, seed=1)\n"
        "print(tuple(r.audio.shape))"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("(1, 2,")


def test_what_needs_one_names_it():
    done = _run(
        "from stable_audio_rt import StableAudio\n"
        "StableAudio.from_pretrained('tiny-random', device='cpu').generate('x', steps=2, noise='brownian')"
    )
    assert done.returncode != 0 and "torchsde" in done.stderr
    done = _run(f"from stable_audio_rt.runtime.audio_io import read_audio\nread_audio({__file__!r})")
    assert done.returncode != 0 and "soundfile" in done.stderr
