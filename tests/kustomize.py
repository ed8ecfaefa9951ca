"""The Kubernetes manifests as an operator applies them: each kustomization under deploy/k8s rendered by
`kubectl kustomize` (the kustomize built into kubectl, so `kubectl apply -k` gives the same objects)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# What the project ships for operators, held to the hardening rules; other overlays (a test harness's) are
# rendered and validated only.
SHIPPED = ("base", "overlays/production", "jobs/first-account", "jobs/migrate")
_POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def kustomizations() -> list[str]:
    """Every directory under deploy/k8s that `kubectl apply -k` takes (components are rendered through them)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        with open(path) as f:
            kind = (yaml.safe_load(f) or {}).get("kind", "Kustomization")
        if kind == "Kustomization":
            found.append(str(path.parent.relative_to(K8S)))
    return found


def render_path(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize directory` prints."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomizations cannot be rendered")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@functools.cache
def _render_cached(directory: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_path(K8S / directory))


def render(directory: str) -> list[dict[str, Any]]:
    """The rendered objects of deploy/k8s/<directory>, rendered once per session (do not modify them)."""
    return list(_render_cached(directory))


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template) of every workload among the objects."""
    for obj in objects:
        path = _POD_TEMPLATE_PATHS.get(obj["kind"])
        if path is None:
            continue
        template: dict[str, Any] = obj
        for key in path:
            template = template[key]
        yield f"{obj['kind']}/{obj['metadata']['name']}", template


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL_SUFFIXES = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes memory or storage quantity ("10Gi", "512Mi", "1G", "1024") in bytes."""
    text = str(quantity)
    for suffixes in (_BINARY_SUFFIXES, _DECIMAL_SUFFIXES):
        for suffix, factor in suffixes.items():
            if text.endswith(suffix):
                return int(float(text[: -len(suffix)]) * factor)
    return int(text)
