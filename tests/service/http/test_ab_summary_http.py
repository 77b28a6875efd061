"""GET /ab/summary (this process's A/B table) and /ab?input_png=true (the image both arms saw), on a
server of their own so the counts are exact."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.service.svc_support import BN, RBN, start_server

from rbn.contract.bundle import read_meta
from rbn.contract.corruptions import corrupt
from service.core.abstats import rate
from service.core.corrupting import content_key
from service.http.routes.schemas.inference import AbResponse, AbSummaryResponse
from service.core.imaging import decode


@pytest.fixture(scope="module")
def own(bundle_repo, tmp_path_factory):
    proc = start_server(bundle_repo, tmp_path_factory.mktemp("ab_summary"))
    with httpx.Client(base_url=proc.url, timeout=60) as c:
        yield c
    proc.stop()


def post_ab(client, data: bytes, **params) -> AbResponse:
    r = client.post("/ab", content=data, headers={"Content-Type": "image/png"}, params=params)
    assert r.status_code == 200, r.text
    return AbResponse.model_validate(r.json())


def summary(client) -> AbSummaryResponse:
    r = client.get("/ab/summary")
    assert r.status_code == 200, r.text
    return AbSummaryResponse.model_validate(r.json())


def test_summary_counts_every_comparison_exactly(own, fmnist_samples):
    before = summary(own)
    assert before.scope == "process" and before.rows == [] and before.comparisons == 0
    labelled = [post_ab(own, data, corruption="fog", severity=2, label=str(label)).results[0]
                for _, data, label in fmnist_samples[:6]]
    plain = [post_ab(own, data).results[0] for _, data, _ in fmnist_samples[6:9]]
    after = summary(own)
    assert after.comparisons == 9 and after.since == before.since
    fog, clean = after.rows  # sorted by model, baseline, corruption, severity
    assert (fog.model, fog.baseline, fog.severity, clean.corruption, clean.severity) == (RBN, BN, 2, "none", 0)
    assert fog.comparisons == 6 and fog.labelled == 6
    assert fog.agreement.model_dump() == rate(sum(r.agree for r in labelled), 6)
    assert fog.accuracy.rbn.model_dump() == rate(sum(r.correct["rbn"] for r in labelled), 6)
    assert fog.accuracy.baseline.model_dump() == rate(sum(r.correct["baseline"] for r in labelled), 6)
    assert clean.comparisons == 3 and clean.labelled == 0 and clean.accuracy is None
    assert clean.agreement.successes == sum(r.agree for r in plain)


def test_input_png_is_the_corrupted_preprocessed_image(own, fmnist_samples, bundle_repo):
    _, data, _ = fmnist_samples[3]
    answer = post_ab(own, data, corruption="gaussian_noise", severity=4, seed=3, input_png="true")
    png = base64.b64decode(answer.results[0].input_png)
    shown = np.asarray(Image.open(io.BytesIO(png)))
    meta = read_meta(bundle_repo / RBN)
    image = decode(data, meta.input, 10**7)
    # the noise is drawn from the request's seed and the image's own pixels (never its position)
    expected = corrupt(image[0], "gaussian_noise", 4, 3, first_index=content_key(image))
    assert shown.shape == (meta.input.height, meta.input.width) and np.array_equal(shown, expected)
    assert post_ab(own, data).results[0].input_png is None
    assert "input_png" not in own.post("/ab", content=data, headers={"Content-Type": "image/png"}).json()["results"][0]
    bad = own.post("/ab?input_png=yes", content=data, headers={"Content-Type": "image/png"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_argument"


def test_openapi_declares_the_option_and_the_summary(own):
    spec = own.get("/openapi.json").json()
    ab_params = {p["name"]: p for p in spec["paths"]["/ab"]["post"]["parameters"]}
    assert ab_params["input_png"]["schema"] == {"type": "string", "enum": ["true", "false"]}
    ok = spec["paths"]["/ab/summary"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/AbSummaryResponse"}
    schema = spec["components"]["schemas"]["AbSummaryResponse"]
    assert schema["additionalProperties"] is False
    AbSummaryResponse.model_validate(schema["examples"][0])
