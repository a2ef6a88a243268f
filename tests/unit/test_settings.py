"""shared.config.Settings: defaults, provider key and URL precedence, list parsing, .env reading, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.config import DASHSCOPE_BASE_URL, DASHSCOPE_DEFAULT_MODEL, OPENAI_DEFAULT_MODEL, Settings

ENV_VARS = (
    "OPENAI_API_KEY",
    "DASHSCOPE_API_KEY",
    "OPENAI_BASE_URL",
    "AI_MODEL_NAME",
    "QWEN_MODEL_NAME",
    "UPSTREAM_READ_TIMEOUT_S",
    "UPSTREAM_CONNECT_TIMEOUT_S",
    "UPSTREAM_MAX_RETRIES",
    "REDIS_URL",
    "STREAMS_REDIS_URL",
    "SSE_RELAY_KEY_PREFIX",
    "SSE_RELAY_QUEUE_NAME",
    "DATABASE_URL",
    "SSE_RELAY_API_KEYS",
    "MAX_BODY_BYTES",
    "CORS_ALLOW_ORIGINS",
    "COALESCE_MS",
    "FINISHED_TTL_S",
    "LIVE_TTL_S",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No sse-relay variable in the environment and no `.env` in the working directory."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.ai_model_name == OPENAI_DEFAULT_MODEL  # no base URL: the SDK's default endpoint, OpenAI's
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.max_body_bytes == 1_048_576
    assert settings.upstream_read_timeout_s == 60
    assert settings.database_url.startswith("sqlite+aiosqlite")
    assert settings.openai_api_key is None
    assert settings.provider_key is None
    assert settings.openai_base_url is None
    assert settings.api_keys == []
    assert settings.cors_allow_origins == []
    assert settings.secrets() == []


def test_numeric_settings_read_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MAX_BODY_BYTES", "2048")
    clean_env.setenv("UPSTREAM_READ_TIMEOUT_S", "12.5")
    settings = Settings()
    assert settings.max_body_bytes == 2048
    assert settings.upstream_read_timeout_s == 12.5


def test_openai_key_wins_over_dashscope_key(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-openai-key-1234")
    clean_env.setenv("DASHSCOPE_API_KEY", "sk-dashscope-key-5678")
    settings = Settings()
    assert settings.provider_key == "sk-openai-key-1234"
    # An OpenAI key does not talk to DashScope by default.
    assert settings.openai_base_url is None


def test_only_dashscope_key_uses_it_with_dashscope_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DASHSCOPE_API_KEY", "sk-dashscope-key-5678")
    settings = Settings()
    assert settings.provider_key == "sk-dashscope-key-5678"
    assert settings.openai_base_url == DASHSCOPE_BASE_URL
    assert DASHSCOPE_BASE_URL == "https://dashscope.aliyuncs.com/compatible-mode/v1"


def test_empty_openai_key_falls_back_to_dashscope_key(clean_env: pytest.MonkeyPatch) -> None:
    # `OPENAI_API_KEY=` (empty, as compose's `${OPENAI_API_KEY:-}` or a .env template leaves it) means unset,
    # as an empty OPENAI_BASE_URL already does.
    clean_env.setenv("OPENAI_API_KEY", "")
    clean_env.setenv("DASHSCOPE_API_KEY", "sk-dashscope-key-5678")
    settings = Settings()
    assert settings.provider_key == "sk-dashscope-key-5678"
    assert settings.openai_base_url == DASHSCOPE_BASE_URL


def test_dashscope_key_with_explicit_base_url_keeps_the_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DASHSCOPE_API_KEY", "sk-dashscope-key-5678")
    clean_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1")
    settings = Settings()
    assert settings.provider_key == "sk-dashscope-key-5678"
    assert settings.openai_base_url == "http://127.0.0.1:9999/v1"


def test_empty_base_url_means_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-openai-key-1234")
    clean_env.setenv("OPENAI_BASE_URL", "")
    assert Settings().openai_base_url is None


def test_only_an_openai_key_defaults_to_a_small_openai_model(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-openai-key-1234")
    assert Settings().ai_model_name == OPENAI_DEFAULT_MODEL == "gpt-4.1-mini"
    clean_env.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    assert Settings().ai_model_name == OPENAI_DEFAULT_MODEL


@pytest.mark.parametrize(
    "env",
    [
        {"DASHSCOPE_API_KEY": "sk-dashscope-key-5678"},
        {"OPENAI_API_KEY": "", "DASHSCOPE_API_KEY": "sk-dashscope-key-5678", "AI_MODEL_NAME": ""},
        {"OPENAI_API_KEY": "sk-key", "OPENAI_BASE_URL": DASHSCOPE_BASE_URL},
        {"OPENAI_API_KEY": "sk-key", "OPENAI_BASE_URL": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"},
    ],
)
def test_dashscope_defaults_to_qwen_plus(clean_env: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert Settings().ai_model_name == DASHSCOPE_DEFAULT_MODEL == "qwen-plus"


def test_an_explicit_model_wins_over_the_provider_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-openai-key-1234")
    clean_env.setenv("AI_MODEL_NAME", "gpt-5-mini")
    assert Settings().ai_model_name == "gpt-5-mini"


def test_empty_keys_count_as_no_key(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "")
    clean_env.setenv("DASHSCOPE_API_KEY", "")
    settings = Settings()
    assert settings.provider_key is None and settings.secrets() == []


def test_qwen_model_name_is_a_fallback(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("QWEN_MODEL_NAME", "qwen-max")
    assert Settings().ai_model_name == "qwen-max"


def test_ai_model_name_wins_over_qwen_model_name(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("QWEN_MODEL_NAME", "qwen-max")
    clean_env.setenv("AI_MODEL_NAME", "gpt-4o-mini")
    assert Settings().ai_model_name == "gpt-4o-mini"


def test_api_keys_and_cors_origins_parse_comma_separated(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SSE_RELAY_API_KEYS", " key-one , key-two,, ,key-three ")
    clean_env.setenv("CORS_ALLOW_ORIGINS", "http://a.example, ,http://b.example ,")
    settings = Settings()
    assert settings.api_keys == ["key-one", "key-two", "key-three"]
    assert settings.cors_allow_origins == ["http://a.example", "http://b.example"]


def test_empty_list_variables_give_empty_lists(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SSE_RELAY_API_KEYS", "")
    clean_env.setenv("CORS_ALLOW_ORIGINS", " , ")
    settings = Settings()
    assert settings.api_keys == []
    assert settings.cors_allow_origins == []


def test_streams_url_falls_back_to_redis_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://queue-host:6379/2")
    assert Settings().streams_url == "redis://queue-host:6379/2"
    clean_env.setenv("STREAMS_REDIS_URL", "redis://streams-host:6379/3")
    settings = Settings()
    assert settings.streams_url == "redis://streams-host:6379/3"
    assert settings.redis_url == "redis://queue-host:6379/2"


def test_dotenv_in_working_directory_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "AI_MODEL_NAME=model-from-dotenv\nMAX_BODY_BYTES=4096\nSSE_RELAY_API_KEYS=a-key, b-key\n",
        encoding="utf-8",
    )
    settings = Settings()
    assert settings.ai_model_name == "model-from-dotenv"
    assert settings.max_body_bytes == 4096
    assert settings.api_keys == ["a-key", "b-key"]


def test_environment_wins_over_dotenv(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AI_MODEL_NAME=model-from-dotenv\n", encoding="utf-8")
    clean_env.setenv("AI_MODEL_NAME", "model-from-env")
    assert Settings().ai_model_name == "model-from-env"


def test_secrets_lists_provider_key_and_api_keys(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-provider-secret-1")
    clean_env.setenv("SSE_RELAY_API_KEYS", "client-key-a,client-key-b")
    assert sorted(Settings().secrets()) == ["client-key-a", "client-key-b", "sk-provider-secret-1"]


def test_secrets_include_an_unused_dashscope_key(clean_env: pytest.MonkeyPatch) -> None:
    # secrets() promises every secret the process knows; a DashScope key shadowed by OPENAI_API_KEY is still one.
    clean_env.setenv("OPENAI_API_KEY", "sk-provider-secret-1")
    clean_env.setenv("DASHSCOPE_API_KEY", "sk-dashscope-secret-2")
    assert sorted(Settings().secrets()) == ["sk-dashscope-secret-2", "sk-provider-secret-1"]


def test_provider_key_is_secret_and_not_in_repr(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-provider-secret-1")
    clean_env.setenv("DASHSCOPE_API_KEY", "sk-dashscope-secret-2")
    settings = Settings()
    assert isinstance(settings.openai_api_key, SecretStr)
    assert "sk-provider-secret-1" not in repr(settings)
    assert "sk-provider-secret-1" not in str(settings)
    assert "sk-dashscope-secret-2" not in repr(settings)
