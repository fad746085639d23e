"""Home Assistant MQTT discovery: turns the entities components declare into retained config payloads."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .. import __version__
from ..config import Config
from ..runtime.bus import Entity
from ..runtime.commands import RequestRegistry

TOPIC_MAX_BYTES = 65535


def publish_topic_problem(topic: str) -> str | None:
    """Why a topic cannot be published to (wildcards, NUL, empty, too long, not UTF-8), or None when it can."""
    if not topic:
        return "must not be empty"
    if "+" in topic or "#" in topic:
        return "must not contain '+' or '#' (MQTT wildcards)"
    if "\x00" in topic:
        return "must not contain NUL characters"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    if size > TOPIC_MAX_BYTES:
        return f"too long ({size} bytes; MQTT allows {TOPIC_MAX_BYTES})"
    return None


ORIGIN = {"name": "smartbin-daemon", "sw_version": __version__, "support_url": "https://github.com/smartbin/smartbin_daemon"}


@dataclass(frozen=True)
class Topics:
    """Every topic of one bin, derived from `<base_topic>/<device_id>` and the discovery prefix."""

    root: str
    discovery_prefix: str
    device_id: str

    @classmethod
    def from_config(cls, cfg: Config) -> Topics:
        """Topics for a config."""
        return cls(cfg.root_topic, cfg.mqtt.discovery_prefix, cfg.device.id)

    @property
    def availability(self) -> str:
        """Retained `online`/`offline`."""
        return f"{self.root}/availability"

    def state(self, component: str) -> str:
        """Retained JSON state of a component."""
        return f"{self.root}/{component}"

    def event(self, type_: str) -> str:
        """Non-retained event stream of one type."""
        return f"{self.root}/event/{type_}"

    @property
    def requests(self) -> str:
        """Subscription filter for requests."""
        return f"{self.root}/request/#"

    @property
    def request_prefix(self) -> str:
        """Prefix stripped to get the command name."""
        return f"{self.root}/request/"

    def response(self, command: str) -> str:
        """Where the answer to a command goes."""
        return f"{self.root}/response/{command}"

    def command(self, command: str) -> str:
        """Request topic of a command (used by HA buttons/switches)."""
        return f"{self.root}/request/{command}"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth/will topic."""
        return f"{self.discovery_prefix}/status"

    def discovery(self, entity: Entity) -> str:
        """`<prefix>/<platform>/<device_id>/<object_id>/config`."""
        return f"{self.discovery_prefix}/{entity.platform}/{self.device_id}/{entity.object_id}/config"

    def response_topic_problem(self, topic: str | None) -> str | None:
        """Why a requester's MQTT 5 response topic must not be published to (None: absent or fine)."""
        if topic is None:
            return None
        problem = publish_topic_problem(topic)
        if problem is not None:
            return problem
        if topic.startswith("$"):
            return "must not start with '$' (broker-reserved topics)"
        own = (self.root + "/", self.discovery_prefix + "/")
        if (topic.startswith(own) or topic in (self.root, self.discovery_prefix)) \
                and not topic.startswith(self.root + "/response/"):
            return "must not point at this bin's own topics or at the discovery prefix (only <root>/response/... there)"
        return None


def device_block(cfg: Config) -> dict[str, Any]:
    """The HA device every entity of this bin belongs to."""
    return {
        "identifiers": [f"smartbin_{cfg.device.id}"],
        "name": cfg.device.name,
        "model": cfg.device.model,
        "manufacturer": cfg.device.manufacturer,
        "sw_version": __version__,
    }


def unique_id(device_id: str, entity: Entity) -> str:
    """Stable across restarts and renames of the entity: device id + object id."""
    return f"smartbin_{device_id}_{entity.object_id}"


_STATE_PLATFORMS = {"sensor", "binary_sensor"}
_PATH = re.compile(r"\bvalue_json((?:\.[A-Za-z_]\w*|\[[^\]]*\])+)")
_STEP = re.compile(r"\.([A-Za-z_]\w*)")


def bracket_paths(template: str) -> str:
    """`value_json.a.b` → `value_json['a']['b']`: a field named `items`/`values`/`keys` is the field, not a dict method."""
    return _PATH.sub(lambda m: "value_json" + _STEP.sub(r"['\1']", m.group(1)), template)

_COMMAND_PLATFORMS = {"button", "switch", "select", "number", "text", "lock"}


def entity_config(cfg: Config, topics: Topics, entity: Entity) -> dict[str, Any]:
    """The discovery payload of one entity."""
    payload: dict[str, Any] = {
        "name": entity.name,
        "unique_id": unique_id(cfg.device.id, entity),
        "object_id": f"smartbin_{cfg.device.id}_{entity.object_id}",
        "device": device_block(cfg),
        "origin": ORIGIN,
        "availability": [{"topic": topics.availability, "payload_available": "online", "payload_not_available": "offline"}],
    }
    if entity.platform not in {"button", "image", "camera"}:
        payload["state_topic"] = topics.state(entity.component)
    if entity.value_template is not None:
        key = "url_template" if entity.platform == "image" else "value_template"
        payload[key] = entity.value_template
    payload.update(entity.options)
    if entity.platform in _STATE_PLATFORMS and "expire_after" not in payload:
        # Every retained state is republished at least every mqtt.state_interval_s: three missed ones = gone.
        payload["expire_after"] = int(3 * cfg.mqtt.state_interval_s)
    for key, value in list(payload.items()):
        if (key == "topic" or key.endswith("_topic")) and key != "command_topic" and isinstance(value, str) \
                and not value.startswith(topics.root + "/"):
            payload[key] = topics.state(value)  # relative to <root>
    if entity.platform in _COMMAND_PLATFORMS and "command_topic" in payload:
        cmd = payload["command_topic"]
        if not cmd.startswith(topics.root + "/"):
            payload["command_topic"] = topics.command(cmd)
        payload.setdefault("qos", 1)  # a press is a request: at least once, like every other client's
    for key, value in payload.items():
        if key.endswith("_template") and isinstance(value, str):
            payload[key] = bracket_paths(value)
    return payload


_PAYLOAD_KEYS = ("payload_press", "payload_on", "payload_off")


def entity_privileged(entity: Entity, registry: RequestRegistry, topics: Topics) -> bool:
    """Whether an HA control would send a privileged request (HA cannot sign, so such controls are hidden).

    Fixed payloads (buttons, switches) are judged by their args; a control whose payload HA builds
    (select, number, text) counts as privileged when the command can be privileged at all.
    """
    if entity.platform not in _COMMAND_PLATFORMS:
        return False
    target = entity.options.get("command_topic")
    if not isinstance(target, str):
        return False
    if target.startswith(topics.request_prefix):
        target = target[len(topics.request_prefix):]
    elif target.startswith(topics.root + "/"):
        return False
    spec = registry.get(target)
    if spec is None:
        return False
    if spec.privileged:
        return True
    if spec.privileged_when is None:
        return False
    payloads = [entity.options[k] for k in _PAYLOAD_KEYS if k in entity.options]
    if not payloads:
        return True
    for raw in payloads:
        try:
            body = json.loads(raw) if isinstance(raw, str) else raw
            args = body.get("args") or {}
            if spec.is_privileged(spec.args.model_validate(args).model_dump(mode="json")):
                return True
        except (ValueError, AttributeError, TypeError, ValidationError):
            return True  # cannot tell: do not advertise a control that may only ever be refused
    return False


def encode(payload: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON (stable bytes, so re-publishing is a no-op for HA)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
