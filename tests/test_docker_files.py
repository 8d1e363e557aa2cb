"""The docker deployment, checked without a container engine: the compose file's services and their
wiring, docker/dagster.yaml as a Dagster instance config, the run launcher's GPU rule on real DagsterRuns,
the image's install steps against pyproject.toml, and the deployment guarantees (non-root users, the
Docker socket only in the daemon, GPUs only for GPU-tagged runs, pinned images). `docker compose config`
runs too where a compose client is installed; docker/smoke-test.sh runs all of it on a real engine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
PG_ENV = {
    "DAGSTER_POSTGRES_HOST": "postgres",
    "DAGSTER_POSTGRES_USER": "dagster",
    "DAGSTER_POSTGRES_PASSWORD": "test-only",
    "DAGSTER_POSTGRES_DB": "dagster",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def instance_yaml() -> dict:
    return yaml.safe_load((DOCKER / "dagster.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _command(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else cmd.split()


def _default(value: str) -> str:
    """`${VAR:-default}` -> default (a plain value is its own default)."""
    m = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return m[1] if m else value


def _depends(service: dict) -> dict:
    deps = service.get("depends_on", {})
    return {d: {} for d in deps} if isinstance(deps, list) else deps


# ---- docker-compose.yaml ----


def test_compose_has_the_four_services_and_their_dependencies(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "user_code", "webserver", "daemon"}
    assert _default(services["postgres"]["image"]).startswith("postgres:")
    assert "healthcheck" in services["postgres"]
    assert _depends(services["user_code"]) == {"postgres": {"condition": "service_healthy"}}
    for name in ("webserver", "daemon"):
        deps = _depends(services[name])
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert "user_code" in deps, name


def test_compose_runs_dagster_processes_from_the_one_image(compose):
    s = compose["services"]
    image = s["user_code"]["image"]
    build = s["user_code"]["build"]
    assert (build["context"], build["dockerfile"]) == ("..", "docker/Dockerfile")
    assert set(build.get("args", {})) <= set(
        re.findall(r"^ARG (\w+)", (DOCKER / "Dockerfile").read_text(), re.M)
    )
    assert s["webserver"]["image"] == s["daemon"]["image"] == image
    # the run launcher starts run containers from the code location's image
    assert s["user_code"]["environment"]["DAGSTER_CURRENT_IMAGE"] == image
    code = _command(s["user_code"])
    assert code[:3] == ["dagster", "code-server", "start"]
    assert code[code.index("-m") + 1] == "a2b_pipeline.defs" and code[code.index("-a") + 1] == "defs"
    port = code[code.index("-p") + 1]
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    (grpc,) = [loc["grpc_server"] for loc in workspace["load_from"]]
    assert grpc["host"] == "user_code" and str(grpc["port"]) == port
    web, daemon = _command(s["webserver"]), _command(s["daemon"])
    assert web[0] == "dagster-webserver" and daemon[:2] == ["dagster-daemon", "run"]
    for cmd in (web, daemon):
        assert cmd[cmd.index("-w") + 1] == "/opt/dagster/dagster_home/workspace.yaml"


def test_compose_publishes_the_ui_on_localhost_only_and_keeps_secrets_out(compose):
    web = compose["services"]["webserver"]
    assert web["ports"] == ["127.0.0.1:3000:3000"]
    assert "ports" not in compose["services"]["postgres"]
    text = (DOCKER / "docker-compose.yaml").read_text()
    # the password has no default: compose refuses to start without docker/.env setting it
    assert "DAGSTER_POSTGRES_PASSWORD: ${DAGSTER_POSTGRES_PASSWORD:?" in text
    assert "WANDB_API_KEY: ${WANDB_API_KEY:-}" in text
    env_example = (DOCKER / ".env.example").read_text()
    assert re.search(r"^DAGSTER_POSTGRES_PASSWORD=$", env_example, re.M)
    assert re.search(r"^WANDB_API_KEY=$", env_example, re.M)


def test_compose_network_and_volume_match_the_run_launcher(compose, instance_yaml):
    launcher = instance_yaml["run_launcher"]["config"]
    assert compose["networks"]["a2b"]["name"] == launcher["network"]
    named = {v["name"]: k for k, v in compose["volumes"].items()}
    for mount in launcher["container_kwargs"]["volumes"]:
        volume, target = mount.split(":")[:2]
        assert volume in named, volume
        key = named[volume]
        for svc in ("user_code", "webserver", "daemon"):
            assert f"{key}:{target}" in compose["services"][svc]["volumes"], svc
    # every variable the launcher forwards to run containers is set for the daemon that launches them
    daemon_env = compose["services"]["daemon"]["environment"]
    assert set(launcher["env_vars"]) <= set(daemon_env)
    assert daemon_env["A2B_DATA_ROOT"] == "/data"


def test_docker_socket_is_mounted_only_into_the_daemon_with_a_reason(compose):
    """The daemon's run launcher starts, resumes, health-checks and stops run containers; nothing else
    gets the socket (root on the host), least of all the webserver browsers talk to."""
    with_socket = {
        name
        for name, svc in compose["services"].items()
        if any("docker.sock" in str(v) for v in svc.get("volumes", []))
    }
    assert with_socket == {"daemon"}
    assert compose["services"]["daemon"]["volumes"].count("/var/run/docker.sock:/var/run/docker.sock") == 1
    text = (DOCKER / "docker-compose.yaml").read_text()
    comment = text[: text.index("      - /var/run/docker.sock")].rsplit("volumes:", 1)[1]
    assert "# The only service with the Docker socket" in comment and "run launcher" in comment
    # the unprivileged daemon reaches the socket through its group, given in docker/.env
    assert compose["services"]["daemon"]["group_add"] == ["${DOCKER_GID:-0}"]
    assert re.search(r"^DOCKER_GID=", (DOCKER / ".env.example").read_text(), re.M)


def test_every_container_runs_as_an_unprivileged_user(compose, dockerfile):
    services = compose["services"]
    assert services["postgres"]["user"] == "postgres"
    for name in ("user_code", "webserver", "daemon"):
        assert services[name]["user"] == "a2b", name
    # the image itself ends as that user, so run containers (started from it, no `user`) are not root
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users == ["a2b"]
    assert dockerfile.rstrip().splitlines().index("USER a2b") > max(
        i for i, line in enumerate(dockerfile.splitlines()) if line.startswith(("RUN ", "COPY "))
    )
    assert re.search(r"useradd --system --uid 10001 --gid a2b .*--shell /usr/sbin/nologin a2b", dockerfile)
    assert "chown a2b:a2b /data" in dockerfile


def test_images_and_postgres_are_pinned(compose, dockerfile, pyproject):
    services = compose["services"]
    postgres = _default(services["postgres"]["image"])
    assert re.fullmatch(r"postgres:\d+\.\d+-bookworm", postgres), postgres
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M)[1]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm", base), base
    assert _default(services["user_code"]["build"]["args"]["BASE_IMAGE"]) == base
    app = _default(services["user_code"]["image"])
    assert app == f"a2b_pipeline:{pyproject['project']['version']}"
    for svc in services.values():
        assert not _default(svc["image"]).endswith(":latest")
    # compose v1 (Debian 12's docker-compose 1.29) rejects a top-level `name:`
    assert "name" not in compose and "version" not in compose


def _compose_clients() -> list[list[str]]:
    """`docker compose` (v2) and `docker-compose` (v1, Debian 12's 1.29), those that are installed."""
    clients = []
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        clients.append([docker, "compose"])
    if shutil.which("docker-compose"):
        clients.append([shutil.which("docker-compose")])
    return clients


def test_docker_compose_config_when_a_client_is_installed(tmp_path):
    clients = _compose_clients()
    if not clients:
        pytest.skip("no docker compose client here")
    env_file = tmp_path / ".env"
    env_file.write_text("DAGSTER_POSTGRES_PASSWORD=test-only\n")
    for client in clients:
        r = subprocess.run(
            [
                *client,
                "-p",
                "a2b",
                "-f",
                str(DOCKER / "docker-compose.yaml"),
                "--env-file",
                str(env_file),
                "config",
                "-q",
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, (client, r.stderr)


# ---- docker/dagster.yaml ----


@pytest.fixture
def launcher_module(monkeypatch):
    """docker/a2b_run_launcher.py as the image has it (on PYTHONPATH); needs dagster_docker (deploy extra)."""
    pytest.importorskip("dagster_docker")
    monkeypatch.syspath_prepend(str(DOCKER))
    monkeypatch.delitem(sys.modules, "a2b_run_launcher", raising=False)
    import a2b_run_launcher

    return a2b_run_launcher


def test_dagster_yaml_loads_as_an_instance_config(tmp_path, monkeypatch, instance_yaml, launcher_module):
    from dagster._core.instance.config import dagster_instance_config

    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    shutil.copy(DOCKER / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is launcher_module.CancellableRunsInstance
    pg = config["storage"]["postgres"]["postgres_db"]
    assert {pg[k]["env"] for k in ("hostname", "username", "password", "db_name")} == set(PG_ENV)
    # dagster-postgres depends on psycopg2-binary; SQLAlchemy 2.1's default postgresql driver is psycopg 3
    assert pg["scheme"] == "postgresql+psycopg2"
    assert config["run_launcher"]["class"] == "GpuTaggedDockerRunLauncher"
    assert config["instance_class"]["class"] == "CancellableRunsInstance"
    assert {"key": "gpu", "limit": 1} in config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_dagster_yaml_classes_accept_their_config(instance_yaml, launcher_module):
    """Every configurable class the instance names, with its config, validated by the class itself."""
    import importlib

    from dagster._config import validate_config

    for key in ("run_coordinator", "compute_logs", "local_artifact_storage", "run_launcher"):
        entry = instance_yaml[key]
        cls = getattr(importlib.import_module(entry["module"]), entry["class"])
        result = validate_config(cls.config_type(), entry.get("config", {}))
        assert result.success, (key, [e.message for e in result.errors])


# ---- GPUs: only for runs tagged for one ----


def _launcher(launcher_module, instance_yaml, monkeypatch, gpus: str):
    from dagster._config import process_config

    monkeypatch.setenv("A2B_RUN_GPUS", gpus)
    cls = launcher_module.GpuTaggedDockerRunLauncher
    config = process_config(cls.config_type(), instance_yaml["run_launcher"]["config"])
    assert config.success, config.errors
    return cls(**config.value)


def _run(job: str, tags: dict[str, str], assets: list[str] | None = None):
    from dagster import AssetKey
    from dagster._core.storage.dagster_run import DagsterRun

    selection = frozenset(AssetKey(a) for a in assets) if assets is not None else None
    return DagsterRun(job_name=job, tags=tags, asset_selection=selection)


def test_only_gpu_tagged_runs_get_a_gpu(launcher_module, instance_yaml, monkeypatch):
    """The launcher's container kwargs for the project's own jobs: experiment_job (run tags from
    a2b_pipeline.defs.jobs) and a UI materialization of training_run get the GPUs; data_refresh_job and
    other data-only runs get none; with A2B_RUN_GPUS=none nobody does."""
    from docker.types import DeviceRequest, HostConfig

    from a2b_pipeline.defs.jobs import DATA_ASSETS, RUN_GPU_TAGS

    assert "device_requests" not in instance_yaml["run_launcher"]["config"]["container_kwargs"]
    launcher = _launcher(launcher_module, instance_yaml, monkeypatch, "all")
    kwargs = lambda run: launcher.get_container_context(run).container_kwargs  # noqa: E731

    gpu_runs = [
        _run("experiment_job", {**RUN_GPU_TAGS, "dagster/partition": "demo"}),
        _run("__ASSET_JOB", {"dagster/partition": "demo"}, ["training_run", "best_checkpoint"]),
    ]
    for run in gpu_runs:
        (request,) = kwargs(run)["device_requests"]
        device = DeviceRequest(**request)
        assert (device["Driver"], device["Count"], device["Capabilities"]) == ("nvidia", -1, [["gpu"]])
        host = HostConfig(version="1.41", device_requests=[request], shm_size=kwargs(run)["shm_size"])
        assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    data_runs = [
        _run("data_refresh_job", {"dagster/partition": "demo"}),
        _run("__ASSET_JOB", {}, [*DATA_ASSETS, "evaluation"]),
        _run("experiment_job", {"gpu": "0"}),
    ]
    for run in data_runs:
        assert "device_requests" not in kwargs(run), run.job_name
        assert kwargs(run)["volumes"] == ["a2b_data:/data"]  # the rest of the config still applies

    none = _launcher(launcher_module, instance_yaml, monkeypatch, "none")
    assert "device_requests" not in none.get_container_context(gpu_runs[0]).container_kwargs
    two = _launcher(launcher_module, instance_yaml, monkeypatch, "0,1")
    assert two.get_container_context(gpu_runs[0]).container_kwargs["device_requests"][0]["device_ids"] == [
        "0",
        "1",
    ]


def test_gpu_settings_that_would_give_every_run_a_gpu_are_refused(launcher_module):
    cls = launcher_module.GpuTaggedDockerRunLauncher
    with pytest.raises(ValueError, match="gpus"):
        cls(container_kwargs={"device_requests": [{"driver": "nvidia", "count": -1}]})
    with pytest.raises(ValueError, match="device ids"):
        launcher_module.gpu_device_requests("first")
    assert launcher_module.gpu_device_requests("2") == [
        {"driver": "nvidia", "capabilities": [["gpu"]], "count": 2}
    ]


def test_run_workers_stop_themselves_when_canceled(launcher_module, tmp_path):
    """The webserver has no socket: its Terminate marks the run CANCELING, and the run worker's
    cancellation thread (started by this instance class) interrupts the run."""
    from dagster import DagsterInstance

    (tmp_path / "dagster.yaml").write_text(
        "instance_class:\n  module: a2b_run_launcher\n  class: CancellableRunsInstance\n"
    )
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance, launcher_module.CancellableRunsInstance)
        assert instance.should_start_background_run_thread
        # what run containers get: the instance rebuilt from its ref keeps the class
        with DagsterInstance.from_ref(instance.get_ref()) as in_run_worker:
            assert in_run_worker.should_start_background_run_thread
    with DagsterInstance.ephemeral() as plain:
        assert not plain.should_start_background_run_thread


# ---- Dockerfile ----


def _instructions(dockerfile: str, keyword: str) -> list[str]:
    """The Dockerfile's `keyword` instructions, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    return [line for line in joined.splitlines() if line.startswith(f"{keyword} ")]


def _requirement(deps: list[str], name: str) -> str:
    (req,) = [d for d in deps if re.match(rf"^{re.escape(name)}\b(?![-_])", d)]
    return req


def test_dockerfile_installs_the_project_as_pyproject_declares(dockerfile, pyproject):
    project = pyproject["project"]
    runs = _instructions(dockerfile, "RUN")
    copies = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    copied = {src for srcs in copies for src in srcs}
    # the package itself, its metadata files, the configs and the instance files
    assert {
        "pyproject.toml",
        "a2b_pipeline",
        "configs",
        "docker/dagster.yaml",
        "docker/workspace.yaml",
    } <= copied
    if isinstance(project.get("readme"), str):
        assert project["readme"] in copied  # setuptools reads it while building
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["a2b_pipeline*"]
    # torch with the project's own specifier, then the project with its `deploy` extra
    torch_req = _requirement(project["dependencies"], "torch")
    assert f'ARG TORCH_SOURCE="{torch_req}"' in dockerfile, torch_req
    torch_install = 'pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SOURCE}"'
    assert any(torch_install in r for r in runs)
    assert any('pip install ".[deploy]"' in r for r in runs), runs
    # the integrations pair with the dagster release line pyproject pins (1.N <-> 0.(N+16))
    dagster_req = _requirement(project["dependencies"], "dagster")
    minor = int(re.search(r">=\s*1\.(\d+)", dagster_req)[1])
    deploy = project["optional-dependencies"]["deploy"]
    for lib in ("dagster-postgres", "dagster-docker"):
        assert f"{lib}>=0.{minor + 16},<0.{minor + 17}" in deploy, lib
    # the python base image satisfies requires-python
    base = re.search(r"ARG BASE_IMAGE=python:(\d+)\.(\d+)", dockerfile)
    need = re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert (int(base[1]), int(base[2])) >= (int(need[1]), int(need[2]))
    assert "FROM ${BASE_IMAGE}" in dockerfile


def test_dockerfile_matches_compose_and_instance_paths(dockerfile, compose):
    env = dict(re.findall(r"(\w+)=(\S+)", dockerfile.split("ENV", 1)[1].split("\n\n")[0].replace("\\", "")))
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    assert env["A2B_DATA_ROOT"] == compose["services"]["daemon"]["environment"]["A2B_DATA_ROOT"]
    assert env["A2B_CONFIGS_DIR"] == compose["services"]["daemon"]["environment"]["A2B_CONFIGS_DIR"]
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)[1]
    assert yaml.safe_load(cmd) == _command(compose["services"]["user_code"])


def test_dockerignore_keeps_everything_the_dockerfile_copies(dockerfile):
    """BuildKit reads docker/Dockerfile.dockerignore for docker/Dockerfile (the context is the repo root)."""
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "**"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert src in kept, src
    for mount in re.findall(r"--mount=type=bind,source=(\S+?),", dockerfile):
        assert mount in kept, mount
    for secret in (".env", "docker/.env"):
        assert f"!{secret}" not in patterns
