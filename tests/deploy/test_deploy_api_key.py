"""The API key reaches the server from a secret in every deployment: Compose and Kubernetes read it
from a mounted file (RBN_SERVE_API_KEY_FILE), never from a plain environment value."""

from __future__ import annotations

import yaml
from deploy_support import COMPOSE, ROOT
from test_deploy_compose import compose_config

from service.core.config import ENV_PREFIX

KEY_FILE = f"{ENV_PREFIX}API_KEY_FILE"


def test_compose_mounts_the_key_as_a_secret_file():
    config = compose_config(COMPOSE)
    api = config["services"]["api"]
    target = api["environment"][KEY_FILE]
    mounted = {s["source"]: s.get("target", f"/run/secrets/{s['source']}") for s in api["secrets"]}
    assert target in mounted.values()
    assert config["secrets"][next(k for k, v in mounted.items() if v == target)]["file"].endswith("secrets/api-key")
    assert f"{ENV_PREFIX}API_KEY" not in api["environment"]  # a plain value would show in `docker inspect`
    assert "/secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_kubernetes_mounts_the_key_from_a_secret():
    deployment = yaml.safe_load((ROOT / "docker" / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    env = {e["name"]: e for e in api["env"]}
    assert f"{ENV_PREFIX}API_KEY" not in env
    path = env[KEY_FILE]["value"]
    mount = next(m for m in api["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "rbn-serve-api-key" and not volume["secret"].get("optional", False)
    assert volume["secret"]["defaultMode"] & 0o004  # the image's non-root user can read it
    assert path.rsplit("/", 1)[1] == "api-keys"  # the key the README's `kubectl create secret` names
