"""The RBN bundle behind Triton Inference Server through PyTriton (``nvidia-pytriton``), dynamic batching on.

Run in the PyTriton venv (bench/peers/run.py does), with the repository on PYTHONPATH:

    .peers/pytriton/bin/python bench/peers/pytriton_server.py --port 8000 --max-batch-size 32 \\
        --queue-delay-us 2000 --instances 1

PyTriton starts the Triton server its wheel bundles (HTTP on 127.0.0.1:``--port``, gRPC and metrics on
free ports) and binds one model, ``rbn``: input ``image`` (BYTES, one PNG per batch row), output
``answer`` (BYTES, the rbn-serve JSON answer per row). Triton's dynamic batcher gathers rows up to
``--max-batch-size`` waiting at most ``--queue-delay-us`` (``max_queue_delay_microseconds``); the
``@batch``-decorated function runs bench/peers/pipeline.py on the batch. ``--instances`` binds that many
copies of the function (PyTriton's documented way to get model instances, each its own Python process
side of the Triton Python backend), each with its own ONNX Runtime session.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.peers.framing import OIP_INPUT, OIP_OUTPUT
from bench.peers.pipeline import Pipeline
from harness.procs import free_port

MODEL_NAME = "rbn"


def make_infer(pipeline: Pipeline):
    """One bound inference function (Triton's batch in, one answer per row out)."""

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        images = [bytes(row[0]) for row in inputs[OIP_INPUT]]
        answers = pipeline.predict(images)
        return {OIP_OUTPUT: np.array([[json.dumps(a).encode()] for a in answers], dtype=np.object_)}

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=1)
    args = parser.parse_args()
    config = TritonConfig(http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
                          grpc_port=free_port(), metrics_port=free_port(), log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[make_infer(Pipeline()) for _ in range(args.instances)],
            inputs=[Tensor(name=OIP_INPUT, dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name=OIP_OUTPUT, dtype=np.bytes_, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
