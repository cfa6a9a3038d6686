"""sa-run and the Python API: sampler, generation modes, backends, static buffers, audio I/O."""
