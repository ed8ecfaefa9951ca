"""Deployment files: the Kubernetes manifests are valid API objects and, like docker-compose.yml, set only settings
the code reads (and every one the shape needs); the gateway refuses a weak URL-signing secret. No network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from inference_service.settings import InferenceSettings

ROOT = Path(__file__).resolve().parent.parent
K8S_BASE = ROOT / "deploy" / "k8s" / "base"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The oldest Kubernetes the manifests promise (gRPC probes are GA since 1.27) and the newest the wheel knows.
K8S_VERSIONS = ("1.27", latest_version())

# Which settings class reads the environment of a container that runs `python -m MODULE`.
PARTS: dict[str, type[BaseSettings]] = {"gateway": GatewaySettings, "inference_service": InferenceSettings}
# What the multi-replica shape cannot run without (the code's defaults are the single-machine ones: loopback,
# SQLite and files in data_dir, in-memory rate limits, a secret generated per replica).
REQUIRED: dict[type[BaseSettings], set[str]] = {
    GatewaySettings: {
        "host", "public_url", "inference_url", "database_url", "redis_url", "storage_url", "url_signing_secret",
    },
    InferenceSettings: {"host", "triton_url"},
}
# Variables other than REMOVAI_* that the parts' libraries read: the S3 client's standard credentials.
LIBRARY_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# A compose value that the environment must supply, with no default: ${NAME:?message}.
_REQUIRED_VARIABLE = re.compile(r"\$\{[A-Z0-9_]+:\?[^}]*\}")


def _env_names(settings: type[BaseSettings]) -> dict[str, str]:
    """Environment variable -> field name, exactly as pydantic-settings derives them."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper(): name for name in settings.model_fields}


def _part(command: list[str]) -> type[BaseSettings] | None:
    """The settings class of a container command `python -m gateway ...`, or None for other images."""
    if len(command) >= 3 and command[0] == "python" and command[1] == "-m" and command[2] in PARTS:
        return PARTS[command[2]]
    return None


def _flags(command: list[str]) -> set[str]:
    """Field names set by `--kebab-case` flags in a command."""
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in command if arg.startswith("--")}


def _check_settings(where: str, part: type[BaseSettings], env: set[str], flags: set[str]) -> list[str]:
    """Problems with one container: unknown REMOVAI_* or other variables, unknown flags, missing settings."""
    known = _env_names(part)
    problems = [f"{where}: {name} is not a setting of {part.__name__}" for name in sorted(env - set(known) - LIBRARY_ENV)]
    problems += [f"{where}: --{flag} is not a setting of {part.__name__}" for flag in sorted(flags - set(part.model_fields))]
    given = {known[name] for name in env if name in known} | flags
    problems += [f"{where}: {name} is not set" for name in sorted(REQUIRED[part] - given)]
    return problems


# --- Kubernetes -------------------------------------------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    with open(K8S_BASE / "kustomization.yaml") as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


def _resources() -> Iterator[tuple[str, dict[str, Any]]]:
    """(file name, object) for every object of every file the kustomization lists."""
    for name in _kustomization()["resources"]:
        with open(K8S_BASE / name) as f:
            for document in yaml.safe_load_all(f):
                if document:
                    yield name, document


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for _, obj in _resources() if obj["kind"] == kind}


