"""Typed settings, read once from the environment.

Every variable the code reads is listed here (and in the README's configuration
reference); tests check that template.yaml sets the ones the Lambda needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .outcomes import (
    DEFAULT_MAX_RECEIVE_COUNT,
    DEFAULT_NOT_FOUND_GRACE_SECONDS,
    DEFAULT_RECHECK_DELAY_SECONDS,
    SQS_MAX_DELAY_SECONDS,
)

DEFAULT_REDITUS_API_BASE_URL = "https://api.getreditus.com/api"


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Configuration of the submitter Lambda (and of the producers that share its names)."""

    history_table_name: str
    refund_queue_url: str = ""
    reditus_api_base_url: str = DEFAULT_REDITUS_API_BASE_URL
    # Secrets Manager secret name or ARN holding the API key (production).
    reditus_api_key_secret: str = ""
    # Plain key for local runs; ignored when the secret is set.
    reditus_api_key: str = field(default="", repr=False)
    api_key_cache_seconds: int = 300
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    max_concurrency: int = 10
    max_requests_per_second: float = 0.0
    not_found_grace_seconds: int = DEFAULT_NOT_FOUND_GRACE_SECONDS
    not_found_recheck_delay_seconds: int = DEFAULT_RECHECK_DELAY_SECONDS
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        table = env.get("HISTORY_TABLE_NAME", "").strip()
        if not table:
            raise SettingsError("HISTORY_TABLE_NAME is not set")
        settings = cls(
            history_table_name=table,
            refund_queue_url=env.get("REFUND_QUEUE_URL", "").strip(),
            reditus_api_base_url=(
                env.get("REDITUS_API_BASE_URL", "").strip() or DEFAULT_REDITUS_API_BASE_URL
            ).rstrip("/"),
            reditus_api_key_secret=env.get("REDITUS_API_KEY_SECRET", "").strip(),
            reditus_api_key=env.get("REDITUS_API_KEY", "").strip(),
            api_key_cache_seconds=_int(env, "REDITUS_API_KEY_CACHE_SECONDS", 300),
            connect_timeout=_float(env, "REDITUS_CONNECT_TIMEOUT", 3.05, 0.01),
            read_timeout=_float(env, "REDITUS_READ_TIMEOUT", 10.0, 0.01),
            max_attempts=_int(env, "REDITUS_MAX_ATTEMPTS", 4, 1),
            backoff_base=_float(env, "REDITUS_BACKOFF_BASE", 0.5),
            backoff_cap=_float(env, "REDITUS_BACKOFF_CAP", 8.0),
            max_concurrency=_int(env, "REDITUS_MAX_CONCURRENCY", 10, 1),
            max_requests_per_second=_float(env, "REDITUS_MAX_RPS", 0.0),
            not_found_grace_seconds=_int(env, "NOT_FOUND_GRACE_SECONDS", DEFAULT_NOT_FOUND_GRACE_SECONDS),
            not_found_recheck_delay_seconds=_int(
                env, "NOT_FOUND_RECHECK_DELAY_SECONDS", DEFAULT_RECHECK_DELAY_SECONDS
            ),
            max_receive_count=_int(env, "MAX_RECEIVE_COUNT", DEFAULT_MAX_RECEIVE_COUNT, 1),
        )
        if not settings.reditus_api_key_secret and not settings.reditus_api_key:
            raise SettingsError(
                "set REDITUS_API_KEY_SECRET (Secrets Manager) or REDITUS_API_KEY (local runs)"
            )
        if settings.not_found_grace_seconds and not settings.refund_queue_url:
            raise SettingsError("REFUND_QUEUE_URL is needed to re-check payments within the 404 grace window")
        if settings.not_found_recheck_delay_seconds > SQS_MAX_DELAY_SECONDS:
            raise SettingsError(
                f"NOT_FOUND_RECHECK_DELAY_SECONDS is at most {SQS_MAX_DELAY_SECONDS} (the SQS delay limit)"
            )
        return settings


# Names read by Settings.from_env (the Lambda); the template must set the required ones.
LAMBDA_ENV_VARS = (
    "HISTORY_TABLE_NAME",
    "REFUND_QUEUE_URL",
    "REDITUS_API_BASE_URL",
    "REDITUS_API_KEY_SECRET",
    "REDITUS_API_KEY",
    "REDITUS_API_KEY_CACHE_SECONDS",
    "REDITUS_CONNECT_TIMEOUT",
    "REDITUS_READ_TIMEOUT",
    "REDITUS_MAX_ATTEMPTS",
    "REDITUS_BACKOFF_BASE",
    "REDITUS_BACKOFF_CAP",
    "REDITUS_MAX_CONCURRENCY",
    "REDITUS_MAX_RPS",
    "NOT_FOUND_GRACE_SECONDS",
    "NOT_FOUND_RECHECK_DELAY_SECONDS",
    "MAX_RECEIVE_COUNT",
)
# Read only by local runs; the deployed function takes the key from Secrets Manager.
LOCAL_ONLY_ENV_VARS = ("REDITUS_API_KEY",)
