"""ONNX Runtime sessions: providers, the graph checked against model.json, warm-up."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime
import pytest
from tests.service.svc_support import BN, RBN

from rbn.contract.bundle import BundleError, read_meta
from service.core.repository import Bundle, scan
from service.core.runtime import ModelRuntime, ProviderError, default_threads, provider_list


def test_session_runs_and_warms_up(bundle_repo):
    meta = read_meta(bundle_repo / RBN)
    runtime = ModelRuntime(meta, Bundle(meta, bundle_repo / RBN).onnx_file, "cpu")
    assert runtime.provider == "cpu" and runtime.providers == ["CPUExecutionProvider"]
    assert runtime.session._enable_fallback is False  # a provider failure in run() is an error, not a silent CPU run
    assert runtime.warm_up(4) > 0
    logits, stats, channels, score = runtime.run(np.zeros((3, 1, 28, 28), np.float32))
    assert runtime.output_names == ["logits", "rbn_stats", "rbn_channel_stats", "ood_score"]
    assert (logits.shape, stats.shape, channels.shape, score.shape) == ((3, 10), (3, 21), (3, 784), (3, 1))
    assert 1 <= default_threads() <= 8


class Slowed:
    """A session whose every run takes ``delay_s`` longer (to make one side of the comparison lose)."""

    def __init__(self, session, delay_s: float) -> None:
        self.session, self.delay_s = session, delay_s

    def run(self, *args):
        time.sleep(self.delay_s)
        return self.session.run(*args)


def test_single_images_run_on_one_thread_only_when_measured_faster(bundle_repo):
    meta = read_meta(bundle_repo / RBN)
    onnx_file = Bundle(meta, bundle_repo / RBN).onnx_file
    assert ModelRuntime(meta, onnx_file, "cpu", intra_op_threads=1).single_image_threads is None  # nothing to split
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)

    runtime = ModelRuntime(meta, onnx_file, "cpu", intra_op_threads=2)
    assert runtime.single_image_threads == 1
    single = runtime.run(x[:1])
    shared = runtime.session.run(runtime.output_names, {runtime.input_name: x[:1]})
    batched = runtime.run(x)
    for one, other, in_batch in zip(single, shared, batched, strict=True):
        np.testing.assert_allclose(one, other, rtol=1e-5, atol=1e-6)  # the same answer from either session
        np.testing.assert_allclose(one, in_batch[:1], rtol=1e-4, atol=1e-5)

    runtime._single = Slowed(runtime._single, 0.005)  # one thread made slower: warm-up drops it
    runtime.warm_up(2)
    assert runtime.single_image_threads is None and runtime._single is None
    np.testing.assert_allclose(runtime.run(x[:1])[0], single[0], rtol=1e-5, atol=1e-6)

    runtime = ModelRuntime(meta, onnx_file, "cpu", intra_op_threads=2)
    runtime.session = Slowed(runtime.session, 0.005)  # the shared session made slower: warm-up keeps one thread
    runtime.warm_up(2)
    assert runtime.single_image_threads == 1


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 2), (3, 2), (4, 3), (16, 8), (64, 8)])
def test_default_thread_count(cpus, threads):
    assert default_threads(cpus) == threads


def test_metadata_that_disagrees_with_the_graph_is_refused(bundle_repo):
    meta = read_meta(bundle_repo / RBN)
    onnx_file = Bundle(meta, bundle_repo / RBN).onnx_file
    wrong_labels = meta.model_copy(update={"labels": meta.labels + ["extra"]})
    with pytest.raises(BundleError, match="logits"):
        ModelRuntime(wrong_labels, onnx_file, "cpu")
    wrong_input = meta.model_copy(update={"input": meta.input.model_copy(update={"height": 32})})
    with pytest.raises(BundleError, match="input"):
        ModelRuntime(wrong_input, onnx_file, "cpu")


def test_unloadable_graph_is_a_bundle_error(bundle_repo, tmp_path):
    meta = read_meta(bundle_repo / RBN)
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="cannot load"):
        ModelRuntime(meta, junk, "cpu")


def test_provider_choice():
    assert provider_list("cpu") == ["CPUExecutionProvider"]
    auto = provider_list("auto")
    assert auto[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert auto == ["CPUExecutionProvider"]
        with pytest.raises(ProviderError, match="providers=cuda"):
            provider_list("cuda")


def test_scan_reports_bad_bundles(served_repo):
    found = scan(served_repo)
    assert [b.name for b in found.bundles] == [BN, RBN]
    assert list(found.errors) == ["test-broken"]


def test_load_all_skips_any_failure_but_provider_errors(bundle_repo, monkeypatch):
    from service.core import model
    from service.core.config import Settings
    from service.core.decoding import Decoder
    from service.core.metrics import Metrics

    bundles = scan(bundle_repo).bundles

    def failing(error: Exception):
        def load_model(bundle, settings, metrics, decoder):
            raise error
        return load_model

    settings = Settings(model_repository=bundle_repo, providers="cpu")
    decoder = Decoder(settings)
    monkeypatch.setattr(model, "load_model", failing(RuntimeError("CUDA out of memory\nmore detail")))
    errors: dict[str, str] = {}
    assert model.load_all(bundles, settings, Metrics(), decoder, errors) == {}
    assert errors == {b.name: f"{b.name}: RuntimeError: CUDA out of memory" for b in bundles}
    monkeypatch.setattr(model, "load_model", failing(ProviderError("providers=cuda but ...")))
    with pytest.raises(ProviderError):
        model.load_all(bundles, settings, Metrics(), decoder, {})
    decoder.shutdown()