def _containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, deployment in _by_kind("Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield f"Deployment {name}, container {container['name']}", container


def test_kustomization_lists_every_manifest() -> None:
    """Every YAML file in the base is a resource of kustomization.yaml, and every resource exists."""
    on_disk = {path.name for path in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(_kustomization()["resources"]) == sorted(on_disk)
    assert _kustomization()["apiVersion"] == "kustomize.config.k8s.io/v1beta1"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_are_valid_kubernetes_objects(version: str) -> None:
    """Each object validates against the Kubernetes JSON schemas shipped in kubernetes-validate, strictly
    (an unknown or misspelt field fails)."""
    problems = []
    count = 0
    for name, obj in _resources():
        count += 1
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name} {obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert count >= 14, "fewer objects than the shape has"
    assert problems == []


def test_manifests_name_only_settings_the_code_reads() -> None:
    """Each container that runs a part sets only REMOVAI_* variables (or flags) its settings class reads,
    and every setting the shape needs, from its ConfigMap or Secret references."""
    config_maps = _by_kind("ConfigMap")
    problems: list[str] = []
    parts_seen = set()
    for where, container in _containers():
        command = [*container.get("command", []), *container.get("args", [])]
        part = _part(command)
        if part is None:
            continue
        parts_seen.add(part)
        env = {item["name"] for item in container.get("env", [])}
        for source in container.get("envFrom", []):
            ref = source["configMapRef"]["name"]
            assert ref in config_maps, f"{where}: ConfigMap {ref} is not in the base"
            env |= set(config_maps[ref]["data"])
        problems += _check_settings(where, part, env, _flags(command))
    assert parts_seen == set(PARTS.values())
    assert problems == []


def test_gateway_secrets_come_from_a_secret() -> None:
    """Credentials and the URL-signing secret are Secret references, never literal values in the manifests."""
    (gateway,) = [c for where, c in _containers() if _part(c.get("args", [])) is GatewaySettings]
    by_name = {item["name"]: item for item in gateway["env"]}
    for name in (
        "REMOVAI_GATEWAY_DATABASE_URL", "REMOVAI_GATEWAY_REDIS_URL", "REMOVAI_GATEWAY_STORAGE_URL",
        "REMOVAI_GATEWAY_URL_SIGNING_SECRET",
    ):
        ref = by_name[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "removai-gateway-secrets"
        assert not ref.get("optional", False), f"{name} must be required: a missing key stops the pod"
    assert all("value" not in item for item in gateway["env"])
    assert _by_kind("Secret") == {}, "the base must not carry secrets (or placeholders for them)"


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port as a number (probes may name a container port)."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def test_probes_services_and_autoscalers_fit_together() -> None:
    """Triton is ready on /v2/health/ready (8000), the inference service by grpc.health.v1 on 50051, the
    gateway on /healthz; every Service, HPA and PDB selects or targets an existing Deployment; the headless
    Services are what the gRPC URLs name."""
    deployments = _by_kind("Deployment")
    containers = {name: d["spec"]["template"]["spec"]["containers"][0] for name, d in deployments.items()}

    triton = containers["triton"]["readinessProbe"]
    assert triton["httpGet"]["path"] == "/v2/health/ready"
    assert _port(containers["triton"], triton["httpGet"]["port"]) == 8000
    assert containers["inference"]["readinessProbe"]["grpc"] == {"port": 50051}
    gateway = containers["gateway"]["readinessProbe"]["httpGet"]
    assert (gateway["path"], _port(containers["gateway"], gateway["port"])) == ("/healthz", 8080)
    for name, container in containers.items():
        assert "livenessProbe" in container, name

    pod_labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for name, deployment in deployments.items():
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels[name].items()

    def selected(selector: dict[str, str]) -> list[str]:
        return [name for name, labels in pod_labels.items() if selector.items() <= labels.items()]

    services = _by_kind("Service")
    assert {name for name, s in services.items() if s["spec"].get("clusterIP") == "None"} == {
        "inference-headless", "triton-headless",
    }
    for name, service in services.items():
        assert len(selected(service["spec"]["selector"])) == 1, name
    for name, budget in _by_kind("PodDisruptionBudget").items():
        assert len(selected(budget["spec"]["selector"]["matchLabels"])) == 1, name
    autoscalers = _by_kind("HorizontalPodAutoscaler")
    assert {hpa["spec"]["scaleTargetRef"]["name"] for hpa in autoscalers.values()} == set(deployments)
    for hpa in autoscalers.values():
        assert hpa["spec"]["minReplicas"] >= 2, "one replica of a part is a single point of failure"

    # The gRPC URLs name the headless Services on ports they expose, for the client's round_robin over DNS.
    config_maps = _by_kind("ConfigMap")
    for config_name, key, service_name in (
        ("removai-inference", "REMOVAI_INFERENCE_TRITON_URL", "triton-headless"),
        ("removai-gateway", "REMOVAI_GATEWAY_INFERENCE_URL", "inference-headless"),
    ):
        match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", config_maps[config_name]["data"][key])
        assert match is not None
        assert match[1] == service_name
        assert int(match[2]) in {p["port"] for p in services[service_name]["spec"]["ports"]}

    claims = _by_kind("PersistentVolumeClaim")
    volumes = deployments["triton"]["spec"]["template"]["spec"]["volumes"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v} <= set(claims)


# --- docker-compose.yml -----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    with open(COMPOSE_FILE) as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


def test_compose_names_only_settings_the_code_reads() -> None:
    """The gateway and inference services set only settings their code reads, and every one the shape needs;
    the shape is Triton, the inference service, two gateways, PostgreSQL, Redis and MinIO with its bucket."""
    services = _compose()["services"]
    assert {"triton", "inference", "gateway", "postgres", "redis", "minio", "minio-init"} <= set(services)
    assert services["gateway"]["deploy"]["replicas"] == 2
    problems: list[str] = []
    parts_seen = set()
    for name, service in services.items():
        command = service.get("command", [])
        assert isinstance(command, list), f"{name}: use the list form so that arguments are unambiguous"
        part = _part(command)
        if part is None:
            continue
        parts_seen.add(part)
        problems += _check_settings(f"service {name}", part, set(service.get("environment", {})), _flags(command))
    assert parts_seen == set(PARTS.values())
    assert problems == []
    assert services["gateway"]["environment"]["REMOVAI_GATEWAY_STORAGE_URL"].startswith("s3://")


def test_compose_dependencies_and_builds_exist() -> None:
    """Every depends_on names a service, a service_healthy condition one with a healthcheck, every build
    context has a Dockerfile and every bind mount exists, so `docker compose up` gets past parsing."""
    services = _compose()["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        conditions = depends_on if isinstance(depends_on, dict) else {key: {} for key in depends_on}
        for dependency, spec in conditions.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), f"{name}: {source}"
            else:
                assert source in _compose()["volumes"], f"{name}: volume {source} is not declared"


def test_compose_has_no_default_secrets() -> None:
    """Every password, key and secret in compose comes from the environment with no default (${NAME:?...}),
    so `docker compose up` stops with a message instead of running with a placeholder."""
    secret_like = re.compile(r"PASSWORD|SECRET")
    found = 0
    for name, service in _compose()["services"].items():
        for variable, value in service.get("environment", {}).items():
            if secret_like.search(variable):
                found += 1
                assert _REQUIRED_VARIABLE.fullmatch(str(value)), f"{name}: {variable}={value!r}"
    assert found >= 5
    database_url = _compose()["services"]["gateway"]["environment"]["REMOVAI_GATEWAY_DATABASE_URL"]
    password = re.fullmatch(r"postgresql\+asyncpg://[^:]+:(.+)@postgres:5432/removai", database_url)
    assert password is not None and _REQUIRED_VARIABLE.fullmatch(password[1])


def _literal_env() -> Iterator[tuple[str, type[BaseSettings], dict[str, str]]]:
    """(where, settings class, literal variables) of every container that runs a part, in compose and the
    manifests; values that compose interpolates or that come from a Secret are left out."""
    config_maps = _by_kind("ConfigMap")
    for where, container in _containers():
        part = _part([*container.get("command", []), *container.get("args", [])])
        if part is not None:
            env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]]["data"])
            yield where, part, env
    for name, service in _compose()["services"].items():
        part = _part(service.get("command", []))
        if part is not None:
            env = {key: str(value) for key, value in service.get("environment", {}).items() if "${" not in str(value)}
            yield f"compose service {name}", part, env


