"""GPU deployment without known traps: one GPU per replica group on a multi-GPU host (docker/compose.gpus.yml,
read by Compose v2's own parser), and the Kubernetes components that are opt-in (the ServiceMonitor, which
replaces the pod annotations so each pod is scraped once; a runtimeClassName), applied here as kustomize would
apply their JSON patches and validated strictly against the Kubernetes schemas; the GPUs the HPA's floor needs."""

from __future__ import annotations

import copy
import re

import kubernetes_validate
import pytest
import yaml
from deploy_support import COMPOSE, DOCKER, K8S
from test_deploy_compose import compose_config

VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


@pytest.fixture(scope="module")
def two_gpus() -> dict:
    return compose_config(COMPOSE, DOCKER / "compose.gpus.yml")


def test_each_replica_group_gets_its_own_gpu(two_gpus):
    api, second = two_gpus["services"]["api"], two_gpus["services"]["api-gpu1"]
    devices = [s["deploy"]["resources"]["reservations"]["devices"] for s in (api, second)]
    assert devices == [[{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}],
                       [{"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]}]]
    # the same service otherwise: image, environment, secrets, bounded restarts, drain
    for key in ("image", "environment", "secrets", "restart", "stop_grace_period", "read_only", "expose"):
        assert api.get(key) == second.get(key), key
    # found by the gateway and Prometheus under the one name they look up
    assert second["networks"]["default"]["aliases"] == ["api"]


def deployment() -> dict:
    return yaml.safe_load((K8S / "deployment.yaml").read_text())


def pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.strip("/").split("/")]


def apply_json6902(doc: dict, ops: list[dict]) -> dict:
    """add / remove as kustomize applies a component's JSON 6902 patch (a missing path fails, as there)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = pointer(op["path"])
        node = doc
        for key in parents:
            node = node[key]
        if op["op"] == "add":
            node[last] = op["value"]
        elif op["op"] == "remove":
            del node[last]
        else:
            raise AssertionError(f"unexpected op {op['op']}")
    return doc


def component(name: str) -> tuple[dict, dict]:
    kust = yaml.safe_load((K8S / "components" / name / "kustomization.yaml").read_text())
    assert kust["kind"] == "Component" and kust["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    (patch,) = kust["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": deployment()["metadata"]["name"]}
    return kust, apply_json6902(deployment(), yaml.safe_load(patch["patch"]))


@pytest.mark.parametrize("version", VERSIONS)
def test_the_servicemonitor_component_replaces_the_annotations(version):
    kust, patched = component("servicemonitor")
    assert kust["resources"] == ["servicemonitor.yaml"]
    before = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert {k for k in before if k.startswith("prometheus.io/")} == {"prometheus.io/scrape", "prometheus.io/port",
                                                                     "prometheus.io/path"}
    after = patched["spec"]["template"]["metadata"].get("annotations", {})
    assert not [k for k in after if k.startswith("prometheus.io/")], "both scrape paths would scrape each pod"
    kubernetes_validate.validate(patched, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_runtime_class_component(version):
    _kust, patched = component("runtime-class")
    assert patched["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in deployment()["spec"]["template"]["spec"]  # optional: off by default
    kubernetes_validate.validate(patched, version, strict=True)


def test_the_default_scrapes_by_annotation_only_and_names_the_components():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "components" not in kust and not any("servicemonitor" in r for r in kust["resources"])
    text = (K8S / "kustomization.yaml").read_text()
    assert "components/servicemonitor" in text and "components/runtime-class" in text
    assert kust["images"][0]["name"] == deployment()["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0]


def test_the_hpa_says_how_many_gpus_its_floor_needs():
    text = (K8S / "hpa.yaml").read_text()
    hpa = yaml.safe_load(text)
    gpus = deployment()["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    need = hpa["spec"]["minReplicas"] * gpus
    assert re.search(rf"minReplicas {hpa['spec']['minReplicas']} needs {need} GPUs", text)
