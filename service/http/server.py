"""Run the app under uvicorn with a graceful SIGTERM: readiness false, optional drain delay while
still serving, then uvicorn stops accepting, finishes in-flight requests, and the lifespan drains
the batch queues. Exits 0 after a graceful stop, 1 when it cannot start (one ``cannot start: ...``
line: port in use, address missing, key file unreadable or unusable, no servable bundle) or model
loading failed. The HTTP protocol is uvicorn's httptools one with a read deadline and a
connection cap (``service.http.connections``); idle keep-alive connections close after
``keep_alive_timeout_s``."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Protocol

import uvicorn

from service.http.app import create_app
from service.core.keys import KeyConfigError
from service.core.config import Settings
from service.core.dataplane import DataPlane
from service.http.connections import HeadLimits, guarded_protocol
from service.core.metrics import Metrics
from service.http.middleware import UNMATCHED
from service.http.workers import CannotStart, Supervisor, listen, say_cannot_start
from service.core.state import ServiceState, StartupError

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)


class SideServer(Protocol):
    """Another front end served in the same process and event loop, on the same core (the gRPC one,
    ``service.grpc.server``): started after the HTTP start-up, stopped before the HTTP shutdown drains the queues."""

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


SideFactory = Callable[[Settings, ServiceState, DataPlane], SideServer]


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState, drain_delay_s: float,
                 side: SideServer | None = None) -> None:
        super().__init__(config)
        self.state = state
        self.drain_delay_s = drain_delay_s
        self.side = side
        self._draining = False
        state.on_fatal = self._fatal
        self.failed = False
        self.fatal: str | None = None  # why the models could not be loaded: the server could not start

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.side is not None and not self.should_exit:
            try:
                await self.side.start()
            except Exception as exc:  # e.g. its port is in use: the server does not run half-started
                log.critical("cannot start: %s", exc)
                self.failed = True
                self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.side is not None:  # its calls in flight finish while the batchers still run
            await self.side.stop(self.config.timeout_graceful_shutdown)
        await super().shutdown(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: stop waiting
            if sig == signal.SIGINT or self.should_exit:
                self.force_exit = True
            return
        self._draining = True
        self.state.begin_drain()
        # SIGTERM comes from an orchestrator (Kubernetes, docker stop, systemd): keep serving while its
        # balancer notices /readyz is false. SIGINT is Ctrl-C at a terminal: nobody routes to it, stop now.
        delay = self.drain_delay_s if sig != signal.SIGINT else 0.0
        log.info("signal %s: draining (delay %.1f s, then up to %.0f s for in-flight requests)",
                 signal.Signals(sig).name, delay, self.config.timeout_graceful_shutdown or 0)
        if delay > 0:
            timer = threading.Timer(delay, self._stop_accepting)
            timer.daemon = True
            timer.start()
        else:
            self._stop_accepting()

    def _stop_accepting(self) -> None:
        self.should_exit = True

    def _fatal(self, message: str) -> None:
        self.failed = True
        self.fatal = message
        self.should_exit = True


def serve(settings: Settings, side: SideFactory | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code. With ``workers`` > 1 this process
    binds the port and supervises that many worker processes (``service.http.workers``)."""
    if settings.workers > 1:
        return Supervisor(settings, partial(serve_worker, side=side)).run()
    try:
        # Bound before the app exists: a port in use or a missing address fails here, with no thread
        # started (uvicorn binding after the lifespan started the batchers ended in an abort, exit 134).
        sock = listen(settings.host, settings.port, settings.listen_backlog)
    except CannotStart as exc:
        log.critical("cannot start: %s", exc)
        return 1
    host, port = sock.getsockname()[:2]
    log.info("listening on http://%s:%d (answers once the models are loaded: GET /readyz is 200)", host, port)
    try:
        return serve_worker(settings, sock, side=side)
    except CannotStart as exc:
        log.critical("cannot start: %s", exc)
        return 1
    finally:
        sock.close()


def serve_worker(settings: Settings, sock: socket.socket, metrics: Metrics | None = None,
                 side: SideFactory | None = None) -> int:
    """One server process on ``sock`` (bound by ``serve`` or by the supervisor of ``--workers``);
    ``CannotStart`` when the keys or the bundles are unusable."""
    try:
        app = create_app(settings, metrics)
    except KeyConfigError as exc:
        raise CannotStart(str(exc)) from None
    metrics = app.state.service.metrics
    try:
        app.state.service.prepare()
    except StartupError as exc:
        raise CannotStart(str(exc)) from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    config = uvicorn.Config(
        app if listening else start_when_warm(app, app.state.service),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        lifespan="on",
        backlog=settings.listen_backlog,
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type] # call_later takes a float
        http=guarded_protocol(settings.read_timeout_s, settings.max_connections, settings.retry_after_s,
                              lambda reason: metrics.rejected.labels(UNMATCHED, reason).inc(),
                              HeadLimits(settings.max_header_bytes, settings.max_header_count, settings.max_url_bytes),
                              settings.write_timeout_s, forms=app.state.error_forms),
    )
    app.state.service.on_ready = settle_heap
    state = app.state.service
    server = DrainingServer(config, state, settings.drain_delay_s,
                            None if side is None else side(settings, state, app.state.plane))
    server.run(sockets=[sock])
    if server.fatal is not None:
        say_cannot_start(server.fatal, log)  # one line (with --workers, from the first worker only)
    code = 1 if server.failed or not server.started else 0
    unfinished = app.state.service.unfinished()
    if unfinished:
        # A thread still inside ONNX Runtime (a hung inference, a warm-up) would be torn down mid-call
        # by the interpreter's exit, which aborts the process: leave at once, the log flushed.
        log.warning("exiting with work still running: %s", "; ".join(unfinished))
        logging.shutdown()
        os._exit(code)
    return code


def start_when_warm(app, state: ServiceState):
    """``app`` whose start-up (ASGI lifespan) ends only once the models are loaded and warm (or failed).

    uvicorn listens on its socket when the start-up ends: a worker of ``--workers`` whose socket is not
    yet listening (``service.http.workers.worker_socket``) so takes no connection while it loads. Requests
    pass through with one type check (a lone server, listening from the start, runs ``app`` itself)."""

    async def gated(scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_when_warm(message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await state.wait_loaded()
            await send(message)

        await app(scope, receive, send_when_warm)

    return gated


def settle_heap() -> None:
    """Once the models are loaded: take the ~70k objects of imports, sessions and metadata out of
    the cyclic GC's sight, and collect the young generation less often.

    Measured under load on the 2-core VM (gc.callbacks timing, wrk at concurrency 16): without
    this a full collection (~60 ms, on the event loop) ran about once a second and the GC took
    ~15% of the event loop's CPU; with it, none in 10 s. A request's objects are freed by
    reference counting; the higher threshold only delays collecting the rare cycle.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
