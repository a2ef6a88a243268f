"""Structural checks of docker-compose.yml, the Dockerfile and .dockerignore (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.config import DASHSCOPE_BASE_URL, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("api", "worker")
ALL_SERVICES = ("redis", "postgres", *APP_SERVICES, "nginx")
NGINX_CONFIG = ROOT / "deploy" / "nginx" / "sse-relay.conf"
NGINX_PORT = 8080
# Variable names that hold credentials; their values may only come from interpolation.
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
# A whole value that is one `${VAR}` / `${VAR:-default}` / `${VAR-default}` / `${VAR:?msg}` interpolation.
INTERPOLATION = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}$")
APP_PACKAGES = ("api", "worker", "shared", "cli", "demo", "sse_relay")
# `FROM python:3.11-slim [AS stage]`, optionally fully qualified.
PYTHON_BASE = re.compile(r"(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)\S*(?:\s+AS\s+\S+)?", re.IGNORECASE)


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _service(name: str) -> dict[str, Any]:
    service = _load_compose()["services"][name]
    assert isinstance(service, dict)
    return service


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """Normalise both compose spellings (mapping and `KEY=value` list) to a mapping."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {name: value for name, _, value in pairs}
    assert isinstance(raw, dict)
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def _command(service: dict[str, Any]) -> list[str]:
    raw = service["command"]
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def _healthcheck_test(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    return shlex.split(test) if isinstance(test, str) else [str(part) for part in test]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, args = stripped.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def test_compose_file_uses_the_compose_spec_without_a_version_key() -> None:
    assert "version" not in _load_compose()


def test_compose_defines_redis_postgres_api_and_worker_services() -> None:
    assert set(ALL_SERVICES) <= set(_load_compose()["services"])


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_every_service_has_a_healthcheck_command(name: str) -> None:
    test = _healthcheck_test(_service(name))
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert len(test) > 1


def test_redis_persists_the_queue_and_live_generations_across_restarts() -> None:
    redis = _service("redis")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_redis_healthcheck_pings_the_server() -> None:
    assert _healthcheck_test(_service("redis"))[1:] == ["redis-cli", "ping"]


def test_postgres_healthcheck_checks_the_configured_user_and_database() -> None:
    postgres = _service("postgres")
    env = _environment(postgres)
    assert env["POSTGRES_DB"] == "sse_relay"
    test = _healthcheck_test(postgres)
    assert test[1] == "pg_isready"
    assert test[test.index("-U") + 1] == env["POSTGRES_USER"]
    assert test[test.index("-d") + 1] == env["POSTGRES_DB"]


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    compose = _load_compose()
    mounts = [str(volume) for volume in _service("postgres")["volumes"]]
    data_mounts = [m for m in mounts if m.split(":")[1:2] == ["/var/lib/postgresql/data"]]
    assert len(data_mounts) == 1
    assert data_mounts[0].split(":")[0] in compose["volumes"]


def test_postgres_is_not_published_to_the_host() -> None:
    # Its dev-default password is only acceptable because nothing outside the compose network can reach it.
    assert "ports" not in _service("postgres")


def test_api_healthcheck_probes_readyz_on_the_container_port() -> None:
    test = _healthcheck_test(_service("api"))
    assert test[1] == "python"
    assert "http://127.0.0.1:8000/readyz" in " ".join(test)


def test_worker_healthcheck_runs_the_worker_health_check() -> None:
    assert _healthcheck_test(_service("worker"))[1:] == ["sse-relay", "worker", "--check"]


@pytest.mark.parametrize("name", APP_SERVICES)
@pytest.mark.parametrize("dependency", ["redis", "postgres"])
def test_app_services_start_only_after_their_dependencies_are_healthy(name: str, dependency: str) -> None:
    depends_on = _service(name)["depends_on"]
    assert isinstance(depends_on, dict), "the list form cannot express `condition: service_healthy`"
    assert depends_on[dependency]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_restart_unless_stopped(name: str) -> None:
    assert _service(name)["restart"] == "unless-stopped"


def test_the_image_is_built_once_from_this_repository_and_run_by_every_app_service() -> None:
    services = _load_compose()["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["api"]
    build = services["api"]["build"]
    assert (build if isinstance(build, str) else build["context"]) in {".", "./"}
    image = services["api"]["image"]
    for name in (*APP_SERVICES, "provider-check"):
        assert services[name]["image"] == image
        if name not in builders:
            assert services[name]["pull_policy"] == "never", f"{name} would try to pull the locally built image"


def test_api_command_serves_the_fastapi_app_on_port_8000_with_bounded_graceful_shutdown() -> None:
    command = _command(_service("api"))
    assert command[:2] == ["uvicorn", "api.main:app"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8000"
    assert "--timeout-graceful-shutdown" in command


def test_only_nginx_is_published_on_host_port_8000_and_the_api_stays_scalable() -> None:
    # A fixed host port on `api` would make `--scale api=2` fail (the second replica cannot bind it).
    assert "ports" not in _service("api")
    assert [str(port) for port in _service("nginx")["ports"]] == [f"8000:{NGINX_PORT}"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_two_replicas_of_each_app_service_by_default(name: str) -> None:
    assert _service(name)["deploy"]["replicas"] == 2


def test_nginx_runs_the_shipped_config_in_front_of_the_api_service() -> None:
    nginx = _service("nginx")
    mounts = [str(volume) for volume in nginx["volumes"]]
    assert mounts == ["./deploy/nginx/sse-relay.conf:/etc/nginx/conf.d/default.conf:ro"]
    config = NGINX_CONFIG.read_text(encoding="utf-8")
    # The upstream names the compose service and the port its command serves; nginx listens where published.
    api_command = _command(_service("api"))
    assert f"server api:{api_command[api_command.index('--port') + 1]}" in config
    assert f"listen {NGINX_PORT};" in config
    assert nginx["depends_on"]["api"]["condition"] == "service_healthy"
    assert f"http://127.0.0.1:{NGINX_PORT}/healthz" in _healthcheck_test(nginx)


def test_worker_command_runs_the_relay_worker() -> None:
    assert _command(_service("worker")) == ["sse-relay", "worker"]


def test_worker_gets_a_grace_period_to_finish_running_generations() -> None:
    grace = str(_service("worker")["stop_grace_period"])
    match = re.fullmatch(r"(\d+)s", grace)
    assert match is not None
    assert int(match.group(1)) >= 30


@pytest.mark.parametrize("name", APP_SERVICES)
def test_redis_url_points_at_the_redis_service(name: str) -> None:
    url = urlsplit(_environment(_service(name))["REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname == "redis"
    assert url.port == 6379


@pytest.mark.parametrize("name", APP_SERVICES)
def test_database_url_uses_asyncpg_against_the_postgres_service(name: str) -> None:
    postgres_env = _environment(_service("postgres"))
    url = urlsplit(_environment(_service(name))["DATABASE_URL"])
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "postgres"
    assert url.port == 5432
    assert url.path == f"/{postgres_env['POSTGRES_DB']}"
    assert url.username == postgres_env["POSTGRES_USER"]
    # Both sides must read the same variable, or the app and the database disagree on the password.
    assert url.password == postgres_env["POSTGRES_PASSWORD"]


def test_api_and_worker_share_one_environment() -> None:
    api_env = _environment(_service("api"))
    assert api_env == _environment(_service("worker"))
    expected = {"OPENAI_API_KEY", "DASHSCOPE_API_KEY", "OPENAI_BASE_URL", "AI_MODEL_NAME", "SSE_RELAY_API_KEYS"}
    assert expected <= set(api_env)


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_no_environment_value_holds_a_literal_secret(name: str) -> None:
    for variable, value in _environment(_service(name)).items():
        if not SECRET_NAME.search(variable) or value == "":
            continue
        match = INTERPOLATION.match(value)
        assert match is not None, f"{name}.{variable} must be a ${{...}} interpolation"
        # API keys must not carry a default; only the unpublished database gets a dev password.
        if "PASSWORD" not in variable.upper():
            assert not match.group("default"), f"{name}.{variable} has a literal default"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_database_url_password_is_interpolated_not_literal(name: str) -> None:
    password = urlsplit(_environment(_service(name))["DATABASE_URL"]).password
    assert password is not None
    assert INTERPOLATION.match(password) is not None


def test_dockerfile_final_stage_uses_python_311_or_newer() -> None:
    bases = [args for keyword, args in _dockerfile_instructions() if keyword == "FROM"]
    assert bases
    match = PYTHON_BASE.fullmatch(bases[-1])
    assert match is not None, bases[-1]
    assert (int(match.group(1)), int(match.group(2))) >= (3, 11)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in _dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_copies_everything_pip_install_needs_before_installing() -> None:
    instructions = _dockerfile_instructions()
    install_at = next(i for i, (keyword, args) in enumerate(instructions) if keyword == "RUN" and "pip install" in args)
    copied: set[str] = set()
    for keyword, args in instructions[:install_at]:
        if keyword in {"COPY", "ADD"}:
            sources = [part for part in args.split() if not part.startswith("--")][:-1]
            copied.update(source.rstrip("/").removeprefix("./") for source in sources)
    # pyproject's `readme = "README.md"` makes the build fail without the README.
    assert {"pyproject.toml", "README.md", *APP_PACKAGES} <= copied


def test_dockerfile_defaults_to_the_api_on_port_8000() -> None:
    instructions = _dockerfile_instructions()
    assert ("EXPOSE", "8000") in instructions
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    assert "api.main:app" in cmd
    assert "8000" in cmd


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build_context() -> None:
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    assert {".venv", ".git", ".env", "*.db", "tests"} <= patterns
    assert "README.md" not in patterns


def _interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's `${VAR}` / `${VAR:-default}` / `${VAR-default}` for a whole value (the forms this file uses)."""
    match = INTERPOLATION.match(value)
    if match is None:
        assert "${" not in value.replace("${POSTGRES_PASSWORD:-sse_relay}", ""), value
        return value.replace("${POSTGRES_PASSWORD:-sse_relay}", shell.get("POSTGRES_PASSWORD") or "sse_relay")
    name, op, default = match.group("name", "op", "default")
    assert op in (None, ":-", "-"), value
    present = shell.get(name)
    if op == ":-":
        return present or default
    return default if present is None and op == "-" else present or ""


def _app_env(shell: dict[str, str]) -> dict[str, str]:
    return {name: _interpolate(value, shell) for name, value in _environment(_service("api")).items()}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_start_only_after_the_provider_check_passed(name: str) -> None:
    assert _service(name)["depends_on"]["provider-check"]["condition"] == "service_completed_successfully"


def _provider_check(shell: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The provider-check service's command, run with the environment compose would give it."""
    command = _command(_service("provider-check"))
    assert command[0] == "python"
    env = {**{k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY")},
           **_app_env(shell)}  # fmt: skip
    return subprocess.run([sys.executable, *command[1:]], env=env, cwd=tmp_path, capture_output=True, text=True)


def test_without_any_provider_key_compose_refuses_to_start_with_a_clear_message(tmp_path: Path) -> None:
    result = _provider_check({}, tmp_path)
    assert result.returncode == 1
    assert "OPENAI_API_KEY" in result.stderr and "DASHSCOPE_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("shell", [{"OPENAI_API_KEY": "sk-o"}, {"DASHSCOPE_API_KEY": "sk-d"}])
def test_either_provider_key_passes_the_provider_check(shell: dict[str, str], tmp_path: Path) -> None:
    assert _provider_check(shell, tmp_path).returncode == 0


def _settings(shell: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY", "OPENAI_BASE_URL", "AI_MODEL_NAME", "QWEN_MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in _app_env(shell).items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_compose_with_only_an_openai_key_talks_to_openai_with_an_openai_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings({"OPENAI_API_KEY": "sk-o"}, monkeypatch, tmp_path)
    assert (settings.provider_key, settings.openai_base_url, settings.ai_model_name) == ("sk-o", None, "gpt-4.1-mini")


def test_compose_with_only_a_dashscope_key_talks_to_dashscope_with_qwen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings({"DASHSCOPE_API_KEY": "sk-d"}, monkeypatch, tmp_path)
    assert (settings.provider_key, settings.openai_base_url) == ("sk-d", DASHSCOPE_BASE_URL)
    assert settings.ai_model_name == "qwen-plus"
