"""Moved to tests/procs.py (the service, deployment and reliability test helpers and the benchmark
scripts share it; the tests must not import bench/). Kept under this name for the scripts and helpers
that still import ``bench.procs``."""

from tests.procs import ServerProcess, free_port, http  # noqa: F401
