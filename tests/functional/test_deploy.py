"""The deployment files (deploy/container/, deploy/kubernetes/): linted by the tools their
ecosystems use, and their numbers held together. No Docker and no cluster are needed: hadolint
reads the Dockerfile, kubernetes-validate checks each manifest against the API schemas of one
Kubernetes release, and the rest parses the files and compares what must agree (ports, user
ids, the stop timeline), reading the container's arguments with hardserve's own command line.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from hardserve import cli
from hardserve.settings import Config, load
from tests.helpers import ROOT

CONTAINER = ROOT / "deploy" / "container"
DOCKERFILE = CONTAINER / "Dockerfile"
DOCKERIGNORE = CONTAINER / "Dockerfile.dockerignore"
KUBERNETES = ROOT / "deploy" / "kubernetes"
MANIFESTS = ("deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml")

# The API schemas the manifests are checked against: a release that current managed clusters
# run and that kubernetes-validate (>=1.33, the test extra) bundles.
KUBERNETES_VERSION = "1.33.0"

# Seconds the pod keeps after the graceful timeout, for the master to reap its workers and exit.
STOP_MARGIN_S = 5

# The image's fixed unprivileged user; the manifests' runAsUser must be the same.
IMAGE_UID = 10001

TOOL_TIMEOUT_S = 60


def _tool(name: str) -> str:
    """A console script of the test extra: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


# ---- the Dockerfile, read the way Docker reads it ----


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined. Comment lines are dropped, also
    inside a continued instruction, as Docker does."""
    result: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, args = whole.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def _runtime_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last stage: the image that is run."""
    froms = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert froms, "no FROM"
    return instructions[froms[-1] :]


def _one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the runtime stage, found {len(found)}"
    return found[0]


def _exec_form(ins: Instruction) -> list[str]:
    # The exec form (a JSON array) is what makes hardserve PID 1 itself; the shell form would
    # start /bin/sh -c, which does not pass TERM on.
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), ins
    return value


def _healthcheck(ins: Instruction) -> tuple[dict[str, str], list[str]]:
    options_text, sep, command = ins.args.partition(" CMD ")
    assert sep, f"HEALTHCHECK without CMD: {ins.args}"
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", options_text))
    return options, json.loads(command)


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"unexpected duration {duration!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


def _bind_port(bind: str) -> int:
    assert not bind.startswith(("unix:", "fd://")), f"a TCP bind is expected, not {bind!r}"
    return int(bind.rsplit(":", 1)[1])


