"""The docker deployment, checked without a container engine: the compose file's services and their
wiring, docker/dagster.yaml as a Dagster instance config, and the image's install steps against
pyproject.toml. (`docker compose config` runs too where a compose client is installed.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
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


def _depends(service: dict) -> dict:
    deps = service.get("depends_on", {})
    return {d: {} for d in deps} if isinstance(deps, list) else deps


# ---- docker-compose.yaml ----


def test_compose_has_the_four_services_and_their_dependencies(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "user_code", "webserver", "daemon"}
    assert services["postgres"]["image"].startswith("postgres:")
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
    for svc in ("webserver", "daemon"):
        assert "/var/run/docker.sock:/var/run/docker.sock" in compose["services"][svc]["volumes"]


def test_docker_compose_config_when_a_client_is_installed(tmp_path):
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose client here")
    env_file = tmp_path / ".env"
    env_file.write_text("DAGSTER_POSTGRES_PASSWORD=test-only\n")
    r = subprocess.run(
        [
            docker,
            "compose",
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
    assert r.returncode == 0, r.stderr


# ---- docker/dagster.yaml ----


def test_dagster_yaml_loads_as_an_instance_config(tmp_path, monkeypatch, instance_yaml):
    from dagster._core.instance.config import dagster_instance_config

    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    shutil.copy(DOCKER / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    pg = config["storage"]["postgres"]["postgres_db"]
    assert {pg[k]["env"] for k in ("hostname", "username", "password", "db_name")} == set(PG_ENV)
    assert config["run_launcher"]["class"] == "DockerRunLauncher"
    assert {"key": "gpu", "limit": 1} in config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_dagster_yaml_classes_accept_their_config(instance_yaml):
    """Every configurable class the instance names, with its config, validated by the class itself
    (dagster_docker's launcher where that package is installed; it is only in the image)."""
    import importlib

    from dagster._config import validate_config

    for key in ("run_coordinator", "compute_logs", "local_artifact_storage", "run_launcher"):
        entry = instance_yaml[key]
        try:
            module = importlib.import_module(entry["module"])
        except ImportError:
            assert entry["module"] == "dagster_docker", key
            continue
        cls = getattr(module, entry["class"])
        result = validate_config(cls.config_type(), entry.get("config", {}))
        assert result.success, (key, [e.message for e in result.errors])


def test_gpu_request_is_valid_docker_sdk_input(instance_yaml):
    types = pytest.importorskip("docker.types")
    kwargs = instance_yaml["run_launcher"]["config"]["container_kwargs"]
    (req,) = kwargs["device_requests"]
    device = types.DeviceRequest(**req)
    assert device["Driver"] == "nvidia" and device["Capabilities"] == [["gpu"]] and device["Count"] == -1
    host = types.HostConfig(
        version="1.45", device_requests=kwargs["device_requests"], shm_size=kwargs["shm_size"]
    )
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]


# ---- Dockerfile ----


def _requirement(deps: list[str], name: str) -> str:
    (req,) = [d for d in deps if re.match(rf"^{re.escape(name)}\b(?![-_])", d)]
    return req


def test_dockerfile_installs_the_project_as_pyproject_declares(dockerfile, pyproject):
    project = pyproject["project"]
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
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
    assert any(f'"{torch_req}"' in r for r in runs), torch_req
    assert any('pip install ".[deploy]"' in r for r in runs), runs
    # the integrations pair with the dagster release line pyproject pins (1.N <-> 0.(N+16))
    dagster_req = _requirement(project["dependencies"], "dagster")
    minor = int(re.search(r">=\s*1\.(\d+)", dagster_req)[1])
    deploy = project["optional-dependencies"]["deploy"]
    for lib in ("dagster-postgres", "dagster-docker"):
        assert f"{lib}>=0.{minor + 16},<0.{minor + 17}" in deploy, lib
    # the python base image satisfies requires-python
    base = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", dockerfile)
    need = re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert (int(base[1]), int(base[2])) >= (int(need[1]), int(need[2]))
    assert "FROM python:${PYTHON_VERSION}-slim" in dockerfile


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
    for secret in (".env", "docker/.env"):
        assert f"!{secret}" not in patterns
