"""rbn.contract.graph.GraphRunner, the one path from uint8 pixels to a graph's named outputs (serving's
Model.predict and evaluation's OnnxClassifier): normalisation, chunking, names, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from rbn.contract.bundle import InputSpec
from rbn.contract.graph import GraphRunner
from rbn.contract.preprocess import Normalizer

SPEC = InputSpec(channels=3, height=2, width=2, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])


class Recording:
    """A two-output "graph": per image the sum of its normalised pixels, and the pixels themselves."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert x.dtype == np.float32
        self.batches.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True), x.reshape(len(x), -1)


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 3, 2, 2)).astype(np.uint8)


@pytest.mark.parametrize("n, chunk, batches", [(1, 4, [1]), (4, 4, [4]), (9, 4, [4, 4, 1]), (3, 1, [1, 1, 1])])
def test_chunks_are_normalised_run_and_joined_by_name(n, chunk, batches):
    graph = Recording()
    out = GraphRunner(graph, ["total", "flat"], SPEC, chunk).outputs(pixels(n))
    assert graph.batches == batches
    expected = Normalizer(SPEC)(pixels(n)).reshape(n, -1)
    np.testing.assert_array_equal(out["flat"], expected)
    np.testing.assert_allclose(out["total"][:, 0], expected.sum(axis=1), rtol=1e-6)
    assert list(out) == ["total", "flat"]


def test_bad_input_and_a_graph_that_disagrees_with_its_names_are_refused():
    runner = GraphRunner(Recording(), ["total", "flat"], SPEC, 4)
    with pytest.raises(ValueError, match="uint8 \\(N, C, H, W\\)"):
        runner.outputs(pixels(2).astype(np.float32))
    with pytest.raises(ValueError, match="uint8 \\(N, C, H, W\\)"):
        runner.outputs(pixels(2)[:, 0])
    with pytest.raises(ValueError, match="no images"):
        runner.outputs(pixels(0))
    with pytest.raises(ValueError, match="2 outputs for the 3 named"):
        GraphRunner(Recording(), ["a", "b", "c"], SPEC, 4).outputs(pixels(1))
    with pytest.raises(ValueError, match="chunk"):
        GraphRunner(Recording(), ["total"], SPEC, 0)
