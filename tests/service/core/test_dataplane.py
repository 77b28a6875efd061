"""The data plane in process (no server, no torch): it routes each request to its model's
preprocess -> infer -> describe, and the answers it assembles are what the closed response models
declare, with exactly the values the model's own steps give."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from tests.service.inproc import BN_MODEL, RBN_MODEL, ROOT, in_process
from PIL import Image

from service.http.routes.schemas.inference import AbResponse, PredictResponse
from service.core.dataplane import CorruptionRequest
from service.core.decoding import Upload
from service.core.errors import CorruptImage, NoBaseline
from service.core.predictions import softmax

SAMPLES = ROOT / "samples" / "fashion-mnist"
ENTRIES = json.loads((SAMPLES / "labels.json").read_text())[:4]


@pytest.fixture(scope="module")
def service():
    with in_process(shadow_fraction=1.0) as svc:
        yield svc


def sample(i: int) -> bytes:
    return (SAMPLES / ENTRIES[i]["file"]).read_bytes()


def expected_probs(svc, model_name: str, data: list[bytes]) -> np.ndarray:
    """What the model's own runtime gives for these files, without the batcher or the data plane."""
    model = svc.state.models[model_name]
    x = svc.run(model.preprocess([Upload(d) for d in data]))
    return softmax(model.runtime.run(x)[0])


def test_predict_answers_what_the_model_computes(service):
    data = [sample(0), sample(1)]
    labels = service.state.models[RBN_MODEL].meta.labels

    def counts() -> dict[str, float]:
        return {label: service.counter("rbn_serve_predictions_total", model=RBN_MODEL, label=label) for label in labels}

    before = counts()
    answer = service.run(service.plane.predict(service.state.models[RBN_MODEL],
                                               [Upload(d, f"f{i}.png") for i, d in enumerate(data)], top_k=2)).to_json()
    checked = PredictResponse.model_validate(answer)  # closed: an unknown or renamed key fails here
    probs = expected_probs(service, RBN_MODEL, data)
    assert checked.model.name == RBN_MODEL
    for i, prediction in enumerate(checked.predictions):
        best = np.argsort(-probs[i], kind="stable")[:2].tolist()
        assert prediction.index == best[0] and prediction.label == labels[best[0]]
        assert [t.index for t in prediction.top_k] == best
        assert prediction.probability == pytest.approx(float(probs[i, best[0]]), abs=1e-6)
        assert prediction.filename == f"f{i}.png"
        assert prediction.ood.flag == (prediction.ood.score > prediction.ood.threshold)
    moved = {label: n - before[label] for label, n in counts().items() if n != before[label]}
    expected: dict[str, float] = {}
    for prediction in checked.predictions:
        expected[prediction.label] = expected.get(prediction.label, 0) + 1
    assert moved == expected


def test_top_k_is_capped_at_the_number_of_classes(service):
    answer = service.run(service.plane.predict(service.state.models[BN_MODEL], [Upload(sample(2))], top_k=1000)).to_json()
    assert len(answer["predictions"][0]["top_k"]) == 10
    assert "filename" not in answer["predictions"][0]  # raw bodies have no file name


def test_shadow_runs_every_predict_on_the_baseline_when_the_fraction_is_one(service):
    def shadowed() -> float:
        return sum(service.counter("rbn_serve_shadow_comparisons_total", model=RBN_MODEL, baseline=BN_MODEL, agree=a)
                   for a in ("true", "false"))

    before = shadowed()
    service.run(service.plane.predict(service.state.models[RBN_MODEL], [Upload(sample(0)), Upload(sample(3))], 1))
    service.run(service.state.shadow.stop())  # let the off-path runs finish
    assert shadowed() == before + 2


def test_a_bad_file_is_named_in_the_error(service):
    with pytest.raises(CorruptImage, match=r"^file 1 \(b.png\): "):
        service.run(service.plane.predict(service.state.models[RBN_MODEL],
                                          [Upload(sample(0), "a.png"), Upload(sample(1)[:60], "b.png")], 1))


def test_a_bad_large_file_decoded_in_the_pool_is_named_too(service):
    truncated = sample(1)[:60] + bytes(64 * 1024)  # over inline_body_bytes: opened in a decode thread
    with pytest.raises(CorruptImage, match=r"^file 1 \(big.png\): "):
        service.run(service.plane.predict(service.state.models[RBN_MODEL],
                                          [Upload(sample(0), "a.png"), Upload(truncated, "big.png")], 1))


def test_large_images_decode_in_the_pool_to_the_same_tensor(service):
    """Above inline_decode_pixels an image is resized in a decode thread; the pixels are the same."""
    model = service.state.models[RBN_MODEL]
    big = Image.open(io.BytesIO(sample(0))).resize((300, 300))
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    pooled = service.run(model.decode([Upload(buffer.getvalue())]))
    decoder = service.state.decoder
    inline, decoder.inline_pixels = decoder.inline_pixels, 10**9
    try:
        inline_pixels = service.run(model.decode([Upload(buffer.getvalue())]))
    finally:
        decoder.inline_pixels = inline
    assert np.array_equal(pooled, inline_pixels)


def test_ab_compares_both_arms_on_the_same_corrupted_input(service):
    model = service.state.models[RBN_MODEL]
    label = ENTRIES[1]["label"]
    shift = CorruptionRequest("gaussian_noise", 4, 7)
    labelled = service.counter("rbn_serve_ab_labelled_total", model=RBN_MODEL, corruption="gaussian_noise", severity="4")
    answer = AbResponse.model_validate(service.run(service.plane.ab(model, [Upload(sample(1))], shift, label, 3)).to_json())
    result = answer.results[0]
    rbn, bn = result.arms.rbn, result.arms.baseline
    assert (rbn.model, bn.model) == (RBN_MODEL, BN_MODEL)
    assert result.agree == (rbn.index == bn.index)
    assert result.correct == {"rbn": rbn.index == label, "baseline": bn.index == label}
    expected = {(True, True): "both", (True, False): "rbn", (False, True): "baseline", (False, False): "neither"}
    assert result.winner == expected[(rbn.index == label, bn.index == label)]
    assert answer.corruption.model_dump() == {"name": "gaussian_noise", "severity": 4, "seed": 7}
    assert answer.label.name == ENTRIES[1]["label_name"]
    assert service.counter("rbn_serve_ab_labelled_total", model=RBN_MODEL, corruption="gaussian_noise",
                           severity="4") == labelled + 1
    again = service.run(service.plane.ab(model, [Upload(sample(1))], shift, label, 3)).to_json()
    assert again["results"][0]["l1_distance"] == result.l1_distance  # the corruption is deterministic


def test_ab_needs_a_baseline(service):
    with pytest.raises(NoBaseline, match=BN_MODEL):
        service.run(service.plane.ab(service.state.models[BN_MODEL], [Upload(sample(0))], None, None, 1))


def test_infer_tensor_counts_predictions(service):
    model = service.state.models[BN_MODEL]
    x = service.run(model.preprocess([Upload(sample(2))]))
    result = service.run(service.plane.infer_tensor(model, x))
    assert result.logits.shape == (1, 10) and result.batch_size == 1
    assert set(result.outputs) == set(model.runtime.output_names)
