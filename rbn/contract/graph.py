"""A bundle's graph run on uint8 images: the contract's normalisation, the graph in chunks, the outputs by name.

Defined once, for serving and evaluation alike: ``service.core.model.Model.predict`` (which bench and the
peers call) and ``rbn evaluate`` (``rbn.experiments.evaluate.OnnxClassifier``) both read a graph through
``GraphRunner.outputs``, so evaluation feeds the graph the tensors the service feeds it and reads the
outputs the service reads, by name (``rbn.contract.bundle.graph_outputs``). It lives in the contract
rather than in service/ because rbn/ never imports the service (rbn/ builds the bundles in models/, which
service/ serves). numpy only: the graph is any callable from a float32 (N, C, H, W) batch to its outputs in
``output_names`` order (``service.core.runtime.ModelRuntime.run``, or an ONNX Runtime session's ``run`` with
the output names and input name bound, as ``rbn.experiments.evaluate`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rbn.contract.preprocess import MeanStd, Normalizer

Graph = Callable[[np.ndarray], Sequence[np.ndarray]]  # float32 (N, C, H, W) -> outputs in output_names order


class GraphRunner:
    """uint8 (N, C, H, W) images -> every graph output by name, run ``chunk`` images at a time."""

    def __init__(self, graph: Graph, output_names: Sequence[str], spec: MeanStd, chunk: int) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        self.graph = graph
        self.output_names = list(output_names)
        self.normalize = Normalizer(spec)
        self.chunk = chunk

    def outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        if pixels.dtype != np.uint8 or pixels.ndim != 4:
            raise ValueError(f"expected uint8 (N, C, H, W) images, got {pixels.dtype} {pixels.shape}")
        if len(pixels) == 0:
            raise ValueError("no images to run")
        parts = [self._run(pixels[i : i + self.chunk]) for i in range(0, len(pixels), self.chunk)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([part[name] for part in parts]) for name in self.output_names}

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.graph(self.normalize(pixels))
        if len(outputs) != len(self.output_names):
            raise ValueError(f"the graph gave {len(outputs)} outputs for the {len(self.output_names)} named "
                             f"{self.output_names}")
        return dict(zip(self.output_names, outputs, strict=True))
