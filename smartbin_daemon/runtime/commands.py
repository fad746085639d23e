"""The request catalogue: which component owns each command, its argument schema, and payload parsing.

Why here (foundation) and not in mqtt/: components declare the commands they own without
importing the MQTT component; the MQTT component only parses, validates and routes.
A component declares a command on the method that serves it (`@command(...)`); the `Worker` base
turns those declarations into catalogue entries (`Worker.requests()`) and serves requests with them
(`Worker.answer()`), so a command's schema and its handler cannot drift apart.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

COMMAND_RE = re.compile(r"^[a-z][a-z0-9_]*(/[a-z][a-z0-9_]*)*$")
COMMAND_MAX_LEN = 128
"""Command names are topic levels: lower-case, '/'-separated, never '+', '#', NUL or empty levels."""


def valid_command(command: str) -> bool:
    """True when a command name (from a topic) is well-formed and safe to put back into a topic."""
    return len(command) <= COMMAND_MAX_LEN and COMMAND_RE.match(command) is not None


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
    privileged_when: Callable[[dict[str, Any]], bool] | None = None
    """Privilege that depends on the (validated) args, e.g. `lid` only for open/unlock; see `arg_in`."""
    answer_within_s: float | None = None
    """How long the owner may take to answer when that is longer than mqtt.request_timeout_s (e.g. `selftest`)."""

    def schema(self) -> dict[str, Any]:
        """JSON schema of the args object."""
        return self.args.model_json_schema()

    def is_privileged(self, args: dict[str, Any]) -> bool:
        """Whether a request with these validated args needs a signature (or the broker's ACL)."""
        if self.privileged:
            return True
        return self.privileged_when is not None and bool(self.privileged_when(args))

    def privilege(self) -> bool | str:
        """What `help` says: true, false, or the condition (e.g. "when op is open or unlock")."""
        if self.privileged:
            return True
        if self.privileged_when is None:
            return False
        return str(getattr(self.privileged_when, "description", None) or "depends on the args")

    @staticmethod
    def arg_in(name: str, *values: Any) -> ArgIn:
        """A `privileged_when` condition: privileged when `args[name]` is one of `values`."""
        return ArgIn(name, tuple(values))


@dataclass(frozen=True)
class ArgIn:
    """Privileged when one argument takes one of some values (describes itself for `help`)."""

    name: str
    values: tuple[Any, ...]

    def __call__(self, args: dict[str, Any]) -> bool:
        """True when the argument holds one of the values."""
        return args.get(self.name) in self.values

    @property
    def description(self) -> str:
        """E.g. "when op is open or unlock"."""
        return f"when {self.name} is {' or '.join(str(v) for v in self.values)}"


class RequestError(Exception):
    """The one error a request handler (or the registry's parse) raises: the message is the answer, `data` goes along."""

    def __init__(self, message: str, transaction: Any = None, *, data: Any = None) -> None:
        super().__init__(message)
        self.transaction = transaction
        self.data = data


class _AnsweredLater:
    """Type of ANSWERED_LATER."""

    def __repr__(self) -> str:
        return "ANSWERED_LATER"


ANSWERED_LATER: Final = _AnsweredLater()
"""What a handler returns when it answers the request later itself (from a thread, the App or the MCU's ACK)."""

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True)
class CommandDecl:
    """A command as declared on its handler: everything of its `RequestSpec` but the owner (the worker's name)."""

    command: str
    args: type[BaseModel]
    summary: str
    privileged: bool = False
    example: dict[str, Any] = field(default_factory=dict)
    privileged_when: Callable[[dict[str, Any]], bool] | None = None
    answer_within_s: float | None = None

    def spec(self, owner: str) -> RequestSpec:
        """The catalogue entry of this command when `owner` serves it."""
        return RequestSpec(self.command, owner, self.summary, self.args, privileged=self.privileged,
                           example=dict(self.example), privileged_when=self.privileged_when,
                           answer_within_s=self.answer_within_s)


_DECL_ATTR = "__smartbin_command__"


