"""Backup and restore of calibration, counters and the workflow's mode: the document built from the owners'
published states, and the checks a document passes before any owner is asked to restore its part.

Why from the published states: the fill tracker and the workflow publish their calibration, counters and mode
(forced after every change a request or an item makes), so the daemon reads them from the bus's last-value cache
without touching another worker's objects; restoring goes back to each owner as a request (`bin/restore` to the
fill tracker, `maintenance` to the workflow), which applies its part in one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..runtime.commands import RequestError, field_errors
from ..states.backup import (
    BACKUP_FORMAT,
    BACKUP_FORMAT_VERSION,
    BackupDocument,
    CompartmentBackup,
    FillBackup,
    WorkflowBackup,
)
from ..states.fill import FillState
from ..states.workflow import SortingState, WorkflowState

RESTORE_TIMEOUT_S = 10.0
IN_FLIGHT = frozenset({SortingState.ITEM_PRESENT, SortingState.CLASSIFYING, SortingState.ROUTING,
                       SortingState.CONFIRMING})


class RestoreArgs(BaseModel):
    """Arguments of restore."""

    model_config = ConfigDict(extra="forbid")
    document: dict[str, Any] = Field(description="the document `backup` answered (`smartbinctl backup` wrote)")
    force: bool = Field(default=False, description="accept a document of another device or format version")


def build_backup(device: str, version: str, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The backup document from the fill tracker's and the workflow's published states."""
    doc = BackupDocument(format=BACKUP_FORMAT, format_version=BACKUP_FORMAT_VERSION, device=device,
                         created_at=datetime.now(timezone.utc), daemon_version=version)
    if "fill" in states:
        fill = FillState.from_json(states["fill"])
        doc.fill = FillBackup(compartments={cid: CompartmentBackup(
            empty_mm=c.calibration.empty_mm, full_mm=c.calibration.full_mm,
            calibration_source=c.calibration.source, calibrated_at=c.calibration.calibrated_at,
            items=c.items, items_total=c.items_total, emptied_at=c.emptied_at)
            for cid, c in fill.compartments.items()})
    if "workflow" in states:
        doc.workflow = WorkflowBackup(maintenance=bool(WorkflowState.from_json(states["workflow"]).maintenance))
    return doc.model_dump(mode="json")


def check_document(raw: dict[str, Any], *, device: str, compartments: list[str], force: bool) -> BackupDocument:
    """The validated document, or a RequestError naming every problem by key path (`args.document.<path>`)."""
    kind, version, owner = raw.get("format"), raw.get("format_version"), raw.get("device")
    if kind != BACKUP_FORMAT:
        raise RequestError(f"args.document.format: not a SmartBin backup (expected {BACKUP_FORMAT!r})")
    if version != BACKUP_FORMAT_VERSION and not force:
        raise RequestError(f"args.document.format_version: {version!r} is not {BACKUP_FORMAT_VERSION}, the version "
                           "this daemon writes; send force: true to try it anyway")
    if owner != device and not force:
        raise RequestError(f"args.document.device: the backup is of {owner!r}, this bin is {device!r}; send force: true "
                           "to restore it here anyway")
    try:
        doc = BackupDocument.model_validate(raw)
    except ValidationError as exc:
        errors = [e.replace("args.", "args.document.", 1) for e in field_errors(exc)]
        raise RequestError("; ".join(errors), data={"errors": errors}) from None
    unknown = sorted(set(doc.fill.compartments) - set(compartments)) if doc.fill else []
    if unknown:
        raise RequestError(f"args.document.fill.compartments.{unknown[0]}: no such compartment on this bin; "
                           f"known: {', '.join(compartments)}")
    return doc


@dataclass
class RestoreJob:
    """A restore in progress: the request, the owners' requests still unanswered, and their answers."""

    request: Any
    waiting: dict[str, str]
    """Request id -> the part (`fill`, `workflow`)."""
    deadline: float
    summary: dict[str, Any] = field(default_factory=dict)
    """What the answer says about the document (device, created_at, forced)."""
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def answered(self, request_id: str, ok: bool, data: Any, error: str | None) -> bool:
        """Record an owner's answer; True once every part has answered."""
        part = self.waiting.pop(request_id)
        self.answers[part] = {"ok": ok, "data": data, "error": error}
        return not self.waiting

    def overdue(self, now: float | None = None) -> bool:
        """No answer from some owner within RESTORE_TIMEOUT_S."""
        return (time.monotonic() if now is None else now) >= self.deadline

    def outcome(self) -> tuple[dict[str, Any], str | None]:
        """The answer's data, and the error when a part failed or never answered (None: every part restored)."""
        data = {**self.summary, "parts": self.answers}
        failed = [f"{part}: {a['error']}" for part, a in self.answers.items() if not a["ok"]]
        failed += [f"{part}: no answer within {RESTORE_TIMEOUT_S:g}s" for part in self.waiting.values()]
        if not failed:
            return {**self.summary, "restored": {part: a["data"] for part, a in self.answers.items()}}, None
        done = [part for part, a in self.answers.items() if a["ok"]]
        return data, ("restore incomplete: " + "; ".join(failed)
                      + (f" (restored: {', '.join(done)})" if done else " (nothing was restored)"))
