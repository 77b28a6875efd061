"""The real application (``create_app``: gate, auth, fast path, routes, the shipped models in ONNX Runtime)
driven in process: requests go straight into the ASGI app, so a test can send what an HTTP parser would
refuse first (a repeated Content-Length) and mutation testing (mutation/run.sh) sees the code they reach.
No server process; the app's lifespan runs in starlette's TestClient portal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from starlette.testclient import TestClient

from service.core.config import Settings
from service.http.app import create_app

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models"
RBN_MODEL, BN_MODEL = "fmnist-resnet20-rbn", "fmnist-resnet20-bn"
SAMPLE = (ROOT / "samples" / "fashion-mnist" / "0_ankle-boot.png").read_bytes()  # 393 bytes, 28x28 grayscale


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names, the last copy
    body: bytes

    def json(self):
        return orjson.loads(self.body)


class App:
    """The app and its TestClient (``client``), plus ``raw``: one ASGI request exactly as given."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.app = client.app
        self.state = client.app.state.service

    def raw(self, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes] = (),
            query: bytes = b"") -> Answer:
        """The headers exactly as listed (repeats kept); the body in these ``http.request`` messages."""
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        messages = messages or [{"type": "http.request", "body": b"", "more_body": False}]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
                 "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query,
                 "headers": [(b"host", b"test"), *headers], "client": ("127.0.0.1", 1234), "server": ("test", 80),
                 "app": self.app}
        sent: list[dict] = []

        async def receive():
            if messages:
                return messages.pop(0)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        async def call():
            await self.app(scope, receive, send)

        self.client.portal.call(call)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
        return Answer(start["status"], headers, body)

    def metrics_text(self) -> str:
        return self.state.metrics.expose().decode()


@contextmanager
def app(**settings) -> Iterator[App]:
    values = {"model_repository": SHIPPED, "providers": "cpu", "max_batch_size": 4, "intra_op_threads": 1, **settings}
    with TestClient(create_app(Settings(**values)), raise_server_exceptions=False) as client:
        client.portal.call(client.app.state.service.wait_loaded)
        assert client.get("/readyz").status_code == 200
        yield App(client)


def metric(text: str, name: str, **labels: str) -> float:
    """One series' value in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0
