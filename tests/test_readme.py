"""The README's tables stay true: every config key, request and HA entity in the code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from smartbin_daemon.config import Config
from smartbin_daemon.control import core_requests

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        sub = next((c for c in (ann, *getattr(ann, "__args__", ())) if isinstance(c, type) and issubclass(c, BaseModel)), None)
        keys += leaf_keys(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]
    return keys


def documented_config_keys() -> set[str]:
    return set(re.findall(r"^\| `([a-z_.]+)` \|", README, flags=re.M))


def test_every_config_key_is_in_the_reference_table() -> None:
    missing = set(leaf_keys(Config)) - documented_config_keys()
    assert not missing, f"README config table lacks: {sorted(missing)}"


def test_the_reference_table_documents_no_key_that_does_not_exist() -> None:
    keys = set(leaf_keys(Config))
    stale = {k for k in documented_config_keys() if "." in k and k.split(".")[0] in Config.model_fields} - keys
    assert not stale, f"README documents keys that no longer exist: {sorted(stale)}"


def test_every_request_is_in_the_request_table() -> None:
    for spec in core_requests():
        assert re.search(rf"^\| `{re.escape(spec.command)}` \| {spec.owner} \|", README, flags=re.M), spec.command


def test_every_entity_object_id_is_documented(tmp_path: Path) -> None:
    from smartbin_daemon.config import parse_config
    from smartbin_daemon.control import DaemonControl
    from smartbin_daemon.health.monitor import health_entities
    from smartbin_daemon.mqtt.client import MqttWorker
    from smartbin_daemon.mqtt.outbox import Outbox
    from smartbin_daemon.runtime.bus import Bus
    from smartbin_daemon.runtime.commands import RequestRegistry
    from smartbin_daemon.store import Store

    cfg = parse_config({"storage": {"path": str(tmp_path)}})
    bus = Bus()
    registry = RequestRegistry()
    entities = [*DaemonControl(bus, cfg, registry).entities(),
                *MqttWorker(bus, cfg, Outbox(Store(tmp_path / "db")), registry).entities()]
    entities += list(health_entities(10, pi_present=True, gpu_present=True))
    for entity in entities:
        assert f"`{entity.object_id}`" in README, entity.object_id


def test_every_smartbin_event_id_is_listed_for_technicians() -> None:
    source = "\n".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "smartbin_daemon").rglob("*.py"))
    ids = set(re.findall(r'\bev\(\s*"([a-z_]+)"', source))
    listed = set(re.findall(r"`([a-z_]+)`", README[README.index("Stable `SMARTBIN_EVENT` ids"):][:4000]))
    assert ids and not ids - listed, f"README lacks SMARTBIN_EVENT ids: {sorted(ids - listed)}"
