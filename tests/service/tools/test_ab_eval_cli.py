"""``rbn-serve ab-eval`` end to end: the command in a subprocess against a real server on the shipped
bundles, with the shipped Fashion-MNIST samples laid out as an ImageFolder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import httpx
import pytest
from PIL import Image
from tests.service.svc_support import ROOT, SAMPLES, start_server

from service.core.abstats import rate

FOLDER_NAMES = {"T-shirt/top": "t-shirt-top", "Ankle boot": "ANKLE BOOT"}  # matched ignoring case and punctuation


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    with start_server(ROOT / "models", tmp_path_factory.mktemp("ab_eval_server")) as proc:
        yield proc


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """samples/fashion-mnist as torchvision's ImageFolder: one sub-folder per class."""
    root = tmp_path_factory.mktemp("imagefolder")
    entries = json.loads((SAMPLES / "fashion-mnist" / "labels.json").read_text())[:30]
    for entry in entries:
        folder = root / FOLDER_NAMES.get(entry["label_name"], entry["label_name"])
        folder.mkdir(exist_ok=True)
        (folder / entry["file"]).write_bytes((SAMPLES / "fashion-mnist" / entry["file"]).read_bytes())
    return root, entries


def ab_eval(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "service", "ab-eval", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, check=False)


def test_table_files_and_plot_agree_with_the_servers_own_count(shipped_server, image_folder, tmp_path):
    folder, entries = image_folder
    out = tmp_path / "out"
    done = ab_eval(str(folder), "--server", shipped_server.url, "--corruptions", "none,gaussian_noise",
                   "--severities", "1,4", "--concurrency", "3", "--batch", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "ab-eval.json").read_text())
    assert report["images"] == len(entries) and report["comparisons"] == 3 * len(entries)
    assert [(r["corruption"], r["severity"]) for r in report["rows"]] == [("none", 0), ("gaussian_noise", 1),
                                                                           ("gaussian_noise", 4)]
    # The server counted the same comparisons, and each arm's right answers, as the client did.
    summary = httpx.get(shipped_server.url + "/ab/summary").json()
    served = {(r["corruption"], r["severity"]): r for r in summary["rows"]}
    for row in report["rows"]:
        theirs = served[(row["corruption"], row["severity"])]
        assert theirs["comparisons"] == theirs["labelled"] == row["images"] == len(entries)
        assert theirs["accuracy"]["rbn"] == row["rbn"] == rate(row["rbn"]["successes"], len(entries))
        assert theirs["accuracy"]["baseline"] == row["baseline"] and theirs["agreement"] == row["agreement"]
    clean = report["rows"][0]
    assert clean["rbn"]["value"] >= 0.8  # the shipped model on its own data set's samples
    # The table on stdout, the CSV and the plot.
    table = done.stdout.splitlines()
    assert table[0].split()[:3] == ["corruption", "sev", "images"]
    noise4 = next(line for line in table if line.startswith("gaussian_noise") and line.split()[1] == "4")
    assert f"{100 * report['rows'][2]['rbn']['value']:5.1f} [" in noise4
    with (out / "ab-eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rbn_correct"]) for r in rows] == [r["rbn"]["successes"] for r in report["rows"]]
    with Image.open(out / "ab-eval.png") as plot:
        assert plot.format == "PNG" and plot.width >= 1000
    assert f"{len(entries) * 3}/{len(entries) * 3} images" in done.stderr  # the progress bar finished


