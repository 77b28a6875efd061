"""The core without a server: typed answers (the OOD flag defined once), ``Model.open(...).predict``
doing exactly the served work, and a request context whose deadline the batcher honours."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from tests.service.inproc import RBN_MODEL, ROOT, in_process

from service.core import context as request_context
from service.core.answers import AbResult, ArmsCorrect, ModelRef, OodVerdict, Prediction, flagged, verdict
from service.core.batching import Batcher
from service.core.decoding import Upload
from service.core.errors import DeadlineExceeded
from service.core.imaging import decode
from service.core.model import Model

SAMPLES = ROOT / "samples" / "fashion-mnist"
ENTRIES = json.loads((SAMPLES / "labels.json").read_text())[:3]


@pytest.mark.parametrize(("score", "threshold", "expected"), [
    (None, 1.0, None), (1.0, None, None), (1.0, 1.0, False), (1.0000001, 1.0, True), (0.5, 1.0, False), (-3.0, -4.0, True),
])
def test_the_flag_is_a_score_strictly_above_its_threshold(score, threshold, expected):
    assert flagged(score, threshold) is expected
    assert OodVerdict(score, threshold, {}).flag is expected


def test_an_ab_result_renders_agreement_and_winner_from_its_arms():
    def answer(index: int) -> Prediction:
        return Prediction("x", index, 0.5, [], OodVerdict(None, None, {}), filename="a.png")

    result = AbResult(ModelRef("r", 2), answer(3), ModelRef("b", 1), answer(4), 0.25, 0.5, ArmsCorrect(False, True))
    out = result.to_json()
    assert (out["agree"], out["winner"], out["correct"]) == (False, "baseline", {"rbn": False, "baseline": True})
    assert out["arms"]["rbn"]["model"] == "r" and out["arms"]["rbn"]["version"] == 2 and "filename" not in out["arms"]["rbn"]
    assert [verdict(a, b) for a, b in ((True, True), (True, False), (False, True), (False, False))] == \
        ["both", "rbn", "baseline", "neither"]


def test_model_open_predicts_what_the_server_answers():
    data = [(SAMPLES / e["file"]).read_bytes() for e in ENTRIES]
    with in_process() as svc:
        served = svc.run(svc.plane.predict(svc.state.models[RBN_MODEL], [Upload(d) for d in data], top_k=3))
        bundle_dir = svc.state.models[RBN_MODEL].bundle.path
    model = Model.open(bundle_dir)
    pixels = np.stack([decode(d, model.meta.input, 10_000_000) for d in data])
    alone = model.predict(pixels, top_k=3)
    assert [p.to_json() for p in alone] == [p.to_json() for p in served.predictions]
    assert [p.index for p in alone] == [e["label"] for e in ENTRIES]  # the shipped samples are classified right
    with pytest.raises(RuntimeError, match="without a server"):
        asyncio.run(model.infer(model.normalize(pixels)))


def test_the_batcher_answers_a_request_whose_deadline_passed_while_it_waited():
    release = asyncio.Event()

    async def main():
        loop = asyncio.get_running_loop()

        def run(x):  # the first batch holds the only slot until released
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return (x,)

        batcher = Batcher("m", run, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=4, instances=1)
        batcher.start()
        first = asyncio.create_task(batcher.submit(np.zeros((1, 1), np.float32)))
        await asyncio.sleep(0.05)
        request_context.current.set(request_context.RequestContext("late", deadline=time.monotonic() + 0.05))
        late = asyncio.create_task(batcher.submit(np.ones((1, 1), np.float32)))
        await asyncio.sleep(0.2)
        release.set()
        await first
        with pytest.raises(DeadlineExceeded):
            await late
        await batcher.stop()

    asyncio.run(main())
