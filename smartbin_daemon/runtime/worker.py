"""The worker base every component thread is built on: a name, a stop event, a heartbeat, a bounded loop, and
the serving of the requests it declares with `@command` (runtime/commands.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from .bus import Bus, Entity, Request, Response, Subscription
from .commands import ANSWERED_LATER, RequestError, RequestSpec, declared_commands, field_errors
from .state import State

logger = logging.getLogger(__name__)


class FatalWorkerError(Exception):
    """Raised by a worker when retrying cannot help (a wrong or busy pin): it is marked failed at once."""


class Worker:
    """One component thread.

    Subclasses override `setup()` (open resources; runs in the worker thread on every (re)start),
    `step()` (one bounded iteration: it must return within `tick_s` or so, typically by waiting on
    `self.next_message()`), and `teardown()` (always runs, also after a crash). The supervisor owns
    the thread; an exception escaping `run()` is a crash that it logs and restarts with backoff.
    """

    critical: bool = True
    """A critical worker's stale heartbeat withholds the systemd watchdog ping (so systemd restarts us)."""

    state_min_interval_s: float = 1.0
    """`publish_state()` sends a changed state at most this often (unless forced)."""
    state_max_interval_s: float = 10.0
    """... and an unchanged one at least this often."""

    def __init__(self, name: str, bus: Bus, *, tick_s: float = 1.0, inbox: Iterable[type] = (), inbox_size: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.bus = bus
        self.tick_s = tick_s
        self.clock = clock
        """Monotonic seconds for the heartbeat, state throttling and a subclass's timeouts; tests pass a stepped one."""
        self.stop_event = threading.Event()
        self.inbox: Subscription | None = bus.subscribe(name, inbox, inbox_size) if inbox else None
        self.last_beat = clock()
        self.started_at = clock()
        self._last_state: dict[str, Any] | None = None
        self._last_state_at = 0.0

    # -- lifecycle hooks ----------------------------------------------------

    def setup(self) -> None:
        """Open resources; called in the worker thread before the loop, on every (re)start."""

    def step(self) -> None:
        """One bounded iteration of work. The default waits for one inbox message and handles it."""
        msg = self.next_message(self.tick_s)
        if msg is not None:
            self.handle(msg)

    def handle(self, msg: Any) -> None:
        """React to one inbox message."""

    def teardown(self) -> None:
        """Release resources; always called when the loop ends, also after a crash."""

    # -- used by the loop ---------------------------------------------------

    def beat(self) -> None:
        """Mark this worker alive."""
        self.last_beat = self.clock()

    def heartbeat_age(self) -> float:
        """Seconds since the last heartbeat."""
        return self.clock() - self.last_beat

    def next_message(self, timeout: float) -> Any | None:
        """Wait up to `timeout` s for an inbox message (None on timeout, stop or no inbox)."""
        if self.stop_event.is_set():
            return None
        if self.inbox is None:
            self.stop_event.wait(timeout)
            return None
        return self.inbox.get(timeout)

    def drain(self, wait_s: float = 0.0, limit: int = 100) -> int:
        """Handle what is queued, at most `limit` messages so the loop keeps its pace; with `wait_s` > 0 first wait
        that long for a message. Returns how many were handled."""
        assert self.inbox is not None
        msg = self.inbox.get(wait_s) if wait_s > 0 else (self.inbox.get(0) if len(self.inbox) else None)
        handled = 0
        while msg is not None:
            self.handle(msg)
            handled += 1
            if handled >= limit:
                break
            msg = self.inbox.get(0) if len(self.inbox) else None
        return handled

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; True if stop was requested."""
        return self.stop_event.wait(seconds)

    def run(self) -> None:
        """Thread body: setup, loop until stopped, teardown. Exceptions propagate to the supervisor."""
        self.stop_event.clear()
        self.started_at = self.clock()
        self.beat()
        try:
            self.setup()
            while not self.stop_event.is_set():
                self.beat()
                self.step()
        finally:
            try:
                self.teardown()
            except Exception:
                logger.exception("%s: teardown failed", self.name)

    def request_stop(self) -> None:
        """Ask the loop to end soon (non-blocking)."""
        self.stop_event.set()
        if self.inbox is not None:
            self.inbox.wake()

    def entities(self) -> tuple[Entity, ...]:
        """The Home Assistant entities this worker declares (published as its `Discovery`); none by default."""
        return ()

    # -- requests ------------------------------------------------------------

    def requests(self) -> list[RequestSpec]:
        """Catalogue entries of the commands this worker declares (`@command`) and offers, owned by its name."""
        specs = (self.offer(decl.spec(self.name)) for decl, _ in declared_commands(type(self)).values())
        return [spec for spec in specs if spec is not None]

    def offer(self, spec: RequestSpec) -> RequestSpec | None:
        """Hook: the catalogue entry to offer for a declared command (None: not offered with this config)."""
        return spec

    def answer(self, req: Request) -> None:
        """Serve a request with its declared handler: validate the args (internal requests too), call it, answer."""
        declared = declared_commands(type(self)).get(req.command)
        if declared is None:
            self.refuse(req, f"{self.name} does not handle {req.command!r}")
            return
        decl, attr = declared
        try:
            args = decl.args.model_validate(req.args)
        except ValidationError as exc:
            self.refuse(req, "; ".join(field_errors(exc)))
            return
        handler = getattr(self, attr)
        self.serve(req, lambda: handler(req, args))

    def serve(self, req: Request, work: Callable[[], Any]) -> None:
        """Run `work` and answer `req` with its result (unless ANSWERED_LATER); never raises. Any thread may call it."""
        try:
            data = work()
        except RequestError as exc:
            self.refuse(req, str(exc), exc.data)
        except Exception as exc:  # noqa: BLE001 - a request gets an answer, it does not crash the worker
            self.request_crashed(req, exc)
        else:
            if data is not ANSWERED_LATER:
                self.reply(req, data)

    def reply(self, req: Request, data: Any = None) -> None:
        """Answer a request: done, with `data`."""
        self.bus.publish(Response(req.request_id, req.command, True, data=data))

    def refuse(self, req: Request, error: str, data: Any = None) -> None:
        """Answer a request: not served, with the message for the requester (and optional `data`)."""
        self.bus.publish(Response(req.request_id, req.command, False, data=data, error=error))

    def request_crashed(self, req: Request, exc: Exception) -> None:
        """A handler raised something other than RequestError: log it with its traceback and answer with its type."""
        logger.exception("%s: request %s failed", self.name, req.command)
        self.refuse(req, f"{type(exc).__name__}: {exc}")

    def publish_state(self, build: Callable[[], State | dict[str, Any]], force: bool = False) -> None:
        """Publish `build()` (the component's state model) when forced, when it changed (rate-limited), or
        when the last copy is getting old; `build` only runs when a publish may be due."""
        now = self.clock()
        if not force and now - self._last_state_at < self.state_min_interval_s:
            return
        built = build()
        state = built.to_json() if isinstance(built, State) else built
        if force or state != self._last_state or now - self._last_state_at >= self.state_max_interval_s:
            self._last_state = state
            self._last_state_at = now
            self.bus.set_state(self.name, state)


STATE_EXPIRE_AFTER_S = int(3 * Worker.state_max_interval_s)
"""HA `expire_after` for entities of a worker's own state: three missed publications make them unavailable."""
