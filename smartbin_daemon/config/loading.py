"""Loading: YAML to the model with every error named by key path, secret files, redaction and diffs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    SecretStr,
    ValidationError,
)

from .alerts import url_problem
from .base import REDACTED, TOPIC_NAME_RE, ConfigError
from .boards import gpio_board_problems
from .root import Config

# --------------------------------------------------------------------------- loading


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif _PLAIN_KEY_RE.match(str(item)):
            parts.append(("." if parts else "") + str(item))
        else:  # an odd key (empty, spaces, dots, non-ASCII) is quoted so the path stays unambiguous
            parts.append(f"[{json.dumps(str(item))}]")
    return "".join(parts) or "<root>"


_PLAIN_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """Walk the model along `loc` (without its last item) and list the keys allowed there."""
    current: Any = model
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or item not in fields:
            return None
        annotation = fields[item].annotation
        current = _first_model(annotation)
        if current is None:
            return None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else None


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_errors(exc: ValidationError, model: type[BaseModel] = Config) -> list[str]:
    """One line per error: `key.path: bad value -> what is allowed`; secrets are never echoed."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        path = _format_loc(loc)
        value = err.get("input")
        secret = any(str(p) in {"password", "secret", "hmac_secret"} for p in loc) or loc[:3] == ("alerts", "webhook", "url")
        shown = REDACTED if secret else _short(value)
        if err.get("type") == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{path}: unknown key{hint}")
        elif err.get("type") == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            msg = str(err.get("msg", "invalid value"))
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if err.get("type") == "string_pattern_mismatch" and TOPIC_NAME_RE.pattern in msg:
                msg = "must be lower-case letters, digits, '-' or '_' (it is used inside MQTT topics)"
            if "\n" in msg:  # a section validator naming several problems, each `sub.path: text`
                lines.extend(line if path == "<root>" else f"{path}.{line}" for line in msg.split("\n") if line)
                continue
            got = "" if isinstance(value, dict) else f" (got {shown})"
            lines.append(f"{path}: {msg}{got}")
    return lines


def resolve_secret_file(path: Path) -> Path:
    """Resolve a relative secret file against $CREDENTIALS_DIRECTORY (systemd LoadCredential=) first."""
    if path.is_absolute():
        return path
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / path).exists():
        return Path(cred_dir) / path
    return path


def _read_secret_file(path: Path, base_dir: Path | None) -> str:
    resolved = resolve_secret_file(path)
    if not resolved.is_absolute() and not resolved.exists() and base_dir is not None:
        resolved = base_dir / resolved
    return resolved.read_text(encoding="utf-8").strip()


def _resolve_relative(cfg: Config, base_dir: Path) -> None:
    """Relative file paths in the config are relative to the config file's directory, not to the CWD."""
    if not cfg.storage.path.is_absolute():
        cfg.storage.path = (base_dir / cfg.storage.path).resolve()
    if not cfg.simulation.samples.is_absolute():
        cfg.simulation.samples = (base_dir / cfg.simulation.samples).resolve()
    det = cfg.detector
    if not det.model.is_absolute():
        det.model = (base_dir / det.model).resolve()
    if det.classmap is not None and not det.classmap.is_absolute():
        det.classmap = (base_dir / det.classmap).resolve()
    tls = cfg.mqtt.tls
    for name in ("ca", "cert", "key"):
        value = getattr(tls, name)
        if value is not None and not value.is_absolute():
            setattr(tls, name, (base_dir / value).resolve())


