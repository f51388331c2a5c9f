"""The Docker deployment files, as far as this machine can check them without a Docker engine.

`docker-compose config` (Debian's docker-compose 1.29) validates and resolves docker-compose.yml; the test
reads the resolved file. The Dockerfile is checked against pyproject.toml, whose package folders it must copy.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
AUTH = "admin:s3cret-pass"
REDIS_PASSWORD = "0123abcdef-redis-pass"
BROKER_URL = f"redis://:{REDIS_PASSWORD}@redis:6379/0"


def compose_config(auth: str | None, redis_password: str | None = REDIS_PASSWORD) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` on the repository's compose file, with or without the Flower login and Redis's
    password."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: run `apt-get install -y docker-compose` (CI installs it)")
    # Nothing from this shell's LOOKALIKE_* settings, and an empty env file so a developer's .env next to the
    # compose file cannot supply the Flower login either.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    if auth is not None:
        environment["LOOKALIKE_FLOWER_BASIC_AUTH"] = auth
    if redis_password is not None:
        environment["LOOKALIKE_REDIS_PASSWORD"] = redis_password
    with tempfile.TemporaryDirectory(prefix="lookalike-compose-") as scratch:
        env_file = Path(scratch) / "empty.env"
        env_file.write_text("")
        return subprocess.run(
            [binary, "--env-file", str(env_file), "--file", str(COMPOSE_FILE), "config"],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )


@functools.cache
def resolved_config() -> dict[str, Any]:
    """The resolved compose file, computed once. Called from the tests themselves (not a fixture), so a missing
    docker-compose makes each test fail rather than error in setup."""
    result = compose_config(AUTH)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    assert isinstance(resolved, dict), result.stdout
    return resolved


def published_ports(service: dict[str, Any]) -> set[int]:
    """Host ports of a service, from either form `docker-compose config` may print."""
    ports: set[int] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published") is not None:
                ports.add(int(port["published"]))
        else:
            parts = str(port).split("/")[0].split(":")
            if len(parts) >= 2:
                ports.add(int(parts[-2]))
    return ports


def published_bindings(service: dict[str, Any]) -> set[tuple[str, int]]:
    """(host address, host port) of every published port; "0.0.0.0" when no address is given (every one)."""
    bindings: set[tuple[str, int]] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published") is not None:
                bindings.add((str(port.get("host_ip") or "0.0.0.0"), int(port["published"])))
        else:
            parts = str(port).split("/")[0].split(":")
            if len(parts) >= 2:
                bindings.add((parts[-3] if len(parts) >= 3 else "0.0.0.0", int(parts[-2])))
    return bindings


def as_text(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def test_services_exist() -> None:
    config = resolved_config()
    assert {"redis", "qdrant", "worker", "flower", "metrics"} <= set(config["services"])
    assert str(config.get("version", "")).startswith("3")


def test_redis_persists_with_append_only_file() -> None:
    config = resolved_config()
    redis = config["services"]["redis"]
    command = as_text(redis["command"])
    assert re.search(r"--appendonly\s+yes", command), command
    assert re.search(r"--appendfsync\s+everysec", command), command
    assert redis["image"].startswith("redis:7")
    assert any(str(volume).split(":")[1] == "/data" for volume in redis["volumes"])


def test_qdrant_image_is_pinned() -> None:
    config = resolved_config()
    qdrant = config["services"]["qdrant"]
    name, _, tag = qdrant["image"].rpartition(":")
    assert name == "qdrant/qdrant"
    assert tag and tag != "latest" and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), qdrant["image"]
    assert any(str(volume).split(":")[1] == "/qdrant/storage" for volume in qdrant["volumes"])


def test_worker_can_be_scaled() -> None:
    config = resolved_config()
    worker = config["services"]["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert published_ports(worker) == set()
    assert as_text(worker["command"]) == "worker"
    assert "build" in worker


def test_worker_talks_to_the_servers_and_waits_for_them() -> None:
    config = resolved_config()
    worker = config["services"]["worker"]
    environment = worker["environment"]
    assert environment["LOOKALIKE_BROKER_URL"] == BROKER_URL
    assert environment["LOOKALIKE_QDRANT_URL"] == "http://qdrant:6333"
    assert environment["LOOKALIKE_MODEL_CACHE_DIR"] == "/models"
    assert any(str(volume).startswith("models:/models") for volume in worker["volumes"])
    assert "models" in config["volumes"]
    depends = worker["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["qdrant"]["condition"] == "service_healthy"


def test_every_long_running_service_has_a_healthcheck() -> None:
    config = resolved_config()
    for name, service in config["services"].items():
        if name == "worker":
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test") and not healthcheck.get("disable"), name
    assert "redis-cli" in as_text(config["services"]["redis"]["healthcheck"]["test"])
    # The qdrant image has no curl: the check must not need one.
    qdrant_check = as_text(config["services"]["qdrant"]["healthcheck"]["test"])
    assert "/dev/tcp/127.0.0.1/6333" in qdrant_check and "curl" not in qdrant_check
    assert "http://127.0.0.1:5555/healthcheck" in as_text(config["services"]["flower"]["healthcheck"]["test"])


def test_flower_is_published_with_basic_auth() -> None:
    config = resolved_config()
    flower = config["services"]["flower"]
    assert 5555 in published_ports(flower)
    assert as_text(flower["command"]).split()[:1] == ["flower"]
    environment = flower["environment"]
    assert environment["LOOKALIKE_FLOWER_BASIC_AUTH"] == AUTH
    assert environment["LOOKALIKE_FLOWER_ADDRESS"] == "0.0.0.0"
    assert environment["LOOKALIKE_BROKER_URL"] == BROKER_URL


def test_flower_is_published_on_the_host_loopback_only() -> None:
    flower = resolved_config()["services"]["flower"]
    assert published_bindings(flower) == {("127.0.0.1", 5555)}


def test_metrics_answers_from_outside_its_container_on_the_host_loopback() -> None:
    """`lookalike metrics` listens on 127.0.0.1 by default: inside a container the published port would lead
    nowhere. It must listen on 0.0.0.0 there, and be published on the host's loopback only."""
    metrics = resolved_config()["services"]["metrics"]
    command = as_text(metrics["command"])
    assert re.search(r"--address[ =]0\.0\.0\.0\b", command), command
    assert published_bindings(metrics) == {("127.0.0.1", 9808)}
    assert "http://127.0.0.1:9808/metrics" in as_text(metrics["healthcheck"]["test"])


