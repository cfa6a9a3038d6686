"""sa-export: torch → ONNX per component and precision, engine builds, the engine manifest."""
