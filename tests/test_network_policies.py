"""The NetworkPolicies allow exactly the intended graph: computed from the rendered objects as a CNI enforces
them (policies add up; a pod no policy selects for a direction is open in that direction), with no cluster."""

from __future__ import annotations

from typing import Any

from tests import kustomize

# The namespace RemovAI runs in, as the API server labels it; namespaceSelectors are matched against it.
OUR_NAMESPACE = {"kubernetes.io/metadata.name": "removai"}
# Every kind of RemovAI pod, by its app.kubernetes.io/name: the Deployments and the backup CronJob of the
# production overlay, the pods of the two Jobs.
SOURCES = ("overlays/production", "jobs/first-account", "jobs/migrate")

PROMETHEUS = "namespace kubernetes.io/metadata.name=monitoring pods app.kubernetes.io/name=prometheus"
DNS = "namespace kubernetes.io/metadata.name=kube-system pods *"
POSTGRESQL = ("pods app.kubernetes.io/name=postgresql", "TCP/5432")
INTERNET = "cidr 0.0.0.0/0 except 10.0.0.0/8,100.64.0.0/10,169.254.0.0/16,172.16.0.0/12,192.168.0.0/16"

# (pod, direction, peer, port): everything any RemovAI pod may receive or send. A pod with no line for a
# direction may do nothing in it.
INTENDED = {
    ("gateway", "ingress", "namespace kubernetes.io/metadata.name=ingress-nginx pods *", "TCP/8080"),
    ("gateway", "ingress", PROMETHEUS, "TCP/9102"),
    ("inference", "ingress", "pods app.kubernetes.io/name=gateway", "TCP/50051"),
    ("inference", "ingress", PROMETHEUS, "TCP/9101"),
    ("triton", "ingress", "pods app.kubernetes.io/name=inference", "TCP/8001"),
    ("triton", "ingress", PROMETHEUS, "TCP/8002"),
    *((pod, "egress", DNS, port) for pod in ("gateway", "inference", "removai-admin", "postgres-backup")
      for port in ("UDP/53", "TCP/53")),
    ("gateway", "egress", "pods app.kubernetes.io/name=inference", "TCP/50051"),
    *((pod, "egress", *POSTGRESQL) for pod in ("gateway", "removai-admin", "postgres-backup")),
    ("gateway", "egress", "pods app.kubernetes.io/name=redis", "TCP/6379"),
    ("gateway", "egress", "pods app.kubernetes.io/name=minio", "TCP/9000"),
    ("gateway", "egress", "pods app.kubernetes.io/name=minio", "TCP/443"),
    ("gateway", "egress", INTERNET, "any port"),
    ("inference", "egress", "pods app.kubernetes.io/name=triton", "TCP/8001"),
}
# Which RemovAI pod may open a connection to which, on which of its ports (both ends' policies agree).
INTENDED_CONNECTIONS = {("gateway", "inference", "TCP/50051"), ("inference", "triton", "TCP/8001")}


class Pod:
    """One kind of RemovAI pod: its labels and its containers' ports (number and name, by protocol)."""

    def __init__(self, template: dict[str, Any]) -> None:
        self.labels: dict[str, str] = template["metadata"]["labels"]
        self.name = self.labels["app.kubernetes.io/name"]
        self.ports = [
            (port.get("protocol", "TCP"), int(port["containerPort"]), port.get("name"))
            for container in kustomize.containers(template) for port in container.get("ports", [])
        ]


def _pods() -> dict[str, Pod]:
    pods: dict[str, Pod] = {}
    for directory in SOURCES:
        for _, template in kustomize.pod_templates(kustomize.render(directory)):
            pod = Pod(template)
            assert pods.get(pod.name, pod).labels == pod.labels, f"two kinds of pod named {pod.name}"
            pods[pod.name] = pod
    return pods


def _policies() -> list[dict[str, Any]]:
    return list(kustomize.by_kind(kustomize.render("overlays/production"), "NetworkPolicy").values())


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions; {} selects everything) selects labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


def _selector_text(selector: dict[str, Any]) -> str:
    terms = [f"{key}={value}" for key, value in sorted(selector.get("matchLabels", {}).items())]
    terms += [
        f"{e['key']} {e['operator']} ({','.join(sorted(e.get('values', [])))})"
        for e in selector.get("matchExpressions", [])
    ]
    return ",".join(terms) or "*"


def _peer_text(peer: dict[str, Any]) -> str:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        excepted = sorted(block.get("except", []))
        return f"cidr {block['cidr']}" + (f" except {','.join(excepted)}" if excepted else "")
    pods = f"pods {_selector_text(peer.get('podSelector', {}))}"
    if "namespaceSelector" in peer:
        return f"namespace {_selector_text(peer['namespaceSelector'])} {pods}"
    return pods


