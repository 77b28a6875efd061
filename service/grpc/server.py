"""The gRPC server beside uvicorn, in the same process and event loop, on the same core (state, data
plane, batcher, metrics): ``GrpcFrontEnd`` starts after the HTTP side's start-up and stops before its
shutdown (so in-flight calls finish before the batch queues drain).

It serves ``inference.GRPCInferenceService`` (``service.grpc.servicer``), the standard health service
``grpc.health.v1.Health`` (Kubernetes' gRPC probes: SERVING while the models are loaded and warm and the
server is not draining, for "" and for the inference service) and server reflection (grpcurl, Postman).

SO_REUSEPORT: gRPC sets it by default on Linux, so a second server on a port in use would silently share
it. One process turns it off (a port in use fails the start); with ``--workers N`` every worker binds the
port with it on, and the supervisor first checks that the port is free (``check_port``).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.core.config import Settings
from service.core.dataplane import DataPlane
from service.core.state import ServiceState
from service.grpc import grpc_service_pb2 as pb
from service.grpc import grpc_service_pb2_grpc as pb_grpc
from service.grpc.servicer import SERVICE, InferenceServicer
from service.core.keys import Keys

log = logging.getLogger(__name__)

HEALTH_REFRESH_S = 0.5  # how often the health service reads readiness


class GrpcStartError(RuntimeError):
    """The gRPC port cannot be bound."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def check_port(settings: Settings) -> None:
    """Fail at once (``GrpcStartError``) when the gRPC port is in use: bound without SO_REUSEPORT, then closed.
    For ``--workers``, whose workers bind with SO_REUSEPORT and would otherwise join another server."""
    host = settings.grpc_host or settings.host
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, settings.grpc_port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.bind(where)
    except OSError as exc:
        raise GrpcStartError(f"cannot listen for gRPC on {address(host, settings.grpc_port)}: {exc.strerror or exc}") from None


def _reflection_pool():
    """The inference service's own descriptor pool (``service.grpc.generate``), with the health service added."""
    pool = pb.POOL
    try:
        pool.FindFileByName(health_pb2.DESCRIPTOR.name)
    except KeyError:
        pool.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)
    return pool


class _Health(health.aio.HealthServicer):
    """grpc.health.v1 following readiness: a Check reads it at once, Watch streams see it within HEALTH_REFRESH_S."""

    def __init__(self, state: ServiceState) -> None:
        super().__init__()
        self._state = state

    async def refresh(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self._state.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.set(name, status)  # ignored once enter_graceful_shutdown has run

    async def Check(self, request, context):
        await self.refresh()
        return await super().Check(request, context)


class GrpcFrontEnd:
    """One process's gRPC server. ``start`` binds and serves; ``stop`` stops taking calls and lets those in flight
    finish for up to ``grace`` seconds."""

    def __init__(self, settings: Settings, state: ServiceState, plane: DataPlane, reuse_port: bool = False) -> None:
        self.settings = settings
        self.state = state
        self.plane = plane
        self.reuse_port = reuse_port
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = _Health(state)
        self._watch: asyncio.Task | None = None

    async def start(self) -> None:
        settings = self.settings
        size = settings.grpc_max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", -1),  # answers are bounded by the model's outputs
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        access = Keys.from_settings(settings)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(settings, self.state, self.plane, access), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server,
                                            pool=_reflection_pool())
        where = address(settings.grpc_host or settings.host, settings.grpc_port or 0)
        try:
            port = server.add_insecure_port(where)
        except RuntimeError as exc:
            raise GrpcStartError(f"cannot listen for gRPC on {where}: {exc}") from None
        if not port:
            raise GrpcStartError(f"cannot listen for gRPC on {where}")
        await server.start()
        self._server, self.port = server, port
        await self._health.refresh()
        self._watch = asyncio.get_running_loop().create_task(self._follow(), name="grpc-health")
        log.info("gRPC (Open Inference Protocol) on %s", address(settings.grpc_host or settings.host, port))

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            try:
                await self._health.refresh()
            except Exception:  # noqa: BLE001 - never let the health loop die: the next tick tries again
                log.exception("gRPC health refresh failed")

    async def stop(self, grace: float | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()  # NOT_SERVING for every service, from now on
        await self._server.stop(grace)
        self._server = None