def test_input_problems_are_one_line_and_exit_2(shipped_server, image_folder, tmp_path):
    folder, _ = image_folder
    odd = tmp_path / "odd"
    (odd / "Boots").mkdir(parents=True)
    (odd / "Boots" / "a.png").write_bytes((SAMPLES / "fashion-mnist" / "0_ankle-boot.png").read_bytes())
    done = ab_eval(str(odd), "--server", shipped_server.url, "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "class 'Boots' is not one of the model's labels" in done.stderr
    broken = tmp_path / "broken"
    (broken / "Bag").mkdir(parents=True)
    (broken / "Bag" / "notes.png").write_text("not an image")
    done = ab_eval(str(broken), "--server", shipped_server.url, "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "notes.png: not an image we can read" in done.stderr
    done = ab_eval(str(folder), "--server", shipped_server.url, "--corruptions", "smudge")
    assert done.returncode == 2 and "unknown corruption 'smudge'" in done.stderr
    assert not (tmp_path / "x").exists()


def test_server_errors_exit_non_zero(shipped_server, image_folder, tmp_path):
    folder, _ = image_folder
    # 17 images in one request: the server's max_files (16) answers 413 for the classes that have as many.
    many = tmp_path / "many"
    (many / "Bag").mkdir(parents=True)
    for i in range(17):
        (many / "Bag" / f"{i}.png").write_bytes((SAMPLES / "fashion-mnist" / "18_bag.png").read_bytes())
    done = ab_eval(str(many), "--server", shipped_server.url, "--batch", "17", "--corruptions", "none",
                   "--out", str(tmp_path / "y"))
    assert done.returncode == 1 and "answered 413" in done.stderr and not (tmp_path / "y").exists()
    done = ab_eval(str(folder), "--server", "http://127.0.0.1:9", "--out", str(tmp_path / "y"))
    assert done.returncode == 1 and "cannot reach http://127.0.0.1:9" in done.stderr


@pytest.mark.timeout(600)  # three ab-eval runs, one allowed 300 s
def test_api_key_from_the_flag_or_the_environment(image_folder, tmp_path):
    key = "ab-eval-key-0123456789"
    server = start_server(ROOT / "models", tmp_path, api_key=key)
    try:
        folder, entries = image_folder
        done = ab_eval(str(folder), "--server", server.url, "--corruptions", "none", "--out", str(tmp_path / "a"))
        assert done.returncode == 1 and "needs an API key" in done.stderr and key not in done.stderr
        done = ab_eval(str(folder), "--server", server.url, "--corruptions", "none", "--api-key", key,
                       "--out", str(tmp_path / "b"))
        assert done.returncode == 0, done.stderr
        assert json.loads((tmp_path / "b" / "ab-eval.json").read_text())["rows"][0]["images"] == len(entries)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
        done = subprocess.run([sys.executable, "-m", "service", "ab-eval", str(folder), "--server", server.url,
                               "--corruptions", "none", "--out", str(tmp_path / "c")], capture_output=True, text=True,
                              timeout=300, cwd=ROOT, check=False,
                              env={**env, "PYTHONPATH": str(ROOT), "RBN_SERVE_API_KEY": key})
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()


def test_an_empty_api_key_is_refused_before_any_request(image_folder, tmp_path):
    """`--api-key "$KEY"` with KEY unset: one line, exit 2, instead of running without a key."""
    folder, _ = image_folder
    done = ab_eval(str(folder), "--server", "http://127.0.0.1:9", "--api-key", "", "--out", str(tmp_path / "a"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["rbn-serve ab-eval: the API key is empty (--api-key or RBN_SERVE_API_KEY); "
                                                "give the key, or leave both unset for a server that requires none"]
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(("listing", "says"), [
    ("{not json", "not valid JSON"),
    ('{"a.png": 1}', 'expected a list of {"file": ..., "label": index}'),
    ('[{"file": "a.png"}]', "label None of a.png is not a class index 0..9"),
    ('[{"file": "a.png", "label": "Bag"}]', "label 'Bag' of a.png is not a class index 0..9"),
    ('[{"file": "a.png", "label": true}]', "label True of a.png is not a class index 0..9"),
    ('[{"file": "a.png", "label": 10}]', "label 10 of a.png is not a class index 0..9"),
    ('[{"label": 1}]', 'entry 0 has no "file" name'),
    ('["a.png"]', 'entry 0 has no "file" name'),
])
def test_a_bad_labels_json_is_an_input_error(tmp_path, listing, says):
    """A malformed labels.json is a one-line input problem (exit 2), not a traceback."""
    from service.tools.abeval import EvalError, collect

    (tmp_path / "a.png").write_bytes((SAMPLES / "fashion-mnist" / "18_bag.png").read_bytes())
    (tmp_path / "labels.json").write_text(listing)
    with pytest.raises(EvalError) as caught:
        collect(tmp_path, [f"class {i}" for i in range(10)])
    assert caught.value.exit_code == 2 and says in str(caught.value)
    (tmp_path / "labels.json").write_text('[{"file": "a.png", "label": 8}]')
    assert [(item.path, item.label) for item in collect(tmp_path, [f"class {i}" for i in range(10)])] == [
        (tmp_path / "a.png", 8)]


@pytest.mark.parametrize(("models", "ab", "says"), [
    (b"<html>a web server</html>", b"", "GET /models at {url} did not answer JSON: is it an rbn-serve server?"),
    (b'{"models": 3}', b"", "GET /models did not answer rbn-serve's model list"),
    (b'{"primary": "m", "models": [{"name": "m", "baseline": "b", "baseline_loaded": true, "labels": ["Bag"]}]}', b'{"results": {}}',
     "POST /ab at {url} did not answer one result per image"),
    (b'{"primary": "m", "models": [{"name": "m", "baseline": "b", "baseline_loaded": true, "labels": ["Bag"]}]}', b"[1, 2",
     "POST /ab at {url} did not answer JSON"),
    (None, b"", "cannot reach {url}"),  # not HTTP at all
])
def test_a_server_that_is_not_rbn_serve_is_one_line_and_exit_1(tmp_path, capsys, models, ab, says):
    """Pointed at another web server (or at something that does not speak HTTP), ab-eval says so in one
    line with exit 1, instead of a traceback."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from service.tools.abeval import run

    class Other(BaseHTTPRequestHandler):
        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(models)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(ab)

        def log_message(self, *args) -> None:
            pass

    (tmp_path / "in" / "Bag").mkdir(parents=True)
    (tmp_path / "in" / "Bag" / "a.png").write_bytes((SAMPLES / "fashion-mnist" / "18_bag.png").read_bytes())
    if models is None:  # a listener that answers garbage instead of HTTP
        listener = socket.create_server(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def garbage() -> None:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.sendall(b"SSH-2.0-not-http\r\n")
            connection.close()

        threading.Thread(target=garbage, daemon=True).start()
        stop = listener.close
    else:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Other)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stop = server.shutdown
    try:
        code = run(tmp_path / "in", url, None, ["none"], None, 1, 8, None, tmp_path / "out", timeout=10)
    finally:
        stop()
    err = capsys.readouterr().err
    assert code == 1 and says.format(url=url) in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_retry_after_is_read_as_seconds_within_bounds():
    from service.tools.abeval import _retry_after

    assert [_retry_after(v) for v in ("3", "0.5", "999", "-4", None, "", "Wed, 21 Oct 2026 07:28:00 GMT")] == [
        3.0, 0.5, 10.0, 0.0, 1.0, 1.0, 1.0]
