"""Root of the test suite: the skip policy (tests/skip_policy.py) and the hang backstop behind the per-test
timeout (tests/hang_guard.py) apply to every test."""

pytest_plugins = ["skip_policy", "hang_guard"]
