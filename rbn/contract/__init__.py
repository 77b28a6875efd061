"""The torch-free contract the service reads: bundle format, input spec and preprocessing, the graph runner (pixels -> named outputs), OOD scoring maths, corruptions. Never imports torch."""