def test_redis_requires_the_password_from_the_environment() -> None:
    redis = resolved_config()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == REDIS_PASSWORD, command
    # The healthcheck authenticates (through REDISCLI_AUTH, not its command line) and needs a PONG: a NOAUTH
    # reply is not healthy.
    assert redis["environment"]["REDISCLI_AUTH"] == REDIS_PASSWORD
    check = as_text(redis["healthcheck"]["test"])
    assert "PONG" in check and REDIS_PASSWORD not in check
    assert not redis.get("ports"), "Redis must not be published"


def test_every_service_that_uses_the_broker_carries_the_password() -> None:
    services = resolved_config()["services"]
    users = {name for name, service in services.items() if "LOOKALIKE_BROKER_URL" in service.get("environment", {})}
    assert {"worker", "flower", "metrics", "api"} <= users
    for name in users:
        assert services[name]["environment"]["LOOKALIKE_BROKER_URL"] == BROKER_URL, name


@pytest.mark.parametrize("password", [None, ""], ids=["unset", "empty"])
def test_compose_refuses_redis_without_a_password(password: str | None) -> None:
    """No default secret is committed: without LOOKALIKE_REDIS_PASSWORD nothing starts."""
    result = compose_config(AUTH, redis_password=password)
    assert result.returncode != 0, "docker-compose configured a Redis without a password:\n" + result.stdout
    assert "LOOKALIKE_REDIS_PASSWORD" in result.stderr
    assert "LOOKALIKE_REDIS_PASSWORD:-" not in COMPOSE_FILE.read_text()


def test_metrics_is_published() -> None:
    config = resolved_config()
    metrics = config["services"]["metrics"]
    assert 9808 in published_ports(metrics)
    assert as_text(metrics["command"]).split()[:1] == ["metrics"]


def test_app_services_share_one_image() -> None:
    config = resolved_config()
    images = {config["services"][name]["image"] for name in ("worker", "flower", "metrics")}
    assert len(images) == 1


def test_compose_refuses_flower_without_basic_auth() -> None:
    result = compose_config(None)
    assert result.returncode != 0, "docker-compose configured an unauthenticated Flower:\n" + result.stdout
    assert "LOOKALIKE_FLOWER_BASIC_AUTH" in result.stderr
    assert "user:password" in result.stderr


def test_compose_refuses_an_empty_basic_auth() -> None:
    result = compose_config("")
    assert result.returncode != 0, "docker-compose accepted an empty Flower login:\n" + result.stdout


# ------------------------------------------------------------------------------------------------ Dockerfile
def test_dockerfile_copies_every_package_folder() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    # Every source of every COPY line (the last word is the destination).
    copied = {
        source.rstrip("/")
        for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.MULTILINE)
        for source in line.split()[:-1]
        if not source.startswith("--")
    }
    missing = folders - copied
    assert not missing, f"the Dockerfile does not copy {sorted(missing)}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied

    dockerignore = (ROOT / ".dockerignore").read_text().split()
    for needed in [*folders, "pyproject.toml", pyproject["project"]["readme"]]:
        assert needed not in dockerignore, f".dockerignore excludes {needed}"
    assert {".venv", "data", ".git", "bench/work"} <= set(dockerignore)


def test_dockerfile_runs_lookalike_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", dockerfile, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["lookalike"\]$', dockerfile, re.MULTILINE)
    assert re.search(r'^CMD \["worker"\]$', dockerfile, re.MULTILINE)
    assert re.search(r"^WORKDIR /app$", dockerfile, re.MULTILINE)
    assert re.search(r"^ENV LOOKALIKE_MODEL_CACHE_DIR=/models$", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
