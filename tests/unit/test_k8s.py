"""deploy/k8s: every manifest is valid against the Kubernetes schema, and agrees with the app's real settings
(probe routes, ports, shutdown grace, the settings the pods are given)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from api.main import create_app
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes minor still supported by the major providers; the manifests use only stable APIs.
KUBERNETES_VERSION = "1.30"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                found.append((path.name, document))
    return found


def _one(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


def _container(deployment: str) -> dict[str, Any]:
    containers = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _pod_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a pod builds from the ConfigMap (the Secret's values are placeholders)."""
    for name, value in _one("ConfigMap", "sse-relay-config")["data"].items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(("source", "document"), _documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_manifest_is_valid_against_the_kubernetes_schema(source: str, document: dict[str, Any]) -> None:
    # strict: an unknown or misspelt field (a silently ignored setting on a real cluster) is an error too.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_manifests_hold_the_expected_objects() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in _documents())
    assert kinds == [
        ("ConfigMap", "sse-relay-config"),
        ("Deployment", "sse-relay-api"),
        ("Deployment", "sse-relay-worker"),
        ("HorizontalPodAutoscaler", "sse-relay-api"),
        ("Secret", "sse-relay-secrets"),
        ("Service", "sse-relay-api"),
        ("Service", "sse-relay-postgres"),
        ("Service", "sse-relay-redis"),
    ]


def test_worker_termination_grace_outlasts_its_shutdown_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    grace = _one("Deployment", "sse-relay-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # Room after the grace for handing unfinished jobs back to the queue and closing connections.
    assert grace >= _pod_settings(monkeypatch).worker_shutdown_grace_s + 10


def test_worker_runs_the_worker_command() -> None:
    assert _container("sse-relay-worker")["command"] == ["sse-relay", "worker"]


def test_api_probes_hit_the_apps_real_health_routes_on_the_served_port() -> None:
    container = _container("sse-relay-api")
    paths = set(create_app().openapi()["paths"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" and "/readyz" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and "/healthz" in paths
    command = container["command"]
    port = int(command[command.index("--port") + 1])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[container["readinessProbe"]["httpGet"]["port"]] == port
    assert named[container["livenessProbe"]["httpGet"]["port"]] == port


def test_api_shutdown_fits_in_its_termination_grace() -> None:
    spec = _one("Deployment", "sse-relay-api")["spec"]["template"]["spec"]
    command = spec["containers"][0]["command"]
    graceful = int(command[command.index("--timeout-graceful-shutdown") + 1])
    pre_stop = shlex.join(spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"])
    assert pre_stop.startswith("sleep ")
    assert int(pre_stop.split()[1]) + graceful < spec["terminationGracePeriodSeconds"]


def test_service_and_autoscaler_target_the_api_deployment() -> None:
    deployment = _one("Deployment", "sse-relay-api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _one("Service", "sse-relay-api")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = _one("HorizontalPodAutoscaler", "sse-relay-api")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "sse-relay-api")
    assert "replicas" in deployment["spec"]


@pytest.mark.parametrize("deployment", ["sse-relay-api", "sse-relay-worker"])
def test_pods_get_settings_from_the_configmap_and_secrets_only_from_the_secret(deployment: str) -> None:
    container = _container(deployment)
    sources = [next(iter(source)) + ":" + next(iter(source.values()))["name"] for source in container["envFrom"]]
    assert sources == ["configMapRef:sse-relay-config", "secretRef:sse-relay-secrets"]
    assert "env" not in container
    secret_names = {"DATABASE_URL", "OPENAI_API_KEY", "DASHSCOPE_API_KEY", "SSE_RELAY_API_KEYS"}
    assert not secret_names & set(_one("ConfigMap", "sse-relay-config")["data"])


def test_redis_and_postgres_urls_point_at_the_external_service_names(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _pod_settings(monkeypatch)
    secret = _one("Secret", "sse-relay-secrets")["stringData"]
    external = {d["metadata"]["name"] for _, d in _documents() if d["kind"] == "Service"}
    redis_host = settings.redis_url.split("//", 1)[1].split(":")[0]
    postgres_host = secret["DATABASE_URL"].split("@", 1)[1].split(":")[0]
    assert {redis_host, postgres_host} <= external
    assert all(value == "REPLACE_ME" or "REPLACE_ME" in value for value in secret.values())
