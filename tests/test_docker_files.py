"""What can be checked of the deployment files without Docker (we have none): the compose files parse,
wire Redis and the server together, and set only real, valid settings; the image runs as a non-root user."""

import os
from pathlib import Path

import pytest
import yaml

from server.settings import ServerSettings

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = sorted(DOCKER.glob("compose*.yaml"))


def t2l_environment(compose: dict) -> dict[str, str]:
    env = compose["services"]["t2l"]["environment"]
    return {k: str(v) for k, v in env.items()}


def test_there_are_compose_files():
    assert {p.name for p in COMPOSE} >= {"compose.yaml", "compose.vllm.yaml"}


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_every_t2l_variable_is_a_real_setting_with_a_valid_value(path, monkeypatch):
    env = t2l_environment(yaml.safe_load(path.read_text()))
    fields = {f"T2L_{name.upper()}" for name in ServerSettings.model_fields}
    unknown = sorted(k for k in env if k.startswith("T2L_") and k not in fields)
    assert not unknown, f"{path.name} sets variables no setting reads: {unknown}"
    for key in list(os.environ):
        if key.startswith("T2L_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ServerSettings()  # validates as at start-up
    assert settings.redis_url == "redis://redis:6379/0"


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.name)
def test_redis_is_persistent_healthy_and_awaited(path):
    compose = yaml.safe_load(path.read_text())
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    server = compose["services"]["t2l"]
    assert server["depends_on"]["redis"]["condition"] == "service_healthy"
    assert server["build"]["dockerfile"] == "docker/Dockerfile"
    assert any(str(port).endswith(":8000") for port in server["ports"])


def test_the_vllm_variant_shares_the_adapter_folder_at_the_same_path():
    compose = yaml.safe_load((DOCKER / "compose.vllm.yaml").read_text())
    env = t2l_environment(compose)
    assert env["T2L_ENGINE"] == "vllm" and env["T2L_VLLM_URL"].startswith("http://vllm:")
    folder = env["T2L_VLLM_ADAPTER_DIR"]
    mounts = [compose["services"][s]["volumes"] for s in ("t2l", "vllm")]
    assert all(any(v.split(":")[1] == folder for v in m) for m in mounts)
    assert compose["services"]["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_the_image_runs_as_a_non_root_user():
    lines = [line.split() for line in (DOCKER / "Dockerfile").read_text().splitlines() if line.strip()]
    users = [words[1] for words in lines if words[0] == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_user = max(i for i, words in enumerate(lines) if words[0] == "USER")
    entry = max(i for i, words in enumerate(lines) if words[0] in ("CMD", "ENTRYPOINT"))
    assert last_user < entry


def test_the_image_exports_the_onnx_graphs_at_build_time():
    """The generator's graphs are exported by one generation after setup, into the image (not a volume),
    so containers start with them."""
    runs = [line for line in (DOCKER / "Dockerfile").read_text().splitlines() if line.startswith("RUN ")]
    setup = next(i for i, line in enumerate(runs) if "make setup" in line)
    warm = [i for i, line in enumerate(runs) if "t2l generate" in line]
    assert warm and warm[0] > setup
    settings = ServerSettings(_env_file=None)
    assert settings.generator_runtime == "onnx"
    assert settings.cache_dir.resolve().parent.parent == Path(__file__).resolve().parents[1]
