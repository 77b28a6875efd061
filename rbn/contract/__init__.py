"""The torch-free contract the service reads: bundle format, input spec and preprocessing, OOD scoring maths, corruptions. Never imports torch."""