def _read_webhook_url(cfg: Config, base_dir: Path | None, errors: list[str]) -> None:
    """alerts.webhook.url_file: read the URL (a secret) into alerts.webhook.url, or name the problem."""
    hook = cfg.alerts.webhook
    if hook.url_file is None:
        return
    where = f"alerts.webhook.url_file: {str(hook.url_file)!r}"
    try:
        secret = _read_secret_file(hook.url_file, base_dir)
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"{where}: cannot be read: {getattr(exc, 'strerror', None) or exc}")
        return
    problem = url_problem(secret) if secret else "is empty"
    if problem:
        errors.append(f"{where}: {problem}")
    else:
        hook.url = SecretStr(secret)


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem by key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"<root>: the file must hold a mapping of sections, got {type(data).__name__}"])
    try:
        cfg = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(source, format_validation_errors(exc)) from None
    if base_dir is not None:
        _resolve_relative(cfg, base_dir)
    errors: list[str] = []
    if cfg.mqtt.password_file is not None:
        try:
            secret = _read_secret_file(cfg.mqtt.password_file, base_dir)
        except OSError as exc:
            errors.append(f"mqtt.password_file: cannot read {str(cfg.mqtt.password_file)!r}: {exc.strerror or exc}")
        else:
            if not secret:
                errors.append(f"mqtt.password_file: {str(cfg.mqtt.password_file)!r} is empty")
            cfg.mqtt.password = SecretStr(secret)
    if cfg.security.hmac_secret_file is not None:
        try:
            secret = _read_secret_file(cfg.security.hmac_secret_file, base_dir)
        except OSError as exc:
            errors.append(f"security.hmac_secret_file: cannot read {str(cfg.security.hmac_secret_file)!r}: "
                          f"{exc.strerror or exc}")
        except UnicodeDecodeError:
            errors.append(f"security.hmac_secret_file: {str(cfg.security.hmac_secret_file)!r} is not UTF-8 text")
        else:
            if not secret:
                errors.append(f"security.hmac_secret_file: {str(cfg.security.hmac_secret_file)!r} is empty")
            else:
                cfg.security.hmac_secret = SecretStr(secret)
    _read_webhook_url(cfg, base_dir, errors)
    for key_id, key in cfg.security.keys.items():
        if key.secret_file is None or key.revoked:
            continue
        where = f"security.keys.{key_id}.secret_file"
        try:
            secret = _read_secret_file(key.secret_file, base_dir)
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{where}: cannot read {str(key.secret_file)!r}: {getattr(exc, 'strerror', None) or exc}")
        else:
            if not secret:
                errors.append(f"{where}: {str(key.secret_file)!r} is empty")
            key.secret = SecretStr(secret)
    errors += gpio_board_problems(cfg.gpio)  # the pins of this board (a Jetson module's header, its PWM pins)
    if errors:
        raise ConfigError(source, errors)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(p, [f"<file>: cannot read {str(p)!r}: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(p, [f"<yaml>: syntax error{where}: {problem}"]) from None
    return parse_config(data, str(p), p.resolve().parent)


def redacted_dict(cfg: Config) -> dict[str, Any]:
    """The effective config as plain JSON-able data, with every secret replaced."""
    data = cfg.model_dump(mode="json")
    _redact(data)
    return data


_SECRET_KEYS = {"password", "secret", "hmac_secret", "token"}


def _redact(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _SECRET_KEYS and value is not None:
                node[key] = REDACTED
            else:
                _redact(value)
    elif isinstance(node, list):
        for item in node:
            _redact(item)


def config_diff(old: Config, new: Config) -> list[str]:
    """Dotted paths of leaf values that differ between two configs."""
    out: list[str] = []
    _diff(old.model_dump(mode="json"), new.model_dump(mode="json"), "", out)

    def secret(c: Config) -> str | None:
        return c.mqtt.password.get_secret_value() if c.mqtt.password is not None else None

    if secret(old) != secret(new) and "mqtt.password" not in out:
        out.append("mqtt.password")
    if old.security.secret() != new.security.secret() and "security.hmac_secret" not in out:
        out.append("security.hmac_secret")  # the path only: a secret's value never leaves this function
    if old.alerts.webhook.target() != new.alerts.webhook.target() and "alerts.webhook.url" not in out:
        out.append("alerts.webhook.url")
    return out


def _diff(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key, out)
    elif a != b:
        out.append(prefix)
