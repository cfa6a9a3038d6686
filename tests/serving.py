"""What the sa-serve tests share: short requests of the tiny model."""

# Short requests: 2 steps of half a second of the tiny model.
QUICK = {"audio_length": 0.5, "num_inference_steps": 2}
