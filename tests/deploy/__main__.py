"""`make deploy-test`: what we ship for production, started and driven for real under podman.

Steps (each printed with its time): install podman, runc and debootstrap when missing; build stand-ins for the
upstream base images (no registry is reachable: tests/deploy/standins/README.md); build the project's images from
its Dockerfiles; bring docker-compose.yml up in a network namespace made for the test (every byte on its loopback,
tests/deploy/compose.loopback.yml); create the first account as docs/deployment.md tells operators; drive real traffic
(tests/deploy/drive.py) including a kill of the inference container mid-request; then the Kubernetes manifests'
pod templates under `podman kube play` with one real request. Everything it made is removed at the end, also
when a step fails. Traffic goes only to 127.0.0.1 inside the test's own namespace.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.drive import KILL_REQUEST

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
BIN = Path(sys.executable).parent
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_IMAGE = "localhost/removai-standin-debian:bookworm"
# Stand-in folder -> the upstream name it is tagged with (what the Dockerfiles and the compose file name).
STANDIN_TAGS = {
    "python": "docker.io/library/python:3.11-slim",
    "triton": "nvcr.io/nvidia/tritonserver:24.08-py3",
    "postgres": "docker.io/library/postgres:16",
    "redis": "docker.io/library/redis:7",
    "minio": "docker.io/minio/minio:RELEASE.2024-10-13T13-34-11Z",
}
# The project's images, as docker-compose.yml and the manifests name them: (tag, Dockerfile folder).
PROJECT_IMAGES = {"localhost/removai:latest": ROOT, "localhost/removai-triton:latest": ROOT / "deploy" / "triton"}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STEP_TIMEOUT_S = 900


class DeployTestError(RuntimeError):
    """A step failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[deploy-test] {message}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    started = time.monotonic()
    log(f"{name} ...")
    try:
        yield
    except BaseException:
        log(f"{name}: FAILED after {time.monotonic() - started:.1f} s")
        raise
    log(f"{name}: ok ({time.monotonic() - started:.1f} s)")


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def run(
    command: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True, capture: bool = False,
    timeout: float = STEP_TIMEOUT_S, cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run a command (argv only: secrets travel in `env`), its output shown unless captured."""
    result = subprocess.run(
        list(command), check=False, env=env or podman_env(), cwd=cwd, text=True, timeout=timeout,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
    )
    if check and result.returncode != 0:
        tail = (result.stdout or "")[-3000:] if capture else ""
        raise DeployTestError(f"{' '.join(command[:4])} ... exited {result.returncode}\n{tail}")
    return result


def wait_until(what: str, ready: Callable[[], bool], timeout_s: float, every_s: float = 1.0) -> None:
    """Poll `ready` (a real check: a healthcheck run, a container's state) until it holds or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise DeployTestError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)


class Cleanup:
    """What the test made, undone in reverse order at the end whatever happened; a failing undo is reported and
    the rest still run."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def run(self) -> bool:
        clean = True
        with step("clean-up"):
            for what, undo in reversed(self._undo):
                try:
                    undo()
                except Exception as error:  # noqa: BLE001 - reported; the other undos still run
                    clean = False
                    log(f"  could not {what}: {error}")
        return clean


# --- tools and images -----------------------------------------------------------------------------------------


def install_tools() -> None:
    """podman, runc, debootstrap and ip from Debian's packages, installed when missing (as root)."""
    missing = [pkg for tool, pkg in (("podman", "podman"), ("runc", "runc"), ("debootstrap", "debootstrap"),
                                     ("ip", "iproute2")) if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise DeployTestError(f"missing {' '.join(missing)}; run: sudo apt-get install -y {' '.join(missing)}")
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", *missing], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def image_exists(name: str) -> bool:
    return run(["podman", "image", "exists", name], check=False, capture=True).returncode == 0


def build_base(workdir: Path) -> None:
    """Debian bookworm made with debootstrap (with Python 3.11, pip, CA certificates and curl), imported as an
    image; kept between runs on one machine (a fresh machine makes it in about a minute)."""
    if image_exists(BASE_IMAGE):
        log(f"  {BASE_IMAGE} is there already")
        return
    rootfs = workdir / "rootfs"
    run(["debootstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates,curl",
         "bookworm", str(rootfs), DEBIAN_MIRROR], capture=True)
    shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    imported = subprocess.run(["podman", "import", "--change", f"ENV PATH={DEFAULT_PATH}", "-", BASE_IMAGE], stdin=tar.stdout, env=podman_env(),
                              check=False, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        raise DeployTestError(f"podman import failed: {imported.stderr[-2000:]}")
    shutil.rmtree(rootfs, ignore_errors=True)


def build(tag: str, context: Path, containerfile: Path | None = None) -> None:
    run(["podman", "build", "--network=host", "--pull=never", "--quiet", "-t", tag,
         *(["-f", str(containerfile)] if containerfile else []), str(context)], capture=True)


def build_standins(workdir: Path) -> None:
    """Each stand-in from its folder, plus what its build needs from the host: the CA bundle (python) and
    hash-pinned requirement files (triton, minio)."""
    extras: dict[str, dict[str, str]] = {
        "triton": {"pytriton.lock": _pin("nvidia-pytriton")},
        "minio": {"moto.lock": _pin("moto[server]", deps=True)},
    }
    for name, tag in STANDIN_TAGS.items():
        context = workdir / f"standin-{name}"
        shutil.copytree(STANDINS / name, context)
        if name == "python":
            shutil.copy(HOST_CA_BUNDLE, context / "host-ca-bundle.crt")
        for filename, content in extras.get(name, {}).items():
            (context / filename).write_text(content)
        build(tag, context, context / "Containerfile")
        log(f"  {tag}: {image_size(tag)}")


def _pin(requirement: str, *, deps: bool = False) -> str:
    process = subprocess.run(
        [str(BIN / "uv"), "pip", "compile", "-", "--constraint", str(ROOT / "requirements.lock"), "--generate-hashes",
         "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_35", "--quiet", "--no-header",
         "--no-annotate", *([] if deps else ["--no-deps"])],
        input=requirement + "\n", check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    if process.returncode != 0:
        raise DeployTestError(f"could not pin {requirement}: {process.stderr[-2000:]}")
    return process.stdout


def image_size(tag: str) -> str:
    size = int(run(["podman", "image", "inspect", "--format", "{{.Size}}", tag], capture=True).stdout.strip())
    return f"{size / 1e6:.0f} MB"


def build_project_images() -> None:
    for tag, folder in PROJECT_IMAGES.items():
        build(tag, folder)
        log(f"  {tag}: {image_size(tag)}")


# --- the namespace and the compose stack ----------------------------------------------------------------------


def make_namespace(name: str, cleanup: Cleanup) -> None:
    run(["ip", "netns", "add", name])
    cleanup.add(f"delete network namespace {name}", lambda: run(["ip", "netns", "delete", name]))
    run(["ip", "-n", name, "link", "set", "lo", "up"])


class Compose:
    """podman-compose over docker-compose.yml and the loopback override, one project per run."""

    def __init__(self, project: str, namespace: str, secrets_env: dict[str, str]) -> None:
        self.project = project
        self._env = {**podman_env(), **secrets_env, "REMOVAI_DEPLOY_NETNS": namespace}

    def command(self, *args: str) -> list[str]:
        return [str(BIN / "podman-compose"), "--in-pod", "false", "-p", self.project, "-f",
                str(ROOT / "docker-compose.yml"), "-f", str(HERE / "compose.loopback.yml"), *args]

    def __call__(self, *args: str, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.command(*args), env=self._env, capture=capture, check=check)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def healthy(self, service: str) -> bool:
        """Runs the service's healthcheck now (no systemd here runs it on a timer)."""
        return run(["podman", "healthcheck", "run", self.container(service)], check=False,
                   capture=True).returncode == 0

    def state(self, service: str) -> str:
        result = run(["podman", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                      self.container(service)], check=False, capture=True)
        return result.stdout.strip() if result.returncode == 0 else "missing"

    def remove(self) -> None:
        self("down", "-v", "-t", "5", check=False)
        leftovers = run(["podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={self.project}"],
                        capture=True).stdout.split()
        if leftovers:
            run(["podman", "rm", "-f", "-t", "0", *leftovers], capture=True)
        volumes = run(["podman", "volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={self.project}"],
                      capture=True).stdout.split()
        if volumes:
            run(["podman", "volume", "rm", "-f", *volumes], capture=True)


def start_compose(compose: Compose) -> None:
    """Up in dependency order: podman-compose cannot start a service whose dependency is health-gated on podman
    4.3, so each waits here for its dependencies' healthchecks and starts with --no-deps."""
    compose("up", "-d", "--no-deps", "postgres", "redis", "minio", "triton")
    wait_until("postgres healthy", lambda: compose.healthy("postgres"), 120)
    compose("up", "-d", "--no-deps", "minio-init")
    wait_until("the bucket made", lambda: compose.state("minio-init") == "exited 0", 120)
    wait_until("triton healthy (the model loaded)", lambda: compose.healthy("triton"), 600, every_s=2)
    compose("up", "-d", "--no-deps", "inference")
    wait_until("inference healthy", lambda: compose.healthy("inference"), 180)
    compose("up", "-d", "--no-deps", "gateway")
    wait_until("gateway healthy", lambda: compose.healthy("gateway"), 180)


def first_account(compose: Compose) -> str:
    """Exactly the operators' command in docs/deployment.md and docker-compose.yml: `docker compose --profile admin run --rm admin accounts create`."""
    result = compose("--profile", "admin", "run", "--rm", "admin", "accounts", "create", "--name", "Deploy test", "--plan", "pro")
    for line in result.stdout.splitlines():
        if line.startswith("api_key: "):
            return line.removeprefix("api_key: ").strip()
    raise DeployTestError(f"removai-admin printed no api_key:\n{result.stdout[-2000:]}")


def drive(namespace: str, compose: Compose, api_key: str, minio_password: str) -> None:
    """The traffic, from inside the namespace (tests/deploy/drive.py, its lines passed through). When it sees a
    call in flight in the inference service it asks for the kill: this side kills the container's main process
    (SIGKILL, as the OOM killer would), waits until podman's restart policy has it healthy again, and answers."""
    env = {**os.environ, "REMOVAI_DEPLOY_API_KEY": api_key, "REMOVAI_DEPLOY_S3_PASSWORD": minio_password}
    driver = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.deploy.drive"], env=env, cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert driver.stdin is not None and driver.stdout is not None
    try:
        for line in driver.stdout:
            if line.strip() != KILL_REQUEST:
                print(line, end="", flush=True)
                continue
            killed = container_pid(compose.container("inference"))
            os.kill(killed, signal.SIGKILL)
            def restarted(gone: int = killed) -> bool:
                return container_pid(compose.container("inference")) not in (gone, 0)

            wait_until("the inference container restarted", restarted, 120)
            wait_until("the inference container healthy again", lambda: compose.healthy("inference"), 300)
            driver.stdin.write(f"restarted (pid {killed} -> {container_pid(compose.container('inference'))})\n")
            driver.stdin.flush()
        code = driver.wait(timeout=STEP_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    if code != 0:
        raise DeployTestError(f"the traffic failed (exit {code}); its output is above")


def kube_play(workdir: Path, namespace: str, compose: Compose, secret_values: dict[str, str], api_key: str,
              cleanup: Cleanup) -> None:
    """The manifests (overlay podman-test) under `podman kube play` in the same namespace, beside the compose
    stack's PostgreSQL, Redis and S3 store (its Triton, inference service and gateway stopped: the pods take their
    ports), then one real cut-out through the gateway pod with the account made earlier."""
    compose("stop", "-t", "10", "gateway", "inference", "triton")
    volume = "triton-model-repository"  # the claim's name: kube play mounts the podman volume of that name
    run(["podman", "volume", "create", volume], capture=True)
    cleanup.add(f"remove volume {volume}", lambda: run(["podman", "volume", "rm", "-f", volume], capture=True))
    run(["podman", "run", "--rm", "--network=none", "-v", f"{volume}:/models", "-v",
         f"{ROOT / 'triton_models'}:/src:ro", BASE_IMAGE, "cp", "-a", "/src/.", "/models/"], capture=True)
    # podman 4.3's kube play reads secretKeyRef from the podman secret of that name, holding a JSON object of
    # key -> base64 value (a Kubernetes Secret's `data`, without the rest of the object).
    secret_file = workdir / "secret.json"
    secret_file.write_text(json.dumps(
        {key: base64.b64encode(value.encode()).decode() for key, value in secret_values.items()}
    ))
    secret_file.chmod(0o600)
    run(["podman", "secret", "create", "removai-gateway-secrets", str(secret_file)], capture=True)
    secret_file.unlink()
    cleanup.add("remove the podman secret",
                lambda: run(["podman", "secret", "rm", "removai-gateway-secrets"], capture=True))
    rendered = run(["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / "podman-test")],
                   capture=True, env=dict(os.environ)).stdout
    # What kube play runs: the ConfigMaps and the Deployments' pod templates (Services, HPAs, PDBs and
    # NetworkPolicies are cluster objects it has no use for).
    played = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] in ("ConfigMap", "Deployment")]
    for deployment in (doc for doc in played if doc["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            _without_port_mappings(container)
    kube_file = workdir / "kube.yaml"
    kube_file.write_text(yaml.safe_dump_all(played))
    # By name, pod by pod (`kube down` stops at the first pod it cannot find, as after a failed play).
    pods = [f"{doc['metadata']['name']}-pod-0" for doc in played if doc["kind"] == "Deployment"]
    cleanup.add("remove the pods", lambda: run(["podman", "pod", "rm", "-f", "--ignore", *pods], capture=True))
    # podman 4.3 pods cannot join a namespace by path: kube play runs inside it (nsenter, network only; `ip netns
    # exec` would also remount /sys without the cgroup tree) with host networking, which is then the namespace.
    run(["nsenter", f"--net=/run/netns/{namespace}", "podman", "kube", "play", "--network", "host", str(kube_file)],
        capture=True)
    run(["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.deploy.drive", "--one-cutout"],
        env={**os.environ, "REMOVAI_DEPLOY_API_KEY": api_key})


def _without_port_mappings(container: dict[str, Any]) -> None:
    """podman turns containerPorts into port mappings, which a shared network namespace refuses (in a pod they only
    document the ports); the probes that name a port get its number instead."""
    numbers = {port.get("name"): port["containerPort"] for port in container.pop("ports", [])}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        for action in container.get(probe, {}).values():
            if isinstance(action, dict) and action.get("port") in numbers:
                action["port"] = numbers[action["port"]]


def container_pid(container: str) -> int:
    result = run(["podman", "inspect", "--format", "{{.State.Pid}}", container], capture=True, check=False)
    return int(result.stdout.strip() or 0) if result.returncode == 0 else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make deploy-test", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    started = time.monotonic()
    run_id = f"removai-deploy-{os.getpid()}"
    cleanup = Cleanup()
    ok = False
    workdir = Path(tempfile.mkdtemp(prefix="removai-deploy-"))
    try:
        with step("tools (podman, runc, debootstrap)"):
            install_tools()
        with step("stand-in base image (debootstrap)"):
            build_base(workdir)
        with step("stand-ins for the upstream images"):
            build_standins(workdir)
        with step("the project's images"):
            build_project_images()
        with step("network namespace"):
            make_namespace(run_id, cleanup)
        passwords = {name: secrets.token_hex(16) for name in ("postgres", "minio", "redis")}
        signing_secret = secrets.token_hex(32)
        compose = Compose(run_id, run_id, {
            "REMOVAI_URL_SIGNING_SECRET": signing_secret,
            "REMOVAI_POSTGRES_PASSWORD": passwords["postgres"],
            "REMOVAI_MINIO_ROOT_PASSWORD": passwords["minio"],
            "REMOVAI_REDIS_PASSWORD": passwords["redis"],
        })
        cleanup.add("remove the compose project", compose.remove)
        with step("docker-compose.yml up"):
            start_compose(compose)
        with step("first account (docker compose --profile admin run --rm admin accounts create)"):
            api_key = first_account(compose)
        with step("traffic through the compose stack"):
            drive(run_id, compose, api_key, passwords["minio"])
        with step("the manifests' pods under podman kube play (overlay podman-test)"):
            kube_play(workdir, run_id, compose, {
                "database-url": f"postgresql+asyncpg://removai:{passwords['postgres']}@127.0.0.1:5432/removai",
                "redis-url": f"redis://:{passwords['redis']}@127.0.0.1:6379/0",
                "storage-url": "s3://removai?endpoint=http://127.0.0.1:9000&region=us-east-1",
                "url-signing-secret": signing_secret,
                "aws-access-key-id": "removai",
                "aws-secret-access-key": passwords["minio"],
            }, api_key, cleanup)
        ok = True
    except (DeployTestError, subprocess.TimeoutExpired) as error:
        log(f"error: {error}")
    finally:
        clean = cleanup.run()
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"{'passed' if ok and clean else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if ok and clean else 1


if __name__ == "__main__":
    sys.exit(main())
