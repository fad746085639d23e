"""The alerts section: the webhook that posts raised alerts to a Slack/Teams-style incoming webhook."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator

from .base import _Model

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
"""Alert severities, least to most severe."""


class WebhookConfig(_Model):
    """Where and how raised alerts are posted (`{"text": ...}`, accepted by Slack and Teams incoming webhooks)."""

    url: SecretStr | None = Field(default=None, description="incoming-webhook URL (a secret: its path is the credential)")
    url_file: Path | None = Field(
        default=None, description="file holding the URL; relative: $CREDENTIALS_DIRECTORY first, then next to the config")
    min_severity: Literal["warning", "critical"] = Field(default="critical", description="post alerts at or above this")
    min_interval_s: float = Field(default=300.0, ge=0, le=86400,
                                  description="at most one post this often; alerts in between are folded into the next")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="connect and answer timeout of one post")
    retries: int = Field(default=3, ge=0, le=10, description="retries after a 5xx, 429 or connection error")
    retry_min_s: float = Field(default=5.0, gt=0, le=600, description="first retry delay (doubles per retry)")
    retry_max_s: float = Field(default=120.0, gt=0, le=3600, description="retry delay cap")
    queue_size: int = Field(default=100, ge=1, le=10_000, description="alerts waiting to be posted (more are dropped, counted)")

    @model_validator(mode="after")
    def _valid(self) -> WebhookConfig:
        if self.url is not None and self.url_file is not None:
            raise ValueError("url_file: give url or url_file, not both\n")
        if self.url is not None:
            problem = url_problem(self.url.get_secret_value())
            if problem:
                raise ValueError(f"url: {problem}\n")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError(f"retry_max_s ({self.retry_max_s}) must be >= retry_min_s ({self.retry_min_s})\n")
        return self

    def target(self) -> str | None:
        """The URL (already read from url_file by the loader), or None when no webhook is configured."""
        return self.url.get_secret_value() if self.url is not None else None


def url_problem(url: str) -> str | None:
    """Why a webhook URL cannot be used (never quoting it), or None."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


class AlertsConfig(_Model):
    """The alerts component: the active-alerts state and the webhook."""

    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
