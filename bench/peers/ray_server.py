"""The RBN bundle as a Ray Serve deployment with ``@serve.batch`` (dynamic request batching).

Run in the Ray venv (bench/peers/run.py does), with the repository on PYTHONPATH:

    .peers/ray/bin/python bench/peers/ray_server.py --port 8000 --replicas 1 --max-batch-size 32 --batch-wait-ms 5

Starts a local Ray instance (``ray.init``, no dashboard: it is not part of serving), Serve's HTTP proxy on
127.0.0.1:``--port`` and ``--replicas`` replicas of one deployment at ``/predict``. The deployment's
``__call__`` reads the raw PNG body from the Starlette request and awaits the ``@serve.batch`` method, which
Ray Serve calls with up to ``--max-batch-size`` bodies gathered for at most ``--batch-wait-ms``
(``batch_wait_timeout_s``); that method runs bench/peers/pipeline.py on them as one batch.
``max_ongoing_requests`` (default 5 in Ray Serve) is raised to ``--max-ongoing``: Ray's performance guide
says a replica with batching needs it at least at the batch size, or batches never fill.
"""

from __future__ import annotations

import argparse
import os
import signal

import ray
from ray import serve
from starlette.requests import Request

from bench.peers.pipeline import Pipeline


def deployment(max_batch_size: int, batch_wait_ms: float, max_ongoing: int, replicas: int, cpus_per_replica: float,
               gpus_per_replica: float):
    """The Serve deployment class for these settings (the decorators take them at class creation)."""

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    class RbnClassifier:
        def __init__(self) -> None:
            self.pipeline = Pipeline()

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_ms / 1000.0)
        async def predict(self, bodies: list[bytes]) -> list[dict]:
            return self.pipeline.predict(bodies)

        async def __call__(self, request: Request) -> dict:
            return await self.predict(await request.body())

    return RbnClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-ongoing", type=int, default=128)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="CPUs Ray schedules actors on")
    parser.add_argument("--gpus-per-replica", type=float, default=0.0,
                        help="GPU mode: Ray hides the GPUs from an actor that reserves none (CUDA_VISIBLE_DEVICES)")
    args = parser.parse_args()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config={"enable_access_log": False})
    cpus = min(1.0, args.num_cpus / args.replicas)  # the replicas must fit the CPUs Ray was given
    app = deployment(args.max_batch_size, args.batch_wait_ms, args.max_ongoing, args.replicas, cpus,
                     args.gpus_per_replica).bind()
    serve.run(app, route_prefix="/predict", logging_config={"enable_access_log": False})
    print("ray serve ready", flush=True)
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # wait for them here instead of dying without shutting Ray down
    signal.sigwait(stop)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