def test_deployment_values_pass_the_settings_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The values compose and the manifests give (ports, URLs, booleans) are ones the parts accept at start."""
    checked = 0
    for where, part, env in _literal_env():
        with monkeypatch.context() as patch:
            for name in [name for name in os.environ if name.startswith("REMOVAI_")]:
                patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            try:
                settings = part()
            except ValidationError as exc:
                pytest.fail(f"{where}: {exc}")
        assert settings.model_dump()["host"] == "0.0.0.0", where
        checked += 1
    assert checked == 4


# --- the URL-signing secret ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "change-me-to-a-long-random-string",     # the old docker-compose.yml value: 33 bytes
        "CHANGEME_please_0123456789abcdefghij",
        "your-secret-here-0123456789abcdefghij",
        "secret",
        "0123456789abcdef0123456789abcde",       # 31 bytes
        "x" * 64,
        "ab" * 20,
    ],
)
def test_weak_url_signing_secret_is_refused(secret: str) -> None:
    """A secret shorter than 32 bytes, a template placeholder or a repeated pattern fails validation."""
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(url_signing_secret=secret)
    (error,) = caught.value.errors()
    assert error["loc"] == ("url_signing_secret",)
    assert "input_value" not in str(caught.value), "the rejected value must not be echoed"


@pytest.mark.parametrize("secret", ["", "0f" * 4 + "9c1d2e3a4b5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5", "ключ-данных-中文字节-éàü"])
def test_empty_or_random_url_signing_secret_is_accepted(secret: str) -> None:
    """Empty (generate one into data_dir) and a random key of 32 bytes or more are accepted as given."""
    assert GatewaySettings(url_signing_secret=secret).url_signing_secret == secret


def test_gateway_with_placeholder_secret_exits_2_naming_the_setting() -> None:
    """`python -m gateway` with a placeholder secret exits 2 before binding, naming the setting, without
    printing the value."""
    placeholder = "change-me-to-a-long-random-string"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--port", "0"],
        env={**os.environ, "REMOVAI_GATEWAY_URL_SIGNING_SECRET": placeholder},
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert "url_signing_secret" in result.stderr
    assert "placeholder" in result.stderr
    assert placeholder not in result.stderr + result.stdout
