"""No Docker engine runs here, so the compose file is checked by reading it."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = {"profile": 8001, "claims": 8002, "trust": 8003, "follow": 8004, "collab": 8005}


def test_infrastructure_images_and_health() -> None:
    services = COMPOSE["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert services["mongo"]["image"].startswith("mongo:")
    for name in ("kafka", "mongo"):
        assert services[name]["healthcheck"]["test"]
    assert services["topics"]["command"] == ["bzpeer", "topics"]


def test_every_service_is_built_configured_and_health_checked() -> None:
    services = COMPOSE["services"]
    for name, port in SERVICES.items():
        svc = services[name]
        dockerfile = ROOT / svc["build"]["dockerfile"]
        assert dockerfile == ROOT / "services" / name / "Dockerfile" and dockerfile.exists()
        assert f'"run", "{name}"' in dockerfile.read_text()
        env = svc["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["MONGODB_URI"].startswith("mongodb://mongo:27017")
        assert env["HTTP_PORT"] == port and env["HTTP_HOST"] == "0.0.0.0"
        assert "JWT_KEY" in env
        assert f"127.0.0.1:{port}:{port}" in svc["ports"]
        assert "/ready" in " ".join(svc["healthcheck"]["test"])
        for dep in ("kafka", "mongo"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy"
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_the_web_app_is_built_with_its_front_end_files_and_points_at_the_services() -> None:
    web = COMPOSE["services"]["web"]
    dockerfile = ROOT / web["build"]["dockerfile"]
    assert dockerfile == ROOT / "services" / "web" / "Dockerfile"
    text = dockerfile.read_text()
    assert '"run", "web"' in text and "npm ci" in text and "ASSETS_DIR=" in text
    env = web["environment"]
    assert env["HTTP_PORT"] == 8000 and env["HTTP_HOST"] == "0.0.0.0" and "JWT_KEY" in env
    for name, port in SERVICES.items():
        assert env[f"{name.upper()}_URL"] == f"http://{name}:{port}"
    assert "127.0.0.1:8000:8000" in web["ports"]
    assert "/ready" in " ".join(web["healthcheck"]["test"])
