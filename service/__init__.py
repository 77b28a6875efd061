"""rbn-serve: the FastAPI + ONNX Runtime inference service (never imports torch)."""