def _port_text(port: dict[str, Any], pod: Pod | None) -> str:
    """PROTOCOL/NUMBER, a named port resolved against the pod that has it (where that pod is ours)."""
    protocol = port.get("protocol", "TCP")
    if "port" not in port:
        return f"{protocol}/any"
    number = port["port"]
    if isinstance(number, str) and pod is not None:
        (number,) = [n for p, n, name in pod.ports if name == number and p == protocol]
    return f"{protocol}/{number}" + (f"-{port['endPort']}" if "endPort" in port else "")


def _types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return list(spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])])


def _rules(pod: Pod, direction: str, policies: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The rules that apply to the pod's traffic in a direction, or None when no policy isolates it there."""
    selecting = [
        p for p in policies if direction.capitalize() in _types(p) and _selects(p["spec"]["podSelector"], pod.labels)
    ]
    if not selecting:
        return None
    return [rule for p in selecting for rule in p["spec"].get(direction, [])]


def allowed_graph(pods: dict[str, Pod], policies: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(pod, direction, peer, port) for everything the policies let each pod receive or send."""
    edges = set()
    for pod in pods.values():
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            rules = _rules(pod, direction, policies)
            if rules is None:
                edges.add((pod.name, direction, "anywhere", "any port"))
                continue
            for rule in rules:
                for peer in rule.get(peers_key) or [None]:
                    for port in rule.get("ports") or [None]:
                        edges.add((
                            pod.name, direction, "anywhere" if peer is None else _peer_text(peer),
                            "any port" if port is None else _port_text(port, pod if direction == "ingress" else None),
                        ))
    return edges


def _peer_matches(peer: dict[str, Any] | None, other: Pod) -> bool:
    """Whether a rule's peer covers another RemovAI pod (same namespace; an ipBlock is taken to cover no pod,
    the pod network being in the private ranges the only ipBlock excepts)."""
    if peer is None:
        return True
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer and not _selects(peer["namespaceSelector"], OUR_NAMESPACE):
        return False
    return _selects(peer.get("podSelector", {}), other.labels)


def _port_matches(port: dict[str, Any] | None, protocol: str, number: int, name: str | None) -> bool:
    if port is None:
        return True
    if port.get("protocol", "TCP") != protocol:
        return False
    wanted = port.get("port")
    if wanted is None or wanted == name:
        return True
    return isinstance(wanted, int) and wanted <= number <= port.get("endPort", wanted)


def _allows(rules: list[dict[str, Any]] | None, peers_key: str, other: Pod, port: tuple[str, int, str | None]) -> bool:
    if rules is None:
        return True
    return any(
        any(_peer_matches(peer, other) for peer in rule.get(peers_key) or [None])
        and any(_port_matches(p, *port) for p in rule.get("ports") or [None])
        for rule in rules
    )


def connections(pods: dict[str, Pod], policies: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(client, server, PROTOCOL/port) for every port of a RemovAI pod that another may open a connection
    to: the client's egress and the server's ingress must both allow it."""
    found = set()
    for client in pods.values():
        egress = _rules(client, "egress", policies)
        for server in pods.values():
            ingress = _rules(server, "ingress", policies)
            for port in server.ports:
                if _allows(egress, "to", server, port) and _allows(ingress, "from", client, port):
                    found.add((client.name, server.name, f"{port[0]}/{port[1]}"))
    return found


def test_pods_the_graph_covers() -> None:
    """The graph is computed over every kind of RemovAI pod, each carrying the label the default deny selects."""
    pods = _pods()
    assert set(pods) == {"gateway", "inference", "triton", "removai-admin", "postgres-backup"}
    assert all(pod.labels.get("app.kubernetes.io/part-of") == "removai" for pod in pods.values())


def test_policies_allow_exactly_the_intended_graph() -> None:
    """Every pod receives and sends exactly what INTENDED lists: the API port from the ingress controller's
    namespace only, each metrics port from Prometheus only, the inference service from the gateway only,
    Triton from the inference service only; egress to DNS, the data stores and (the gateway alone) public
    IPv4 addresses outside every private, shared and link-local range. Widening any policy (an empty rule, a
    new peer or port, a dropped `except`, a pod no policy isolates) fails here."""
    assert allowed_graph(_pods(), _policies()) == INTENDED


def test_only_gateway_reaches_inference_and_only_inference_reaches_triton() -> None:
    """Between RemovAI's own pods, with both ends' policies applied: the gateway may connect to the inference
    service's gRPC port and the inference service to Triton's, and nothing else to anything else (no pod
    reaches Triton's HTTP or metrics port, the gateway cannot call Triton, the Jobs reach no RemovAI pod)."""
    assert connections(_pods(), _policies()) == INTENDED_CONNECTIONS


def test_the_base_carries_the_same_policies() -> None:
    """The production overlay does not change a NetworkPolicy: the graph above is the base's too."""
    base = kustomize.by_kind(kustomize.render("base"), "NetworkPolicy")
    assert base == kustomize.by_kind(kustomize.render("overlays/production"), "NetworkPolicy")
    assert "removai-default-deny" in base
