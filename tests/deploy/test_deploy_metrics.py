"""Every metric a Grafana panel, an alert rule, the autoscaler or docs/deployment.md names exists in the real
service's /metrics after real traffic, with the labels the queries use.

The server is the real `rbn-serve serve` on a loopback port with test bundles; traffic is /predict (raw
and multipart), /ab with and without corruption and labels, shadow runs, and a rejected request, with
the shipped sample images. GPU gauges only exist on CUDA, so those names are checked against the
service's own NVML collector, fed by a stand-in NVML library.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    DASHBOARD,
    K8S,
    PROMETHEUS,
    ROOT,
    VENV_BIN,
    Server,
    free_port,
    http,
    multipart,
    sample_images,
)
from prometheus_client.parser import text_string_to_metric_families

NAME = re.compile(r"(?<![\w:])(rbn_serve_[a-z0-9_]*[a-z0-9])(?![\w:*])")
SELECTOR = re.compile(r"(?<![\w:])(rbn_serve_[a-z0-9_]*[a-z0-9])\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
TARGET_LABELS = {"instance", "job"}          # added by Prometheus to every scraped series
# Counted only when the event happens (no sample before it); they must still be declared by the service.
EVENT_ONLY = {"rbn_serve_shadow_dropped_total": "a shadow run was dropped (baseline backlog, queue full, error)"}
K8S_LABELS = {"namespace", "pod", "service", "container", "endpoint"}


# --- where the names are used -------------------------------------------------------------------------
def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"] for v in dash["templating"]["list"]]
    return exprs


def rule_queries() -> list[str]:
    out = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [rule["expr"] for rule in group["rules"]]
    return out


def autoscaling_queries() -> list[str]:
    values = yaml.safe_load((K8S / "helm" / "prometheus-adapter-values.yaml").read_text())
    out = [r["seriesQuery"] for r in values["rules"]["custom"]]
    hpa = yaml.safe_load((K8S / "hpa.yaml").read_text())
    out += [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    return out


def text_mentions() -> str:
    """Prose that names metrics (alert annotations, the deployment guide)."""
    parts = [(PROMETHEUS / "rules" / "rbn-serve.yml").read_text()]
    guide = ROOT / "docs" / "deployment.md"
    if guide.exists():
        parts.append(guide.read_text())
    return "\n".join(parts)


# --- the real service ---------------------------------------------------------------------------------
def send_traffic(url: str, meta: dict) -> None:
    images = sample_images(8)
    ok = {"Content-Type": "image/png"}
    for _name, png, _label in images:
        status, body = http("POST", url + "/predict", png, ok)
        assert status == 200, body
    body, content_type = multipart([(n, png) for n, png, _ in images[:3]])
    assert http("POST", url + "/predict?top_k=2", body, {"Content-Type": content_type})[0] == 200
    for i, (_name, png, label) in enumerate(images[:4]):
        assert http("POST", url + "/ab", png, ok)[0] == 200
        status, body = http("POST", url + f"/ab?corruption={meta['corruptions'][i % 2]}&severity=3&label={label}", png, ok)
        assert status == 200, body
    # A label the RBN arm is sure to get right (random-weight test models are rarely right on their own).
    status, body = http("POST", url + "/ab", images[0][1], ok)
    answer = json.loads(body)
    rbn_index = answer["results"][0]["arms"]["rbn"]["index"]
    assert http("POST", url + f"/ab?label={rbn_index}", images[0][1], ok)[0] == 200
    assert http("POST", url + "/predict", b"not an image", {"Content-Type": "text/plain"})[0] == 415


def send_grpc_traffic(target: str) -> None:
    """gRPC calls count in the same series (their route the gRPC method): the dashboard's gRPC panel needs one."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        assert live(b"", timeout=30) == b"\x08\x01"  # ServerLiveResponse(live=true)


BROKEN = "broken-copy"  # a bundle whose model.json names another folder: skipped, counted in bundle_errors


@pytest.fixture(scope="module")
def served_repository(source_repository, tmp_path_factory) -> Path:
    """The source bundles plus one broken bundle, so that one alert (RbnServeBundleErrors) must fire."""
    repo = tmp_path_factory.mktemp("served")
    bundles = sorted(p for p in source_repository.iterdir() if (p / "model.json").exists())
    for bundle in bundles:
        shutil.copytree(bundle, repo / bundle.name)
    shutil.copytree(bundles[0], repo / BROKEN)
    return repo


