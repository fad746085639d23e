"""The config base: the error type, the strict model every section derives from, shared constants."""

from __future__ import annotations

import os
import re
import socket
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus, so a bad config never restart-loops."""

TOPIC_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
"""Names that end up inside MQTT topics: no '/', '+', '#', spaces or upper case."""

REDACTED = "**********"


class ConfigError(Exception):
    """A config file that cannot be used; `errors` holds one line per problem, each naming its key path."""

    def __init__(self, path: str | os.PathLike[str], errors: list[str]) -> None:
        self.path = str(path)
        self.errors = errors
        super().__init__(f"{self.path}: {len(errors)} error(s)\n" + "\n".join(f"  - {e}" for e in errors))


class _Model(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def default_device_id() -> str:
    """Derive a topic-safe device id from the hostname (`Pi-Kitchen.local` -> `pi-kitchen`)."""
    host = socket.gethostname().split(".")[0].lower()
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", host).strip("-")
    return cleaned or "smartbin"


TopicName = Annotated[str, Field(pattern=TOPIC_NAME_RE.pattern, min_length=1, max_length=64)]


