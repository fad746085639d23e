"""Which Home Assistant discovery configs this run published, and the ones an earlier run left.

Why: a component disabled (or an entity renamed) between two runs would otherwise leave its retained config, and an
`unavailable` entity, in Home Assistant forever. The topics holding a config are remembered in the store; after the
first connection every worker gets a settle time to announce its entities, then what an earlier run left and this run
has not published is cleared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TopicMemory(Protocol):
    """Where the topics are kept across restarts (the outbox's meta table)."""

    def discovery_topics(self) -> set[str]: ...
    def set_discovery_topics(self, topics: set[str]) -> None: ...


class DiscoveryLedger:
    """The published configs by component, the earlier run's topics until cleared, and the settle deadline."""

    def __init__(self, memory: TopicMemory, settle_s: float, clock: Callable[[], float]) -> None:
        self.memory = memory
        self.settle_s = settle_s
        self.clock = clock
        self.published: dict[str, dict[str, bytes]] = {}
        self._earlier: set[str] | None = None  # topics with a config from earlier runs, until cleared
        self._settle_at: float | None = None

    def connected(self) -> None:
        """The first connection starts the settle time (later reconnects do not)."""
        if self._settle_at is None:
            self._earlier = self.memory.discovery_topics()
            self._settle_at = self.clock() + self.settle_s

    def replace(self, component: str, configs: dict[str, bytes]) -> dict[str, bytes]:
        """Record a component's configs (topic -> body, empty = removed); returns what it had before."""
        before = self.published.get(component, {})
        self.published[component] = configs
        if configs != before:
            self._remember()
        return before

    def stale_due(self) -> list[str]:
        """Once the settle time has passed (once): the earlier run's topics this run has not published."""
        if self._earlier is None or self._settle_at is None or self.clock() < self._settle_at:
            return []
        stale = self._earlier - self._live()
        self._earlier = None
        self._remember()
        return sorted(stale)

    def _live(self) -> set[str]:
        return {topic for configs in self.published.values() for topic, body in configs.items() if body}

    def _remember(self) -> None:
        self.memory.set_discovery_topics(self._live() | (self._earlier or set()))