@pytest.fixture(scope="module")
def server(served_repository, tmp_path_factory):
    """The real server, after the traffic above; stopped (and its clean exit checked) at the end."""
    from rbn.contract.corruptions import CORRUPTION_NAMES

    tmp = tmp_path_factory.mktemp("metrics")
    port, grpc_port = free_port(), free_port()
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8",
           "RBN_SERVE_MODEL_REPOSITORY": str(served_repository), "RBN_SERVE_HOST": "127.0.0.1",
           "RBN_SERVE_PORT": str(port), "RBN_SERVE_PROVIDERS": "cpu", "RBN_SERVE_SHADOW_FRACTION": "1.0",
           "RBN_SERVE_GRPC_PORT": str(grpc_port)}
    server = Server([str(VENV_BIN / "rbn-serve"), "serve"], env, port, tmp / "server.log", cwd=tmp).wait_ready()
    try:
        send_traffic(server.url, {"corruptions": sorted(CORRUPTION_NAMES)[:2]})
        send_grpc_traffic(f"127.0.0.1:{grpc_port}")
        yield server
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def scrape(server) -> str:
    deadline = time.monotonic() + 15  # shadow runs happen off the request path
    while True:
        text = http("GET", server.url + "/metrics")[1].decode()
        if "rbn_serve_shadow_comparisons_total{" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def series(text: str) -> tuple[dict[str, set[str]], set[str]]:
    """{sample name: label names} and the family names, from an exposition."""
    labels: dict[str, set[str]] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels, families


@pytest.fixture(scope="module")
def service_metrics(monkeypatch_module):
    """The service's own Metrics, with its GPU collector over a stand-in for NVML (one GPU)."""
    fake = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def reading(*_args):
        return types.SimpleNamespace(gpu=42, memory=17, used=3 * 2**30, total=80 * 2**30, free=77 * 2**30)

    fake.NVMLError = NVMLError
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    fake.nvmlDeviceGetUUID = lambda handle: f"GPU-00000000-0000-0000-0000-00000000000{handle[-1]}"
    fake.__getattr__ = lambda name: reading  # any other nvmlDeviceGet* reading
    monkeypatch_module.setitem(sys.modules, "pynvml", fake)
    from service.core.metrics import Metrics

    metrics = Metrics()
    assert metrics.register_gpu(), "the GPU collector did not start over the stand-in NVML"
    return metrics


@pytest.fixture(scope="module")
def gpu_exposition(service_metrics) -> str:
    return service_metrics.expose().decode()


@pytest.fixture(scope="module")
def declared(service_metrics) -> dict[str, set[str]]:
    """{sample name: label names} of every metric object the service defines (samples or not)."""
    from prometheus_client.metrics import MetricWrapperBase

    out: dict[str, set[str]] = {}
    for metric in vars(service_metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}.get(metric._type, [""])
        for suffix in suffixes:
            out[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


# --- the checks ---------------------------------------------------------------------------------------
SOURCES = {"dashboard": dashboard_queries, "alert rules": rule_queries, "autoscaling": autoscaling_queries}


def used_names() -> dict[str, set[str]]:
    return {where: {n for q in get() for n in NAME.findall(q)} for where, get in SOURCES.items()}


def test_queries_use_metrics_at_all():
    used = used_names()
    assert len(used["dashboard"]) >= 15 and len(used["alert rules"]) >= 10 and used["autoscaling"]


def test_every_metric_used_exists_in_the_real_metrics(scrape, gpu_exposition, declared):
    real, families = series(scrape)
    gpu, _ = series(gpu_exposition)
    gpu_only = set(gpu) - set(real)
    assert gpu_only and all("gpu" in n for n in gpu_only), f"unexpected CPU-run gaps: {gpu_only}"
    for name in EVENT_ONLY:  # declared in the real exposition (HELP/TYPE), and by the service's Metrics
        assert name in declared and name.removesuffix("_total") in families, name
    problems = {}
    for where, names in used_names().items():
        missing = sorted(n for n in names if n not in real and n not in gpu_only and n not in EVENT_ONLY)
        if missing:
            problems[where] = missing
    assert not problems, (f"names used but absent from the service's /metrics after traffic: {problems}\n"
                          f"the service exposes: {sorted(n for n in real if n.startswith('rbn_serve_'))}")


def test_metric_names_in_prose_exist(scrape, gpu_exposition, declared):
    real, families = series(scrape)
    gpu, gpu_families = series(gpu_exposition)
    known = set(real) | families | set(gpu) | gpu_families | set(declared)
    mentioned = set(NAME.findall(text_mentions()))
    assert not mentioned - known, f"the docs or alert texts name metrics that do not exist: {sorted(mentioned - known)}"


def test_label_names_used_exist_on_those_metrics(scrape, gpu_exposition, declared):
    real, _ = series(scrape)
    gpu, _ = series(gpu_exposition)
    labels = {name: declared.get(name, set()) | gpu.get(name, set()) | real.get(name, set())
              for name in {*declared, *gpu, *real}}
    problems = []
    for where, get in SOURCES.items():
        extra = K8S_LABELS if where == "autoscaling" else set()
        for query in get():
            for name, matchers in SELECTOR.findall(query):
                for label in MATCHER.findall(matchers):
                    if label not in labels.get(name, set()) | TARGET_LABELS | extra:
                        problems.append(f"{where}: {name} has no label {label!r} (in {query.strip()[:80]}...)")
            in_query = set().union(*(labels.get(n, set()) for n in NAME.findall(query)))
            for group in GROUPING.findall(query):
                for label in filter(None, (g.strip() for g in group.split(","))):
                    if label.startswith("<<"):  # prometheus-adapter template
                        continue
                    if label not in in_query | TARGET_LABELS | extra | {"le"}:
                        problems.append(f"{where}: grouping label {label!r} is on none of its metrics ({query.strip()[:80]}...)")
    assert not problems, "\n".join(problems)


def allowed_label_values(scrape: str) -> dict[str, set[str]]:
    """Every value the service can put on the labels the queries select on literally."""
    from rbn.contract.corruptions import CORRUPTION_NAMES
    from service.core import errors

    reasons = {cls.code for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.ServiceError)}
    emitted: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            for k, v in sample.labels.items():
                emitted.setdefault(k, set()).add(v)
    return {
        "status": {"1xx", "2xx", "3xx", "4xx", "5xx"},
        "reason": reasons | emitted.get("reason", set()),
        "corruption": set(CORRUPTION_NAMES) | {"none"},
        "arm": {"rbn", "baseline"},
        "agree": emitted["agree"] | {"true", "false"},
        "job": {"rbn-serve"},
    }


