"""The RBN bundle behind KServe's Python model server (``kserve.ModelServer``), KServe's v1 protocol.

Run in the KServe venv (bench/peers/run.py does), with the repository on PYTHONPATH:

    .peers/kserve/bin/python bench/peers/kserve_server.py --http_port 8080 --workers 1 --max_threads 4

A ``kserve.Model`` whose ``predict`` takes ``{"instances": [{"image": {"b64": ...}}, ...]}`` (KServe's
custom-model example for images; its v2 endpoint cannot carry a PNG, see bench/peers/framing.py), runs
bench/peers/pipeline.py on all the request's images as one batch and answers ``{"predictions": [...]}``,
one rbn-serve answer per image. The server's own
flags are KServe's (its argument parser is this script's parent, as KServe's custom-model docs show):
``--workers`` uvicorn processes, ``--max_threads`` the thread pool a synchronous ``predict`` runs in;
gRPC is off (the benchmark speaks HTTP). KServe's Python server has no request batching of its own
(KServe batches in its Kubernetes agent sidecar, not in this process), so every request is a batch of its images.
"""

from __future__ import annotations

import argparse
import base64

from kserve import Model, ModelServer, model_server

from bench.peers.pipeline import Pipeline

MODEL_NAME = "rbn"


class RbnModel(Model):
    """The pipeline as a KServe model (synchronous ``predict``: KServe runs it in its thread pool)."""

    def __init__(self, name: str, intra_op_threads: int) -> None:
        super().__init__(name)
        self.intra_op_threads = intra_op_threads
        self.pipeline: Pipeline | None = None
        self.load()

    def load(self) -> bool:
        self.pipeline = Pipeline(intra_op_threads=self.intra_op_threads)
        self.ready = True
        return self.ready

    # With --workers > 1 KServe pickles the model into each worker process (spawn): the ONNX Runtime
    # session does not pickle, so each worker builds its own.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "pipeline": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: dict, headers: dict[str, str] | None = None,
                response_headers: dict[str, str] | None = None) -> dict:
        images = [base64.b64decode(instance["image"]["b64"]) for instance in payload["instances"]]
        return {"predictions": [answer["predictions"][0] for answer in self.pipeline.predict(images)]}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__.splitlines()[0])
    parser.add_argument("--intra-op-threads", type=int, default=0, help="ONNX Runtime threads (0: the service's default)")
    args, _ = parser.parse_known_args()
    model = RbnModel(MODEL_NAME, args.intra_op_threads)
    ModelServer(http_port=args.http_port, workers=args.workers, max_threads=args.max_threads, enable_grpc=False,
                enable_latency_logging=False, enable_docs_url=False).start([model])


if __name__ == "__main__":
    main()
