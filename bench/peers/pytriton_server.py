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
from pytriton.model_config import Tensor

from bench.peers.framing import OIP_INPUT, OIP_OUTPUT
from bench.peers.pipeline import Pipeline
from bench.peers.triton_bind import add_batching_arguments, serve

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
    add_batching_arguments(parser)
    args = parser.parse_args()
    serve(MODEL_NAME, lambda: make_infer(Pipeline()), [Tensor(name=OIP_INPUT, dtype=np.bytes_, shape=(1,))],
          [Tensor(name=OIP_OUTPUT, dtype=np.bytes_, shape=(1,))], args, http_port=args.port)


if __name__ == "__main__":
    main()
