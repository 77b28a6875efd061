"""gRPC ModelInfer against the REST binary-tensor path on the same server, closed loop at fixed concurrency.

    python bench/grpc_load.py --concurrency 16,64 --seconds 10 --rounds 3 [--workers 2] [--out FILE]

Starts ``rbn-serve serve --grpc-port`` on the shipped bundles (CPU) and drives it with Triton's own
clients, as perf_analyzer's default mode does (closed loop: ``C`` requests in flight, each sent as soon
as the previous one answered; one image per request; the same FP32 tensor every time, the same for both
protocols; every output requested):

- ``grpc``: ``tritonclient.grpc.aio`` -> ``/inference.GRPCInferenceService/ModelInfer`` (raw_input_contents,
  raw_output_contents);
- ``rest``: ``POST /v2/models/<name>/infer`` with the binary tensor extension (the tensor and every output
  as raw bytes, a JSON header in front), the bytes tritonclient.http sends, from a minimal asyncio HTTP/1.1
  client on keep-alive connections: tritonclient.http itself (gevent or aiohttp) spends ~11 ms per call at
  concurrency 1 where the server needs ~3, so it would measure the client;
- ``rest-tritonclient`` (``--tritonclient-http``): the same through ``tritonclient.http.aio``, for reference;
- ``pytriton-grpc`` (``--pytriton``): the same gRPC client against Triton Inference Server through PyTriton
  serving the same graph as a tensor model (bench/peers/pytriton_tensor_server.py: dynamic batching with
  rbn-serve's defaults, batch 32 and 2 ms, one instance, ONNX Runtime with as many threads as rbn-serve's
  default), in its own venv (``.peers/pytriton``, made by bench/peers/venvs.py when missing).

Each measurement is a fresh client process (``--client-processes`` of them, the concurrency split between
them) running for ``--seconds`` after a one-second warm-up; the protocols alternate within every round and
swap order from one round to the next, so drift on a shared machine hits both. Reported per protocol and
concurrency: the median over rounds of requests/s and of the p50 and p99 latency, and the gRPC/REST ratio
of the medians. The client runs on the same machine as the server: on a small VM it takes a share of the
cores, the same share for both protocols.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import emit, header, percentiles_ms, progress  # noqa: E402
from harness.procs import ServerProcess, free_port  # noqa: E402

MODEL = "fmnist-resnet20-rbn"
OUTPUTS = ("logits", "rbn_stats", "rbn_channel_stats", "ood_score")
PROTOCOLS = ("grpc", "rest")
CLIENTS = ("grpc", "rest", "rest-tritonclient", "pytriton-grpc")


def tensor():
    import numpy as np

    return np.random.default_rng(29).standard_normal((1, 1, 28, 28)).astype(np.float32)


# --- the client (one process per measurement) ---------------------------------------------------------------
class RawRest:
    """A keep-alive HTTP/1.1 connection sending one prepared /v2 binary-tensor request, reading the answer."""

    def __init__(self, target: str, x) -> None:
        self.host, self.port = target.rsplit(":", 1)
        head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in OUTPUTS]}).encode()
        body = head + x.tobytes()
        self.request = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {target}\r\n"
                        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(head)}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.reader = self.writer = None

    async def infer(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _closed_loop(protocol: str, target: str, concurrency: int, seconds: float, warmup: float) -> dict:
    x = tensor()
    if protocol == "rest":
        connections = [RawRest(target, x) for _ in range(concurrency)]
    elif protocol in ("grpc", "pytriton-grpc"):
        import tritonclient.grpc.aio as client_lib

        client = client_lib.InferenceServerClient(target)
        inp = client_lib.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outputs = [client_lib.InferRequestedOutput(name) for name in OUTPUTS]
    else:
        import tritonclient.http.aio as client_lib

        client = client_lib.InferenceServerClient(target, conn_limit=concurrency)
        inp = client_lib.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        outputs = [client_lib.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds

    async def worker(index: int) -> None:
        nonlocal errors
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            try:
                if protocol == "rest":
                    await connections[index].infer()
                else:
                    answer = await client.infer(MODEL, [inp], outputs=outputs)
                    answer.as_numpy("logits")
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
                continue
            done = time.perf_counter()
            if sent >= measure_from and done <= end:
                latencies.append(done - sent)

    cpu = time.process_time()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu = time.process_time() - cpu
    for closing in connections if protocol == "rest" else [client]:
        await closing.close()
    return {"count": len(latencies), "seconds": seconds, "errors": errors, "latencies": latencies,
            "client_cpu": cpu / (warmup + seconds)}


def client_main(args: argparse.Namespace) -> None:
    result = asyncio.run(_closed_loop(args.client, args.target, args.concurrency, args.seconds, args.warmup))
    print(json.dumps(result))


# --- the harness --------------------------------------------------------------------------------------------
def measure(protocol: str, targets: dict[str, str], concurrency: int, seconds: float, processes: int) -> dict:
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, __file__, "--client", protocol, "--target", targets[protocol],
                               "--concurrency", str(share), "--seconds", str(seconds), "--warmup", "1"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for share in shares if share]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"{protocol} client exited {proc.returncode}")
        results.append(json.loads(out))
    latencies = [v for r in results for v in r["latencies"]]
    p50, p99 = percentiles_ms(latencies, (50, 99))
    return {"rps": sum(r["count"] for r in results) / seconds, "p50": p50, "p99": p99,
            "errors": sum(r["errors"] for r in results), "client_cpu": sum(r["client_cpu"] for r in results)}


def start_pytriton(threads: int) -> tuple[ServerProcess, str]:
    """PyTriton serving the bundle's graph as a tensor model; (its process, its gRPC target)."""
    import os

    from bench.peers import venvs
    from harness.procs import http
    from service.core.runtime import available_cpus, default_threads

    python = venvs.ensure("pytriton", ROOT / ".peers", log=progress)
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(python), str(ROOT / "bench/peers/pytriton_tensor_server.py"), "--http-port", str(http_port),
            "--grpc-port", str(grpc_port), "--threads", str(threads or default_threads(available_cpus()))]
    peer = ServerProcess(args, http_port, Path("/tmp") / f"pytriton-{http_port}.log", name="pytriton", cwd=ROOT, env=env)

    def ready() -> bool:
        try:
            return http("GET", f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        peer.wait_until(ready, 300)
    except (RuntimeError, TimeoutError):
        peer.stop()
        raise
    return peer, f"127.0.0.1:{grpc_port}"


def per_round(points: list[dict]) -> str:
    return ", ".join(f"{p['rps']:.0f}" for p in points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="rbn-serve --workers")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--out", default=None)
    # client mode (internal)
    parser.add_argument("--tritonclient-http", action="store_true", help="also measure REST through tritonclient.http.aio")
    parser.add_argument("--pytriton", action="store_true", help="also measure PyTriton's gRPC endpoint on the same graph")
    parser.add_argument("--pytriton-threads", type=int, default=0, help="ONNX Runtime threads per PyTriton instance "
                        "(0: rbn-serve's default for this machine)")
    parser.add_argument("--client", choices=CLIENTS)
    parser.add_argument("--target")
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    if args.client:
        args.concurrency = int(args.concurrency)
        client_main(args)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    http_port, grpc_port = free_port(), free_port()
    log = Path("/tmp") / f"grpc_load-{http_port}.log"
    server = ServerProcess([sys.executable, "-m", "service", "serve", "--model-repository", str(ROOT / "models"),
                            "--providers", "cpu", "--port", str(http_port), "--grpc-port", str(grpc_port),
                            "--workers", str(args.workers)], http_port, log, cwd=ROOT).wait_ready()
    targets = {"grpc": f"127.0.0.1:{grpc_port}", "rest": f"127.0.0.1:{http_port}", "rest-tritonclient": f"127.0.0.1:{http_port}"}
    protocols = PROTOCOLS + (("rest-tritonclient",) if args.tritonclient_http else ())
    peer = None
    if args.pytriton:
        peer, targets["pytriton-grpc"] = start_pytriton(args.pytriton_threads)
        protocols += ("pytriton-grpc",)
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        for rnd in range(args.rounds):
            for concurrency in levels:
                order = protocols if rnd % 2 == 0 else protocols[::-1]
                for protocol in order:
                    point = measure(protocol, targets, concurrency, args.seconds, args.client_processes)
                    runs.setdefault((protocol, concurrency), []).append(point)
                    progress(f"round {rnd + 1}: {protocol} c={concurrency}: {point['rps']:.0f} req/s, "
                             f"p50 {point['p50']:.2f} ms, p99 {point['p99']:.2f} ms, errors {point['errors']}, "
                             f"client CPU {point['client_cpu']:.2f} cores")
    finally:
        server.stop()
        if peer is not None:
            peer.stop()
    lines = header(f"gRPC ModelInfer vs REST binary tensors ({MODEL}, 1 image per request, all four outputs)",
                   ("onnxruntime", "grpcio", "tritonclient"),
                   [f"rbn-serve --workers {args.workers}; {args.rounds} rounds x {args.seconds:g} s per point, "
                    f"protocols interleaved; {args.client_processes} client process(es)"])
    lines += ["", "| concurrency | protocol | req/s (median) | p50 ms | p99 ms | client CPU (cores) | errors | req/s per round |",
              "|---|---|---|---|---|---|---|---|"]
    for concurrency in levels:
        medians = {}
        for protocol in protocols:
            points = runs[(protocol, concurrency)]
            medians[protocol] = statistics.median(p["rps"] for p in points)
            lines.append(f"| {concurrency} | {protocol} | {medians[protocol]:.0f} | "
                         f"{statistics.median(p['p50'] for p in points):.2f} | "
                         f"{statistics.median(p['p99'] for p in points):.2f} | "
                         f"{statistics.median(p['client_cpu'] for p in points):.2f} | {sum(p['errors'] for p in points)} | "
                         f"{per_round(points)} |")
        lines.append(f"| {concurrency} | **gRPC / REST** | **{medians['grpc'] / medians['rest']:.2f}x** | | | | | |")
        if "pytriton-grpc" in medians:
            lines.append(f"| {concurrency} | **gRPC / PyTriton gRPC** | **{medians['grpc'] / medians['pytriton-grpc']:.2f}x** "
                         "| | | | | |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
