"""The request catalogue: which component owns each command, its argument schema, and payload parsing.

Why here (foundation) and not in mqtt/: components declare the commands they own without
importing the MQTT component; the MQTT component only parses, validates and routes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

COMMAND_RE = re.compile(r"^[a-z][a-z0-9_]*(/[a-z][a-z0-9_]*)*$")


class NoArgs(BaseModel):
    """Arguments of a command that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class RequestSpec:
    """One command of the catalogue."""

    command: str
    owner: str
    summary: str
    args: type[BaseModel] = NoArgs
    privileged: bool = False
    example: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        """JSON schema of the args object."""
        return self.args.model_json_schema()


class RequestError(Exception):
    """A request that cannot be served; the message goes back in the error response."""

    def __init__(self, message: str, transaction: Any = None) -> None:
        super().__init__(message)
        self.transaction = transaction


@dataclass(frozen=True)
class ParsedRequest:
    """A request whose payload parsed and whose args validated."""

    spec: RequestSpec
    args: dict[str, Any]
    transaction: Any


class RequestRegistry:
    """Commands by name; filled at start-up, read-only afterwards."""

    def __init__(self) -> None:
        self._specs: dict[str, RequestSpec] = {}

    def register(self, spec: RequestSpec) -> None:
        """Add a command; names are validated so they are safe inside topics."""
        if not COMMAND_RE.match(spec.command):
            raise ValueError(f"invalid command name {spec.command!r}")
        if spec.command in self._specs:
            raise ValueError(f"command {spec.command!r} registered twice")
        self._specs[spec.command] = spec

    def get(self, command: str) -> RequestSpec | None:
        """The spec of a command, or None."""
        return self._specs.get(command)

    def specs(self) -> list[RequestSpec]:
        """All commands, sorted by name."""
        return [self._specs[k] for k in sorted(self._specs)]

    def catalogue(self) -> dict[str, Any]:
        """The `help` answer: every command with owner, summary, privilege flag, schema and example."""
        return {
            s.command: {
                "owner": s.owner,
                "summary": s.summary,
                "privileged": s.privileged,
                "args_schema": s.schema(),
                "example": {"transaction": "t1", "args": s.example},
            }
            for s in self.specs()
        }

    def parse(self, command: str, payload: bytes, max_bytes: int) -> ParsedRequest:
        """Decode and validate a request payload `{"transaction": any, "args": {...}}` (empty = no args)."""
        if len(payload) > max_bytes:
            raise RequestError(f"payload too large: {len(payload)} bytes > limit {max_bytes}")
        transaction: Any = None
        body: Any = {}
        if payload.strip():
            try:
                body = json.loads(payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise RequestError("payload is not valid UTF-8") from None
            except ValueError as exc:
                raise RequestError(f"payload is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(f"payload must be a JSON object, got {type(body).__name__}")
        transaction = body.get("transaction")
        if transaction is not None and not isinstance(transaction, (str, int, float)):
            raise RequestError("transaction: must be a string or a number")
        unknown = sorted(set(body) - {"transaction", "args", "auth"})
        if unknown:
            raise RequestError(f"unknown top-level field(s): {', '.join(unknown)}; allowed: transaction, args, auth", transaction)
        spec = self._specs.get(command)
        if spec is None:
            raise RequestError(f"unknown command {command!r}; send 'help' for the catalogue", transaction)
        args = body.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise RequestError("args: must be a JSON object", transaction)
        try:
            model = spec.args.model_validate(args)
        except ValidationError as exc:
            raise RequestError("; ".join(_field_errors(exc)), transaction) from None
        return ParsedRequest(spec=spec, args=model.model_dump(mode="json"), transaction=transaction)


def _field_errors(exc: ValidationError) -> list[str]:
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        out.append(f"args.{loc}: {msg}" if loc else f"args: {msg}")
    return out
