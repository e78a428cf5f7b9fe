"""docker-compose.yml: valid, and runs api, worker, redis and postgres with
volumes and health checks (checked by `docker compose config` where it exists)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_names_the_four_services_with_health_checks(compose):
    services = compose["services"]
    assert set(services) == {"api", "worker", "redis", "postgres"}
    for name, service in services.items():
        assert "test" in service["healthcheck"], name
        assert service.get("image") or service.get("build"), name
    volumes = set(compose["volumes"])
    for name in ("api", "worker", "redis", "postgres"):
        for mount in services[name]["volumes"]:
            assert mount.split(":")[0] in volumes, (name, mount)


def test_services_depend_on_what_they_use(compose):
    services = compose["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:")
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["worker"]["command"] == ["bitalloc", "worker"]
    assert "service.main:create_app" in services["api"]["command"]
    assert services["api"]["environment"]["BITALLOC_DATA"] == "/data"


def test_docker_compose_accepts_it():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"],
                                        capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed here; the YAML checks above still ran")
    out = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
