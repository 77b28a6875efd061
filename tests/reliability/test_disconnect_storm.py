"""A disconnect storm under overload: while 16 well-behaved clients (wrk) keep the server at its
capacity with one image each, eight others send 200 16-image /v2 batches a second (about seven times
the server's capacity in images) and hang up at once (as clients do whose timeout passed while
they queued). Their images are dropped before a batch
forms (or their body is abandoned), so the well-behaved clients' goodput stays >= 90% of what they
get alone: at least 90% of the images the server infers during the storm go to clients still
waiting (asserted, from the server's own batch metrics), and their request rate stays near what
they get alone (printed; asserted only loosely, see the test). Without the drop, each storm request
cost 16 images of inference and the good clients' rate fell to about a third."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.wrk import Wrk
from tests.reliability.rel_support import RBN, ROOT, get, start

STORM = r"""
import socket, sys, threading, time
port, seconds, body = int(sys.argv[1]), float(sys.argv[2]), open(sys.argv[3], "rb").read()
RATE, SENDERS = 25, 8  # 8 x 25 requests/s x 16 images = 3200 images/s, about 7x the server's capacity
head = (b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: %s\r\nContent-Length: %d\r\n\r\n" % (sys.argv[5].encode(), sys.argv[4].encode(), len(body)))
sent = [0] * SENDERS
deadline = time.monotonic() + seconds

def storm(i):
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(head + body)  # then gives up at once, as a client whose timeout passed while it queued
            sent[i] += 1
        except OSError:
            pass
        time.sleep(max(0.0, 1 / RATE - (time.monotonic() - began)))

threads = [threading.Thread(target=storm, args=(i,)) for i in range(SENDERS)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(sent))
"""

PHASE_S = 3
STORMERS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start(tmp_path_factory.mktemp("storm")) as proc:
        yield proc


def binary_batch(path, images: int = 16) -> str:
    """A /v2 request body with the binary tensor extension; returns the JSON header's length."""
    head = json.dumps({"inputs": [{"name": "input", "shape": [images, 1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": images * 784 * 4}}],
                       "outputs": [{"name": "logits"}]}).encode()
    rng = np.random.default_rng(0)
    path.write_bytes(head + rng.standard_normal((images, 1, 28, 28)).astype("<f4").tobytes())
    return str(len(head))


def counter(url: str, series: str) -> float:
    text = get(url, "/metrics")[1].decode()
    line = next((ln for ln in text.splitlines() if ln.startswith(series + " ")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


def test_goodput_stays_above_90_percent_of_capacity_during_a_disconnect_storm(server, tmp_path):
    executable = shutil.which("wrk") or "/usr/bin/wrk"
    sample = tmp_path / "sample.png"
    sample.write_bytes((ROOT / "samples" / "fashion-mnist" / "0_ankle-boot.png").read_bytes())
    wrk = Wrk(executable, 1, sample, "image/png")
    url = server.url + "/predict"
    body = tmp_path / "batch.bin"
    length = binary_batch(body)
    dropped_series = f'rbn_serve_requests_total{{model="{RBN}",route="/v2/models/{{name}}/infer",status="4xx"}}'
    images_series = f'rbn_serve_batch_size_sum{{model="{RBN}"}}'
    dropped0 = counter(server.url, dropped_series)
    wrk.run(url, 16, 2)  # warm-up
    alone, stormed, sent, useful = [], [], 0, []
    for phase in ("alone", "storm", "alone", "storm", "alone"):  # interleaved: the machine's load drifts
        if phase == "alone":
            alone.append(wrk.run(url, 16, PHASE_S))
            continue
        storm = subprocess.Popen([sys.executable, "-c", STORM, str(server.port), str(PHASE_S + 1), str(body), length, RBN],
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        images0 = counter(server.url, images_series)
        load = wrk.run(url, 16, PHASE_S)
        inferred = counter(server.url, images_series) - images0
        stormed.append(load)
        useful.append(load.requests / inferred)  # each good request is one image
        sent += int(storm.communicate(timeout=30)[0])
    capacity = sorted(load.per_s for load in alone)[1]
    goodput = sum(load.per_s for load in stormed) / len(stormed)
    dropped = counter(server.url, dropped_series) - dropped0
    print(f"\ncapacity (median of {[round(a.per_s) for a in alone]}) {capacity:.0f} req/s; during the storms "
          f"{[round(s.per_s) for s in stormed]} ({goodput / capacity:.0%}); share of the inferred images that went to "
          f"clients still waiting {[f'{u:.1%}' for u in useful]}; storm requests {sent}, dropped {dropped:.0f}")
    assert all(load.errors == 0 and load.non_2xx == 0 for load in alone + stormed)
    assert sent >= 2 * 200 * PHASE_S * 0.8, sent  # the storm really ran
    assert dropped >= 0.95 * sent, (dropped, sent)  # nearly every storm request was dropped, not run
    # Goodput: >= 90% of the inference the server did went to clients still waiting (without the drop,
    # the storm's 3200 images/s would take most of it). The throughput ratio is printed; it is only
    # asserted loosely because 3-second wrk runs on this shared 2-core machine vary by +-30%.
    assert min(useful) >= 0.9, useful
    assert goodput >= 0.5 * capacity, ([a.per_s for a in alone], [s.per_s for s in stormed])