def command(name: str, args: type[BaseModel] = NoArgs, *, summary: str, privileged: bool = False,
            example: dict[str, Any] | None = None,
            privileged_when: Callable[[dict[str, Any]], bool] | None = None,
            answer_within_s: float | None = None) -> Callable[[Handler], Handler]:
    """Declare `handler(self, req, args)` as a command's: it returns the data, raises RequestError, or ANSWERED_LATER."""
    if not valid_command(name):
        raise ValueError(f"invalid command name {name!r}")
    decl = CommandDecl(name, args, summary, privileged, dict(example or {}), privileged_when, answer_within_s)

    def mark(handler: Handler) -> Handler:
        setattr(handler, _DECL_ATTR, decl)
        return handler

    return mark


@functools.cache
def declared_commands(cls: type) -> dict[str, tuple[CommandDecl, str]]:
    """The commands a class declares (its bases' too, a subclass's winning): name -> (declaration, method name)."""
    found: dict[str, tuple[CommandDecl, str]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            decl = getattr(value, _DECL_ATTR, None)
            if isinstance(decl, CommandDecl):
                found[decl.command] = (decl, attr)
    return found


def declared_specs(cls: type, owner: str) -> list[RequestSpec]:
    """Catalogue entries of every command a class declares, in declaration order, owned by `owner`."""
    return [decl.spec(owner) for decl, _ in declared_commands(cls).values()]


@dataclass(frozen=True)
class ParsedRequest:
    """A request whose payload parsed and whose args validated."""

    spec: RequestSpec
    args: dict[str, Any]
    transaction: Any
    raw_args: dict[str, Any] = field(default_factory=dict)
    """The args exactly as sent (what a signature covers); `args` is the validated form with defaults."""
    auth: Any = None
    """The `auth` object as sent, unchecked (None when absent)."""


class RequestRegistry:
    """Commands by name; filled at start-up, read-only afterwards."""

    def __init__(self) -> None:
        self._specs: dict[str, RequestSpec] = {}

    def register(self, spec: RequestSpec) -> None:
        """Add a command; names are validated so they are safe inside topics."""
        if not valid_command(spec.command):
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
                "privileged": s.privilege(),
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
            names = ", ".join(_key(k) for k in unknown[:10])
            raise RequestError(f"unknown top-level field(s): {names}; allowed: transaction, args, auth", transaction)
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
            raise RequestError("; ".join(field_errors(exc)), transaction) from None
        return ParsedRequest(spec=spec, args=model.model_dump(mode="json"), transaction=transaction, raw_args=args,
                             auth=body.get("auth"))


class RateLimiter:
    """Token buckets per key (command, privileged): `per_min` requests a minute, bursts of ceil(per_min / 6).

    Time is monotonic and passed in, so tests need no sleeping; a limit of 0 disables limiting.
    Keys come only from registered commands, so the number of buckets is bounded.
    """

    def __init__(self, per_min: int, privileged_per_min: int) -> None:
        self.per_min = per_min
        self.privileged_per_min = privileged_per_min
        self._buckets: dict[tuple[str, bool], list[float]] = {}  # key -> [tokens, last refill]

    @staticmethod
    def burst(per_min: int) -> int:
        """Bucket size: a sixth of the per-minute limit, rounded up, at least 1."""
        return max(1, math.ceil(per_min / 6))

    def limit(self, privileged: bool) -> int:
        """Requests per minute allowed for this kind of request (0: unlimited)."""
        return self.privileged_per_min if privileged else self.per_min

    def take(self, command: str, privileged: bool, now: float) -> float | None:
        """Spend one token; None when allowed, else the seconds until the next token."""
        per_min = self.limit(privileged)
        if per_min <= 0:
            return None
        capacity = float(self.burst(per_min))
        rate = per_min / 60.0
        bucket = self._buckets.setdefault((command, privileged), [capacity, now])
        tokens = min(capacity, bucket[0] + max(0.0, now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return (1.0 - tokens) / rate


def field_errors(exc: ValidationError) -> list[str]:
    """A validation error as the field errors a requester reads: `args.<field>: <message>`."""
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(_key(p) for p in err.get("loc", ()))
        msg = " ".join(str(err.get("msg", "invalid")).split())
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        out.append(f"args.{loc}: {msg}" if loc else f"args: {msg}")
    return out


_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _key(key: object) -> str:
    """A field name as it may appear in an error: plain names as they are, anything else JSON-quoted and cut
    short, so a requester cannot put line breaks or megabytes into responses and logs."""
    text = str(key)
    if _PLAIN_KEY_RE.match(text):
        return text
    quoted = json.dumps(text[:40])
    return quoted if len(text) <= 40 else quoted[:-1] + '..."'
