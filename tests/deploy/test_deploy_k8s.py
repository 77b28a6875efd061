"""docker/k8s: every manifest validates against the Kubernetes API schemas (kubernetes-validate, strict),
and the pieces agree with each other, with the image and with the service's drain settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from deploy_support import K8S, ROOT, resolve_image

from service.core.config import Settings

import kubernetes_validate  # noqa: E402 - a pinned dev dependency: missing is an error (./run.sh test installs it), not a skip

# The oldest Kubernetes the manifests claim to support, and the newest schema the package ships.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[Path, dict]]:
    return [(p, d) for p in manifest_files() for d in yaml.safe_load_all(p.read_text()) if d]


def by_kind(kind: str) -> list[dict]:
    return [d for _p, d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_strictly(version):
    checked = 0
    for path, doc in documents():
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the path
        checked += 1
    assert checked >= 5


def test_kustomization_lists_every_manifest_and_renames_the_image():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in manifest_files())
    image = by_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] == kust["images"][0]["name"]


def test_service_monitor_is_well_formed_and_selects_the_service():
    (sm,) = [d for d in yaml.safe_load_all((K8S / "components/servicemonitor/servicemonitor.yaml").read_text()) if d]
    (svc,) = by_kind("Service")
    assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"]
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


def test_selectors_match_the_pods():
    (dep,) = by_kind("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (dep["spec"]["selector"]["matchLabels"], by_kind("Service")[0]["spec"]["selector"],
                     by_kind("PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"]):
        assert all(pod_labels.get(k) == v for k, v in selector.items())
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    names = {d["metadata"].get("namespace") for _p, d in documents() if d["kind"] != "Namespace"}
    assert names == {by_kind("Namespace")[0]["metadata"]["name"]}


def container() -> dict:
    return by_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]


def test_gpu_limit_probes_and_ports():
    c = container()
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["RBN_SERVE_PROVIDERS"] == "cuda"
    image = resolve_image("gpu")
    assert c["ports"][0]["containerPort"] == int(image.env["RBN_SERVE_PORT"])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == int(image.env["RBN_SERVE_GRPC_PORT"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness on /readyz would kill draining pods"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    annotations = by_kind("Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == image.env["RBN_SERVE_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_security_context_matches_the_image_user():
    spec = by_kind("Deployment")[0]["spec"]["template"]["spec"]
    uid, gid = resolve_image("gpu").user.split(":")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(uid) and spec["securityContext"]["runAsGroup"] == int(gid)
    sc = container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert any(m["mountPath"] == "/tmp" for m in container()["volumeMounts"])


def test_termination_grace_covers_the_service_drain():
    spec = by_kind("Deployment")[0]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in container()["env"]}
    fields = Settings.model_fields
    drain = float(env.get("RBN_SERVE_DRAIN_DELAY_S", fields["drain_delay_s"].default))
    graceful = float(env.get("RBN_SERVE_GRACEFUL_TIMEOUT_S", fields["graceful_timeout_s"].default))
    assert drain >= 3, "endpoints need a few seconds to drop the pod after SIGTERM; the drain delay bridges that"
    assert spec["terminationGracePeriodSeconds"] >= drain + graceful + 5
    assert "lifecycle" not in container(), "the drain delay is the preStop; both would add up"


def test_the_hpa_alone_sets_the_replica_count():
    (dep,) = by_kind("Deployment")
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert "replicas" not in dep["spec"], "every kubectl apply would reset the HPA's count to spec.replicas"


def test_a_rollout_needs_no_spare_gpu_and_keeps_a_pod_serving():
    (dep,) = by_kind("Deployment")
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    (pdb,) = by_kind("PodDisruptionBudget")
    rolling = dep["spec"]["strategy"]["rollingUpdate"]
    gpus = container()["resources"]["limits"]["nvidia.com/gpu"]
    # Pods (hence GPUs) at once during a rollout: replicas + maxSurge. No surge: never more than the HPA holds.
    assert rolling["maxSurge"] == 0 and gpus == 1
    assert rolling["maxUnavailable"] == 1
    assert hpa["spec"]["minReplicas"] - rolling["maxUnavailable"] >= 1, "a rollout would take every pod down"
    assert pdb["spec"]["maxUnavailable"] == rolling["maxUnavailable"]


def test_image_tag_is_the_project_version():
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["images"][0]["newTag"] == f"{version}-gpu"
    assert container()["image"] == f"rbn-serve:{version}-gpu"


def test_hpa_scales_on_the_metric_the_adapter_serves():
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    values = yaml.safe_load((K8S / "helm" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
