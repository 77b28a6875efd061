"""One gRPC-enabled server for the tests of this folder that need no special settings."""

from __future__ import annotations

import pytest
from grpc_support import start


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start(tmp_path_factory.mktemp("grpc-server"), max_batch_size=16) as proc:
        yield proc
