"""Command-line tools beside the server: ab-eval (an HTTP client) and validate."""