def hardserve_config(argv: list[str]) -> Config:
    """The Config the server would run with, from its arguments: parsed by hardserve's own
    click command and settings.load (unknown flags and bad values fail here), with no
    HARDSERVE_* or PORT variable from this machine."""
    context = cli.main.make_context("hardserve", list(argv))
    assert context.params["app"], argv
    return load(context.params, env={})


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    # Every rule at every level counts (style included), and neither a configuration file
    # found on this machine nor an inline `# hadolint ignore=` comment can switch one off.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    done = subprocess.run(
        [
            _tool("hadolint"),
            "--config",
            str(config),
            "--disable-ignore-pragma",
            "--failure-threshold",
            "style",
            "--no-color",
            "--format",
            "json",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert done.returncode == 0, done.stderr


def test_hadolint_finds_faults(tmp_path: Path) -> None:
    """The lint step can fail: a Dockerfile with known faults is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install hardserve\n")
    done = subprocess.run(
        [_tool("hadolint"), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    codes = {f["code"] for f in json.loads(done.stdout)}
    assert {"DL3006", "DL3013", "DL3042"} <= codes, codes
    assert done.returncode != 0


def test_dockerfile_runs_hardserve_as_pid_1_as_a_fixed_non_root_user(
    dockerfile: list[Instruction],
) -> None:
    stage = _runtime_stage(dockerfile)
    # hardserve itself is the entrypoint: it reaps its children and acts on TERM, so no init
    # shim stands between it and the container runtime.
    assert _exec_form(_one(stage, "ENTRYPOINT")) == ["hardserve"]
    code = " ".join(ins.args for ins in dockerfile).lower()
    for shim in ("tini", "dumb-init", "s6-overlay", "supervisord"):
        assert not re.search(rf"\b{shim}\b", code), f"{shim} in the Dockerfile"
    assert _one(stage, "STOPSIGNAL").args == "SIGTERM"

    # USER is numeric (runAsNonRoot can only verify a number) and is the user created above.
    user = _one(stage, "USER").args
    assert user == f"{IMAGE_UID}:{IMAGE_UID}", user
    runs = " ".join(ins.args for ins in stage if ins.keyword == "RUN")
    assert re.search(rf"groupadd\b[^&]*--gid {IMAGE_UID}\b", runs), runs
    assert re.search(rf"useradd\b[^&]*--uid {IMAGE_UID} --gid {IMAGE_UID}\b", runs), runs
    # Nothing after USER switches back to root or installs anything.
    after_user = stage[stage.index(_one(stage, "USER")) :]
    assert not [ins for ins in after_user if ins.keyword in ("RUN", "COPY", "ADD")]

    env = " ".join(ins.args for ins in stage if ins.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert _one(stage, "WORKDIR").args == "/app"


def test_dockerfile_pip_keeps_no_cache(dockerfile: list[Instruction]) -> None:
    # hadolint's DL3042 sees `pip install` but not `python -m pip --python VENV install`:
    # checked here for every pip command, so no download cache ends up in a layer.
    commands = [
        command
        for ins in dockerfile
        if ins.keyword == "RUN"
        for command in re.split(r"&&|;", ins.args)
        if re.search(r"(?<![-\w])pip3?\b", command)
    ]
    assert commands
    for command in commands:
        assert "--no-cache-dir" in command, command


def test_dockerfile_base_images_are_pinned(dockerfile: list[Instruction]) -> None:
    args = dict(
        ins.args.split("=", 1) for ins in dockerfile if ins.keyword == "ARG" and "=" in ins.args
    )
    for ins in dockerfile:
        if ins.keyword != "FROM":
            continue
        image = ins.args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        # A patch release of a slim Python image, on a named Debian release: never `latest`,
        # never a tag that moves to another Python minor or Debian release underneath us.
        assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), (
            f"line {ins.line}: {image}"
        )


def test_dockerfile_healthcheck_asks_the_admin_listener(dockerfile: list[Instruction]) -> None:
    stage = _runtime_stage(dockerfile)
    config = hardserve_config(_exec_form(_one(stage, "CMD")))
    assert config.bind == ("0.0.0.0:8000",), config.bind
    port = _bind_port(config.bind[0])
    assert _one(stage, "EXPOSE").args == str(port)
    # The admin listener stays inside the container (loopback): only the check reads it.
    assert config.admin_bind == "127.0.0.1:9191", config.admin_bind
    admin_port = _bind_port(config.admin_bind)

    options, command = _healthcheck(_one(stage, "HEALTHCHECK"))
    # No curl or wget in a slim image: the image's own Python does the check.
    assert command[0] == "python", command
    urls = re.findall(r"https?://[^'\"\s]+", " ".join(command))
    assert len(urls) == 1, command
    url = urlsplit(urls[0])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", admin_port, "/livez"), urls[0]
    # The request gives up before Docker abandons the check, so a hung server reads as
    # unhealthy rather than as a check that timed out.
    request_timeout = re.search(r"timeout=(\d+(?:\.\d+)?)", " ".join(command))
    assert request_timeout, "the health check's request has no timeout"
    assert float(request_timeout[1]) < _seconds(options["timeout"]), (request_timeout, options)
    for option in ("interval", "start-period", "retries"):
        assert option in options, f"HEALTHCHECK --{option}"


def test_dockerfile_context_holds_what_the_build_copies(dockerfile: list[Instruction]) -> None:
    """The build context is the repository root, trimmed by Dockerfile.dockerignore to an
    allow-list; every COPY from the context must be on it, and nothing else is."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the ignore file is an allow-list: it starts by ignoring all"

    def kept(path: str) -> bool:
        keep = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/").removeprefix("**/")
            parts = path.split("/")
            if any(fnmatch.fnmatch("/".join(parts[: n + 1]), bare) for n in range(len(parts))):
                keep = negated
        return keep

    copies = [ins for ins in dockerfile if ins.keyword == "COPY" and "--from" not in ins.args]
    assert copies
    for ins in copies:
        for source in shlex.split(ins.args)[:-1]:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"line {ins.line}: {source} does not exist"
            assert kept(source), f"line {ins.line}: {source} is left out of the build context"
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "security/README.md"):
        assert not kept(path), f"{path} would be sent to the builder"


# ---- the Kubernetes manifests ----


def _load(name: str) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]
    assert len(documents) == 1, f"{name}: one object per file"
    document = documents[0]
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return {name: _load(name) for name in MANIFESTS}


