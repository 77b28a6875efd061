"""The shipped RBN bundle's graph behind Triton Inference Server through PyTriton, as a *tensor* model: the
Open Inference Protocol peer of rbn-serve's /v2 and gRPC ModelInfer (bench/grpc_load.py --pytriton).

Run in the PyTriton venv (bench/peers/venvs.py makes it; grpc_load.py does), with the repository on PYTHONPATH:

    .peers/pytriton/bin/python bench/peers/pytriton_tensor_server.py --http-port 8000 --grpc-port 8001 \\
        --max-batch-size 32 --queue-delay-us 2000 --instances 1

One model under the bundle's own name: input ``input`` (FP32, [-1, 1, 28, 28]) and the graph's four outputs
(FP32), Triton's dynamic batcher on (``--max-batch-size``, ``--queue-delay-us``: rbn-serve's defaults are 32
and 2000), each instance an ONNX Runtime session of the bundle's model.onnx with ``--threads`` threads. No
preprocessing: the same tensor in, the same graph, the same outputs out as rbn-serve's ModelInfer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import Tensor

from bench.peers.triton_bind import add_batching_arguments, serve

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fmnist-resnet20-rbn"
GRAPH = ROOT / "models" / MODEL / "1" / "model.onnx"


def output_widths() -> dict[str, int]:
    """Each graph output's width (the axis after the batch), read from the graph itself."""
    session = ort.InferenceSession(str(GRAPH), providers=["CPUExecutionProvider"])
    return {o.name: o.shape[1] for o in session.get_outputs()}


def make_infer(threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(GRAPH), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    @batch
    def infer(input: np.ndarray) -> dict[str, np.ndarray]:  # noqa: A002 - the tensor's name in the protocol
        return dict(zip(names, session.run(names, {"input": input.astype(np.float32, copy=False)}), strict=True))

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    add_batching_arguments(parser)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    outputs = [Tensor(name=name, dtype=np.float32, shape=(size,)) for name, size in output_widths().items()]
    serve(MODEL, lambda: make_infer(args.threads), [Tensor(name="input", dtype=np.float32, shape=(1, 28, 28))],
          outputs, args, http_port=args.http_port, grpc_port=args.grpc_port)


if __name__ == "__main__":
    main()
