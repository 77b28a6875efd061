"""Root of the test suite: the skip policy (tests/skip_policy.py) applies to every test."""

pytest_plugins = ["skip_policy"]