def test_label_values_the_queries_select_exist(scrape):
    """`status="5xx"`, `reason="queue_full"`, `agree="false"`...: values the service really emits."""
    allowed = allowed_label_values(scrape)
    assert {"true", "false"} >= allowed["agree"], allowed["agree"]
    assert "queue_full" in allowed["reason"]
    problems = []
    for query in dashboard_queries() + rule_queries():
        for _name, matchers in SELECTOR.findall(query):
            for label, value in re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers):
                if label in allowed and value not in allowed[label]:
                    problems.append(f'{label}="{value}" never occurs (in {query.strip()[:80]}...)')
    assert not problems, "\n".join(problems)
    routes = {v for f in text_string_to_metric_families(scrape) for smp in f.samples
              for k, v in smp.labels.items() if k == "route"}
    assert {"/predict", "/ab"} <= routes, routes


# --- a real Prometheus scrapes the server and runs every panel query and rule ---------------------------
def grafana_to_promql(expr: str, rate_window: str = "10s") -> str:
    label_values = re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr.strip())
    if label_values:
        return label_values.group(1)
    expr = expr.replace("$__rate_interval", rate_window).replace("$__range", "1m").replace("$__interval", "1s")
    return re.sub(r"\$\w+", ".*", expr)


def rules_without_for(out: Path) -> list[Path]:
    """Copies of the alert rule files with every `for:` removed: an alert fires on the first evaluation
    where its expression holds, within the seconds this test runs (the rules wait minutes)."""
    paths = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                rule.pop("for", None)
        (out / path.name).write_text(yaml.safe_dump(doc))
        paths.append(out / path.name)
    return paths


@pytest.fixture(scope="module")
def prometheus(server, scrape, tmp_path_factory):
    """Debian's prometheus on loopback, scraping the server every second, with our alert rules loaded
    (without their `for:` durations)."""
    from deploy_support import tool

    binary = tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rules_without_for(tmp)],
        "scrape_configs": [{"job_name": "rbn-serve", "static_configs": [{"targets": [server.url.removeprefix("http://")]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - open for the process's lifetime
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=log, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # ready, and at least 3 scrapes of the server so rate() has points
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            try:
                status, body = http("GET", url + "/api/v1/query?query=count_over_time(up%5B1m%5D)", timeout=2)
                result = json.loads(body)["data"]["result"] if status == 200 else []
                if result and float(result[0]["value"][1]) >= 3:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp / "prometheus.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def query(url: str, promql: str) -> list:
    from urllib.parse import quote

    status, body = http("GET", f"{url}/api/v1/query?query={quote(promql)}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", f"{promql}: {answer}"
    return answer["data"]["result"]


def test_every_dashboard_query_returns_data_in_prometheus(prometheus):
    empty = []
    for expr in dashboard_queries():
        names = set(NAME.findall(expr))
        if names and all("gpu" in n or n in EVENT_ONLY for n in names):
            continue  # no samples on a CPU run / before the event; existence is checked above
        if not query(prometheus, grafana_to_promql(expr)):
            empty.append(expr)
    assert not empty, "panels that would show 'No data' after traffic:\n" + "\n".join(empty)


def test_prometheus_evaluates_every_rule_and_fires_exactly_the_true_alerts(prometheus):
    """With the `for:` durations removed, the alerts that fire are exactly those whose condition holds:
    the server skipped one broken bundle (RbnServeBundleErrors), and is otherwise healthy. Its traffic came
    before the first scrape, so every rate Prometheus sees is 0 and no traffic or quality alert fires."""
    deadline = time.monotonic() + 30
    while True:
        _status, body = http("GET", prometheus + "/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        alerts = {r["name"]: r.get("state") for r in rules if r["type"] == "alerting"}
        evaluated = rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        if evaluated and alerts.get("RbnServeBundleErrors") == "firing" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rules) == len(rule_queries())
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    assert {name: state for name, state in alerts.items() if state != "inactive"} == {"RbnServeBundleErrors": "firing"}
    (bundle_errors,) = [r for r in rules if r["name"] == "RbnServeBundleErrors"]
    assert [a["value"] for a in bundle_errors["alerts"]] == ["1e+00"]  # the one broken bundle
