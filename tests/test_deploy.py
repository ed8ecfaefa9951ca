"""Deployment files: the Kubernetes manifests, as files and as kustomize renders the base, the overlays and the
Jobs, are valid API objects, hardened, and sized and configured to match the code's own limits; like
docker-compose.yml they set only settings the code reads (and every one the shape needs); the Jobs' commands
run; the gateway refuses a weak URL-signing secret. No network, no cluster."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from alembic.script import ScriptDirectory
from kubernetes_validate.utils import latest_version
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from gateway import admin
from gateway.http.uploads import ENVELOPE_BYTES
from gateway.settings import MIB, GatewaySettings
from gateway.store.database import alembic_config
from inference_service.settings import InferenceSettings
from tests import kustomize

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
    """Triton is ready when its default model is (/v2/models/isnet/ready on 8000), the inference service by grpc.health.v1 on 50051, the
    gateway on /healthz; every Service, HPA and PDB selects or targets an existing Deployment; the headless
    Services are what the gRPC URLs name."""
    deployments = _by_kind("Deployment")
    containers = {name: d["spec"]["template"]["spec"]["containers"][0] for name, d in deployments.items()}

    triton = containers["triton"]["readinessProbe"]
    assert triton["httpGet"]["path"] == "/v2/models/isnet/ready"
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


# --- Kubernetes as rendered by kustomize: the base, every overlay and the Jobs ------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", kustomize.kustomizations())
def test_every_kustomization_renders_to_valid_objects(directory: str, version: str) -> None:
    """`kubectl kustomize` renders the base, every overlay and each Job's kustomization, and every object it
    prints validates strictly against the Kubernetes schemas (so patches, replacements and components
    produce well-formed objects, not only the files they start from)."""
    objects = kustomize.render(directory)
    assert objects, directory
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert problems == []


def test_the_shipped_kustomizations_are_found() -> None:
    """The list the other tests walk holds the base, the production overlay and both Jobs."""
    assert set(kustomize.SHIPPED) <= set(kustomize.kustomizations())


@pytest.mark.parametrize("directory", kustomize.SHIPPED)
def test_every_pod_is_hardened(directory: str) -> None:
    """Every pod of what we ship runs as uid/gid 10001 (never root), under the RuntimeDefault seccomp profile,
    without a service-account token; every container has a read-only root file system, no privilege
    escalation, no capabilities, a memory limit and requests; every emptyDir has a sizeLimit."""
    problems: list[str] = []
    templates = list(kustomize.pod_templates(kustomize.render(directory)))
    assert templates, directory
    for where, template in templates:
        spec = template["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        pod_context = spec.get("securityContext", {})
        expected = {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        for key, value in expected.items():
            if pod_context.get(key) != value:
                problems.append(f"{where}: securityContext.{key} is {pod_context.get(key)!r}, not {value!r}")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{where}: {key}")
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume and "sizeLimit" not in volume["emptyDir"]:
                problems.append(f"{where}: emptyDir {volume['name']} has no sizeLimit")
            if "hostPath" in volume:
                problems.append(f"{where}: hostPath volume {volume['name']}")
        for container in kustomize.containers(template):
            name = f"{where} container {container['name']}"
            context = container.get("securityContext", {})
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: the root file system is writable")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            if context.get("capabilities") != {"drop": ["ALL"]}:
                problems.append(f"{name}: capabilities are {context.get('capabilities')!r}, not drop ALL")
            if context.get("privileged") or context.get("runAsUser", 10001) == 0:
                problems.append(f"{name}: privileged or root")
            resources = container.get("resources", {})
            if "memory" not in resources.get("limits", {}):
                problems.append(f"{name}: no memory limit")
            if not {"cpu", "memory"} <= set(resources.get("requests", {})):
                problems.append(f"{name}: no cpu and memory requests")
    assert problems == []


def _container_port(container: dict[str, Any], name: str) -> int:
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(number)


def test_gateway_metrics_are_on_their_own_port_that_no_service_exposes() -> None:
    """The gateway serves /metrics on metrics_port 9102 (a named container port), the Prometheus annotations
    of every part point at its `metrics` port, and the gateway's Service (what the Ingress reaches) has only
    the API port: nothing routed from outside can reach 9102."""
    objects = kustomize.render("overlays/production")
    deployments = kustomize.by_kind(objects, "Deployment")
    config = kustomize.by_kind(objects, "ConfigMap")["removai-gateway"]["data"]
    gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert config["REMOVAI_GATEWAY_METRICS_PORT"] == "9102"
    assert "metrics_port" in GatewaySettings.model_fields
    assert _container_port(gateway, "metrics") == 9102
    assert _container_port(gateway, "http") == int(config["REMOVAI_GATEWAY_PORT"]) != 9102
    for name, deployment in deployments.items():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert int(annotations["prometheus.io/port"]) == _container_port(container, "metrics"), name

    service = kustomize.by_kind(objects, "Service")["removai-gateway"]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    (ingress,) = kustomize.by_kind(objects, "Ingress").values()
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": "removai-gateway", "port": {"name": "http"}}]


def test_gateway_spool_holds_one_account_at_its_cap() -> None:
    """The gateway's spool emptyDir (data_dir) holds at least the uploads one account may have in flight on
    one replica: max_concurrent_uploads_per_account batches of max_batch_images files plus a bg_image, each
    max_upload_bytes (the figure the manifest's comment explains; 2,100 MiB with the defaults)."""
    defaults = GatewaySettings.model_fields
    one_account = (
        defaults["max_concurrent_uploads_per_account"].default
        * (defaults["max_batch_images"].default + 1)
        * defaults["max_upload_bytes"].default
    )
    objects = kustomize.render("base")
    config = kustomize.by_kind(objects, "ConfigMap")["removai-gateway"]["data"]
    spec = kustomize.by_kind(objects, "Deployment")["gateway"]["spec"]["template"]["spec"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == config["REMOVAI_GATEWAY_DATA_DIR"]]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert kustomize.quantity_bytes(volume["emptyDir"]["sizeLimit"]) >= 4 * one_account


# Measured with the pipeline the service runs (a 50 MP RGBA PNG over a 50 MP background, the fake segmenter
# holding the calls where Triton would, 2026-12-07): the process at rest, what one call waiting for the model
# holds besides its compressed bytes, and what a pipeline worker adds while it cuts out and encodes one.
_SERVICE_AT_REST = 86 * MIB
_DECODED_PER_WAITING_CALL = 640 * MIB
_PER_WORKER_STAGE = 370 * MIB


def test_inference_memory_limit_covers_its_worst_case() -> None:
    """The inference service's limit covers its worst case in flight: the compressed images and backgrounds
    all calls hold (max_buffered_bytes, or every call full at max_image_bytes if that is less; max_image_bytes
    set to the gateway's max_upload_bytes, the most it sends), max_concurrent_rpcs calls' decoded pixels at
    max_pixels, plus each pipeline worker's cut-out and encode."""
    objects = kustomize.render("base")
    config = kustomize.by_kind(objects, "ConfigMap")["removai-inference"]["data"]
    settings = InferenceSettings(
        max_image_bytes=int(config["REMOVAI_INFERENCE_MAX_IMAGE_BYTES"]),
        max_concurrent_rpcs=int(config["REMOVAI_INFERENCE_MAX_CONCURRENT_RPCS"]),
        max_buffered_bytes=int(config["REMOVAI_INFERENCE_MAX_BUFFERED_BYTES"]),
        pipeline_workers=int(config["REMOVAI_INFERENCE_PIPELINE_WORKERS"]),
    )
    assert settings.max_image_bytes == GatewaySettings.model_fields["max_upload_bytes"].default
    assert settings.max_pixels == 50_000_000, "the measured figures are for 50 MP"
    compressed = min(settings.max_buffered_bytes, settings.max_concurrent_rpcs * 2 * settings.max_image_bytes)
    worst = (
        _SERVICE_AT_REST
        + compressed
        + settings.max_concurrent_rpcs * _DECODED_PER_WAITING_CALL
        + settings.pipeline_workers * _PER_WORKER_STAGE
    )
    assert worst == 6_074 * MIB  # the sum docs/operations.md "Memory limits" and the manifest's comment write out
    container = kustomize.by_kind(objects, "Deployment")["inference"]["spec"]["template"]["spec"]["containers"][0]
    assert kustomize.quantity_bytes(container["resources"]["limits"]["memory"]) >= worst
    assert int(container["resources"]["requests"]["cpu"]) == settings.pipeline_workers, "one worker per core"


def test_production_overlay_matches_the_gateway() -> None:
    """The production Ingress: TLS from cert-manager for the one public host, which is also the gateway's
    public_url; a body limit equal to the largest body the gateway accepts (a full batch plus a background
    image plus the form); timeouts the gateway's own outlast; uploads streamed; images from the registry."""
    objects = kustomize.render("overlays/production")
    (ingress,) = kustomize.by_kind(objects, "Ingress").values()
    annotations = ingress["metadata"]["annotations"]
    (rule,) = ingress["spec"]["rules"]
    host = rule["host"]
    assert ingress["spec"]["tls"] == [{"hosts": [host], "secretName": "removai-tls"}]
    assert annotations["cert-manager.io/cluster-issuer"]
    config = kustomize.by_kind(objects, "ConfigMap")["removai-gateway"]["data"]
    assert config["REMOVAI_GATEWAY_PUBLIC_URL"] == f"https://{host}"

    defaults = {name: field.default for name, field in GatewaySettings.model_fields.items()}
    largest_body = (defaults["max_batch_images"] + 1) * defaults["max_upload_bytes"] + ENVELOPE_BYTES
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == f"{largest_body // MIB}m"
    assert largest_body % MIB == 0
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    longest_silence = defaults["fetch_total_timeout_s"] + defaults["inference_timeout_s"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > longest_silence
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) > defaults["upload_idle_timeout_s"]

    release = {c["image"] for d in ("jobs/first-account", "jobs/migrate") for _, t in kustomize.pod_templates(
        kustomize.render(d)) for c in kustomize.containers(t)}
    images = {c["image"] for _, t in kustomize.pod_templates(objects) for c in kustomize.containers(t)}
    assert images == {"registry.example.com/removai:0.1.0", "registry.example.com/removai-triton:0.1.0", "postgres:16"}
    assert release == {"registry.example.com/removai:0.1.0"}, "the Jobs run the gateway's image"


def test_public_host_is_set_in_one_place(tmp_path: Path) -> None:
    """Changing the host of the Ingress rule (and nothing else) moves the TLS host and the gateway's
    public_url with it: the example host is left nowhere in the rendered overlay."""
    copy = tmp_path / "k8s"
    shutil.copytree(kustomize.K8S, copy)
    ingress = copy / "overlays" / "production" / "ingress.yaml"
    text = ingress.read_text()
    assert text.count("- host: removai.example.com") == 1
    ingress.write_text(text.replace("- host: removai.example.com", "- host: cutouts.acme.test"))
    rendered = yaml.safe_dump_all(kustomize.render_path(copy / "overlays" / "production"))
    assert "removai.example.com" not in rendered
    objects = list(yaml.safe_load_all(rendered))
    assert kustomize.by_kind(objects, "Ingress")["removai"]["spec"]["tls"][0]["hosts"] == ["cutouts.acme.test"]
    config = kustomize.by_kind(objects, "ConfigMap")["removai-gateway"]["data"]
    assert config["REMOVAI_GATEWAY_PUBLIC_URL"] == "https://cutouts.acme.test"


def _job_command(directory: str) -> tuple[list[str], dict[str, Any]]:
    (job,) = kustomize.by_kind(kustomize.render(directory), "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return [*container.get("command", []), *container["args"]], container


def test_migrate_and_first_account_jobs_run_against_a_database(tmp_path: Path) -> None:
    """The two Jobs' commands, run as written (on SQLite here): the migration Job brings an empty database to
    the head revision, then the first-account Job creates an account and prints its id and API key on
    stdout, where `kubectl logs` reads them. Both read only the gateway's REMOVAI_GATEWAY_DATABASE_URL."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'removai.db'}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("REMOVAI_")}
    bin_dir = Path(sys.executable).parent

    for directory in ("jobs/migrate", "jobs/first-account"):
        _, container = _job_command(directory)
        assert [item["name"] for item in container["env"]] == [admin.DATABASE_URL_VARIABLE]
        assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "removai-gateway-secrets", "key": "database-url"}

    command, _ = _job_command("jobs/migrate")
    assert command[0] == "python"
    migrated = subprocess.run(
        [sys.executable, *command[1:]], env={**env, admin.DATABASE_URL_VARIABLE: url}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with sqlite3.connect(tmp_path / "removai.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]

    command, _ = _job_command("jobs/first-account")
    assert command[:3] == ["removai-admin", "accounts", "create"]
    created = subprocess.run(
        [str(bin_dir / command[0]), *command[1:]], env={**env, admin.DATABASE_URL_VARIABLE: url}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert created.returncode == 0, created.stderr
    assert re.fullmatch(r"account_id: acct_\w+\napi_key: rmv_\S+\n", created.stdout), created.stdout


def test_postgres_backup_script_dumps_and_keeps_the_newest(tmp_path: Path) -> None:
    """The backup CronJob's script, run with a stand-in pg_dump: it hands libpq the gateway's URL without the
    asyncpg driver name and query, writes the dump under a temporary name then its final one, and keeps the
    newest KEEP dumps."""
    (cronjob,) = kustomize.by_kind(kustomize.render("overlays/production"), "CronJob").values()
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["bash", "-c"]
    assert {"name": "removai-gateway-secrets", "key": "database-url"} in [
        item["valueFrom"]["secretKeyRef"] for item in container["env"] if "valueFrom" in item
    ]
    backups = tmp_path / "backups"
    backups.mkdir()
    for age, name in enumerate(["removai-20250103T031700Z.dump", "removai-20250102T031700Z.dump",
                                "removai-20250101T031700Z.dump"], start=1):
        (backups / name).write_bytes(b"old")
        os.utime(backups / name, (time.time() - age * 86400,) * 2)
    stand_in = tmp_path / "bin" / "pg_dump"
    stand_in.parent.mkdir()
    # Records its arguments and writes the file it is given, as pg_dump --file does.
    stand_in.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_LOG"\n'
                        'for a in "$@"; do case $a in --file=*) echo dump > "${a#--file=}";; esac; done\n')
    stand_in.chmod(0o755)
    result = subprocess.run(
        container["command"], capture_output=True, text=True, timeout=60, check=False,
        env={
            "PATH": f"{stand_in.parent}:{os.environ['PATH']}", "ARGS_LOG": str(tmp_path / "args"),
            "DATABASE_URL": "postgresql+asyncpg://removai:s3cret@db.internal:5432/removai?ssl=require",
            "BACKUP_DIR": str(backups), "KEEP": "2",
        },
    )
    assert result.returncode == 0, result.stderr
    arguments = (tmp_path / "args").read_text().splitlines()
    assert "--dbname=postgresql://removai:s3cret@db.internal:5432/removai" in arguments
    assert "--format=custom" in arguments
    kept = sorted(path.name for path in backups.iterdir())
    assert len(kept) == 2 and "removai-20250103T031700Z.dump" in kept, kept
    (new,) = [name for name in kept if name != "removai-20250103T031700Z.dump"]
    assert re.fullmatch(r"removai-\d{8}T\d{6}Z\.dump", new)
    assert (backups / new).read_text() == "dump\n"


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
