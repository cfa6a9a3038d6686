"""The backends: the protocols the pipeline calls, PyTorch, and the engine folders' onnxruntime and
TensorRT graphs; `choice` picks one for `--backend auto`."""
