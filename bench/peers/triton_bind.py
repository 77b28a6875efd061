"""What both PyTriton peers share: Triton's batching flags and one model bound with them, then served.

``pytriton_server.py`` (PNG bytes in, rbn-serve's JSON answer out) and ``pytriton_tensor_server.py`` (the
Open Inference Protocol tensor in, the graph's outputs out) differ in the function they bind and its
tensors; the dynamic batcher, the instances and the server's addresses are set here, once. Runs in the
PyTriton venv (bench/peers/venvs.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from harness.procs import free_port


def add_batching_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-batch-size, --queue-delay-us and --instances (rbn-serve's defaults: 32, 2000 us, 1)."""
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=1)


def serve(model_name: str, make_infer: Callable[[], Callable], inputs: Sequence[Tensor], outputs: Sequence[Tensor],
          args: argparse.Namespace, http_port: int, grpc_port: int | None = None) -> None:
    """Start Triton on 127.0.0.1 (gRPC on ``grpc_port`` or a free one, metrics on a free one), bind
    ``args.instances`` functions from ``make_infer`` as ``model_name`` behind the dynamic batcher, serve until killed."""
    config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                          grpc_port=grpc_port or free_port(), metrics_port=free_port(), log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=model_name,
            infer_func=[make_infer() for _ in range(args.instances)],
            inputs=list(inputs),
            outputs=list(outputs),
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)),
            strict=False,
        )
        triton.serve()