@pytest.fixture(scope="module")
def pod(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec = manifests["deployment.yaml"]["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["containers"]
    assert len(containers) == 1
    assert isinstance(containers[0], dict)
    return containers[0]


@pytest.mark.parametrize("name", MANIFESTS)
def test_kubernetes_manifests_validate(name: str) -> None:
    # --strict: a field the API does not have (a typo, an indentation slip) fails, instead
    # of being dropped silently by the API server.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            str(KUBERNETES / name),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # A kind it has no schema for is only a warning: require that the file was checked.
    assert "passed" in output and "WARN" not in output, output


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("hostNetworkPort", 8000, "'hostNetworkPort' was unexpected"),  # unknown (strict)
        ("protocol", 6, "6 is not of type 'string'"),  # wrongly typed
    ],
)
def test_kubernetes_validate_finds_faults(
    tmp_path: Path, field: str, value: Any, expected: str
) -> None:
    """The validation can fail: a faulty container port is reported."""
    deployment = _load("deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0][field] = value
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert expected in output, output


def test_kustomization_lists_every_manifest(container: dict[str, Any]) -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    present = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(present) == sorted(MANIFESTS)
    image_name = container["image"].split(":")[0]
    assert [i["name"] for i in kustomization["images"]] == [image_name]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or a Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert len(named) == 1, f"no container port named {port!r}"
    return int(named[0])


def _probes(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert kind in container, f"no {kind}"
        yield kind, container[kind]


def test_probe_ports_are_the_admin_port_and_the_service_the_bind_port(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    config = hardserve_config(container["args"])
    assert len(config.bind) == 1, config.bind
    bind_port = _bind_port(config.bind[0])
    # The pod's IP, not 127.0.0.1: the kubelet and the Service reach the pod from outside.
    assert config.bind[0].startswith("0.0.0.0:"), config.bind
    assert config.admin_bind is not None and config.admin_bind.startswith("0.0.0.0:")
    admin_port = _bind_port(config.admin_bind)
    assert admin_port != bind_port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": bind_port, "admin": admin_port}, ports
    # /readyz for startup and readiness, /livez for liveness: the master answers them.
    paths = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for kind, probe in _probes(container):
        handler = probe.get("httpGet")
        assert handler, f"{kind}: HTTP GET on the admin port"
        assert _port_number(container, handler["port"]) == admin_port, kind
        assert handler["path"] == paths[kind], kind
    # The Service exposes the app's port only, never the admin one.
    service_ports = manifests["service.yaml"]["spec"]["ports"]
    assert [_port_number(container, p["targetPort"]) for p in service_ports] == [bind_port]
    # Prometheus' annotation-based discovery scrapes the admin port's /metrics.
    annotations = manifests["deployment.yaml"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_grace_period_covers_prestop_and_graceful_timeout(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    config = hardserve_config(container["args"])
    # The graceful timeout is stated in the args, so the grace period is matched to a number
    # in the file rather than to a default that may change.
    assert "--graceful-timeout-s" in container["args"]
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pre_stop_s = int(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] in ("/bin/sleep", "sleep") and len(command) == 2, command
        pre_stop_s = int(command[1])
    # Long enough for the endpoint removal to reach kube-proxy and ingress controllers.
    assert pre_stop_s >= 5, pre_stop_s
    grace_s = pod["terminationGracePeriodSeconds"]
    needed = pre_stop_s + config.graceful_timeout_s + STOP_MARGIN_S
    assert grace_s >= needed, (
        f"terminationGracePeriodSeconds {grace_s} < preStop {pre_stop_s} s + "
        f"--graceful-timeout-s {config.graceful_timeout_s:g} + margin {STOP_MARGIN_S}"
    )


def test_readme_timeline_matches_the_manifest(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    """deploy/README.md walks through the stop timeline with the manifest's numbers."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    config = hardserve_config(container["args"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"][1]
    grace = pod["terminationGracePeriodSeconds"]
    for text in (
        f"preStop runs `sleep {pre_stop}`",
        f"(--graceful-timeout-s {config.graceful_timeout_s:g})",
        f"`terminationGracePeriodSeconds` ({grace})",
        f"preStop ({pre_stop}) + `--graceful-timeout-s` ({config.graceful_timeout_s:g})",
        f"t = {grace} s",
    ):
        assert text in readme, text


def test_liveness_outlasts_the_worker_timeout(container: dict[str, Any]) -> None:
    """The master replaces a worker stuck past --timeout-s on its own; the kubelet restarts the
    whole pod only if it stays unresponsive longer than that."""
    config = hardserve_config(container["args"])
    liveness = container["livenessProbe"]
    window_s = liveness["periodSeconds"] * liveness["failureThreshold"]
    assert window_s > config.timeout_s, (window_s, config.timeout_s)
    assert liveness["timeoutSeconds"] < liveness["periodSeconds"]
    # A fixed worker count: `auto` would count the node's CPUs, not the pod's CPU limit.
    assert "auto" not in container["args"]


def test_pod_runs_as_the_image_user_locked_down(
    pod: dict[str, Any], container: dict[str, Any], dockerfile: list[Instruction]
) -> None:
    uid, _, gid = _one(_runtime_stage(dockerfile), "USER").args.partition(":")
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # Service links would put HARDSERVE_PORT and the like (from a Service named hardserve)
    # in the environment, where hardserve reads its settings.
    assert pod["enableServiceLinks"] is False

    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert own.get("privileged", False) is False
    # With a read-only root, /tmp is the one writable place: an emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert set(mounts) == {"/tmp"}

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind


def test_service_pdb_and_hpa_point_at_the_deployment(
    manifests: dict[str, dict[str, Any]],
) -> None:
    deployment = manifests["deployment.yaml"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert manifests["service.yaml"]["spec"]["selector"].items() <= labels.items()
    pdb = manifests["pdb.yaml"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()

    hpa = manifests["hpa.yaml"]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    assert hpa["minReplicas"] == replicas
    # The budget never blocks every eviction: with the fewest replicas, one may still go.
    if "maxUnavailable" in pdb:
        assert pdb["maxUnavailable"] >= 1
    else:
        assert pdb["minAvailable"] < hpa["minReplicas"]
    # The autoscaler measures CPU against the container's request; without one it cannot.
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    rollout = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0
