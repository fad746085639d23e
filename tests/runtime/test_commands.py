"""Commands declared on their handlers (`@command`): the worker serves them, its catalogue lists them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from smartbin_daemon.config import Config
from smartbin_daemon.hardware.arduino.link import ArduinoLink
from smartbin_daemon.runtime.bus import SIGNED, Bus, Request, Response
from smartbin_daemon.runtime.commands import (
    ANSWERED_LATER,
    NoArgs,
    RequestError,
    RequestRegistry,
    RequestSpec,
    command,
)
from smartbin_daemon.runtime.worker import Worker


class GreetArgs(BaseModel):
    """Arguments of `greet`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    times: int = Field(default=1, ge=1, le=3)


class Greeter(Worker):
    """A worker with one handler of each kind."""

    def __init__(self, bus: Bus, offered: frozenset[str] | None = None) -> None:
        super().__init__("greeter", bus, inbox=(Request,))
        self.offered = offered
        self.calls: list[tuple[str, Any]] = []
        self.waiting: Request | None = None

    def handle(self, msg: Any) -> None:
        if isinstance(msg, Request):
            self.answer(msg)

    def offer(self, spec: RequestSpec) -> RequestSpec | None:
        return spec if self.offered is None or spec.command in self.offered else None

    @command("greet", GreetArgs, example={"name": "Ada"}, summary="Say hello.")
    def _greet(self, req: Request, args: GreetArgs) -> dict[str, Any]:
        self.calls.append(("greet", args))
        return {"hello": " ".join([args.name] * args.times)}

    @command("refuse", privileged=True, summary="Always refused.")
    def _refuse(self, req: Request, args: NoArgs) -> None:
        raise RequestError("not today", data={"retry_in_s": 60})

    @command("later", summary="Answered when `finish` is called.")
    def _later(self, req: Request, args: NoArgs) -> object:
        self.waiting = req
        return ANSWERED_LATER

    @command("crash", summary="A bug in a handler.")
    def _crash(self, req: Request, args: NoArgs) -> None:
        raise ZeroDivisionError("division by zero")

    def finish(self) -> None:
        assert self.waiting is not None
        self.reply(self.waiting, {"done": True})


class Rig:
    """A greeter on a real bus, and a requester that sees every response."""

    def __init__(self, offered: frozenset[str] | None = None) -> None:
        self.bus = Bus()
        self.worker = Greeter(self.bus, offered)
        self.responses = self.bus.subscribe("requester", (Response,))
        self.n = 0

    def send(self, command: str, args: dict[str, Any], authority: str = SIGNED, target: str = "greeter") -> str:
        self.n += 1
        rid = f"r{self.n}"
        self.bus.publish(Request(target, command, args, rid, authority=authority))
        return rid

    def request(self, command: str, args: dict[str, Any] | None = None, **kw: Any) -> Response:
        rid = self.send(command, args or {}, **kw)
        assert self.worker.drain() == 1
        resp = self.responses.get(1.0)
        assert isinstance(resp, Response) and resp.request_id == rid and resp.command == command
        return resp


def test_a_valid_request_is_answered_with_what_its_handler_returns() -> None:
    rig = Rig()
    resp = rig.request("greet", {"name": "Ada", "times": 2})
    assert resp.ok and resp.data == {"hello": "Ada Ada"} and resp.error is None
    [(_, args)] = rig.worker.calls
    assert isinstance(args, GreetArgs), "the handler gets the validated args model, defaults filled in"


def test_invalid_args_are_refused_with_the_field_error_and_the_handler_never_runs() -> None:
    rig = Rig()
    missing = rig.request("greet", {})
    assert not missing.ok and missing.error == "args.name: Field required"
    extra = rig.request("greet", {"name": "Ada", "shout": True})
    assert not extra.ok and extra.error == "args.shout: unknown field"
    several = rig.request("greet", {"name": "", "times": 9})
    assert not several.ok and several.error is not None
    assert several.error.startswith("args.name: ") and "; args.times: " in several.error
    assert rig.worker.calls == []


def test_a_request_error_becomes_an_error_response_that_keeps_its_data() -> None:
    resp = Rig().request("refuse")
    assert not resp.ok and resp.error == "not today" and resp.data == {"retry_in_s": 60}


def test_an_answered_later_handler_publishes_nothing_until_it_answers() -> None:
    rig = Rig()
    rid = rig.send("later", {})
    assert rig.worker.drain() == 1
    assert rig.responses.get(0.2) is None, "no answer while the work is pending"
    rig.worker.finish()
    resp = rig.responses.get(1.0)
    assert isinstance(resp, Response) and resp.request_id == rid and resp.ok and resp.data == {"done": True}
    assert rig.responses.get(0.1) is None, "exactly one answer"


def test_an_unknown_command_is_answered_with_an_error() -> None:
    resp = Rig().request("launch")
    assert not resp.ok and resp.error == "greeter does not handle 'launch'"


def test_a_crashing_handler_answers_with_the_exception_and_logs_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    with caplog.at_level(logging.ERROR):
        resp = rig.request("crash")
    assert not resp.ok and resp.error == "ZeroDivisionError: division by zero"
    assert any(r.exc_info and "crash" in r.getMessage() for r in caplog.records)
    assert rig.request("greet", {"name": "Bo"}).ok, "the worker keeps serving"


def test_the_catalogue_lists_the_declared_commands_owned_by_the_worker() -> None:
    specs = {s.command: s for s in Rig().worker.requests()}
    assert list(specs) == ["greet", "refuse", "later", "crash"], "in declaration order"
    assert {s.owner for s in specs.values()} == {"greeter"}
    assert specs["greet"].args is GreetArgs and specs["greet"].example == {"name": "Ada"}
    assert specs["refuse"].privileged and not specs["greet"].privileged
    registry = RequestRegistry()
    for spec in specs.values():
        registry.register(spec)
    help_entry = registry.catalogue()["greet"]
    assert help_entry["summary"] == "Say hello." and help_entry["owner"] == "greeter"
    assert help_entry["args_schema"]["required"] == ["name"]


def test_a_worker_can_offer_only_some_of_its_commands() -> None:
    rig = Rig(offered=frozenset({"greet"}))
    assert [s.command for s in rig.worker.requests()] == ["greet"]


def test_a_command_name_must_be_usable_as_a_topic_level() -> None:
    with pytest.raises(ValueError, match="invalid command name"):
        command("Bad+Name", summary="never registered")


def test_an_internal_request_with_bad_args_is_refused_by_the_owning_component(tmp_path: Path) -> None:
    """The daemon's own requests (the workflow asking for a route) pass the same schema as a requester's."""
    bus = Bus()
    link = ArduinoLink(bus, Config().arduino, tmp_path)  # never started: the link is down
    responses = bus.subscribe("workflow", (Response,))
    link.handle(Request("arduino", "route", {"compartment": 99, "command_id": "xyz"}, "internal-1"))
    bad = responses.get(1.0)
    assert isinstance(bad, Response) and not bad.ok
    assert bad.error is not None and bad.error.startswith("args.compartment: ") and "args.command_id: " in bad.error
    link.handle(Request("arduino", "route", {"compartment": 2}, "internal-2"))
    good = responses.get(1.0)
    assert isinstance(good, Response) and not good.ok and good.error is not None
    assert good.error.startswith("arduino is disconnected"), "valid args reach the handler, which needs the link"
