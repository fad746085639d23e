"""The backup document (`backup` / `restore`): calibration and counters of the fill tracker, the workflow's
maintenance mode, with a format version, the device id, when it was made and by which daemon version.

Why here: the daemon component builds and checks the whole document, the fill tracker restores its own part with the
same model, and smartbinctl writes and reads the file; none of them may import another, all may read `states/`.
It holds no secrets: distances, counts, timestamps, a flag, the device id and the daemon version.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..runtime.status import StrEnum

BACKUP_FORMAT = "smartbin-backup"
BACKUP_FORMAT_VERSION = 1
COMPARTMENT_ID = re.compile(r"^[a-z0-9_-]{1,64}$")
MIN_SPAN_MM = 20.0
"""The empty distance exceeds the full one by at least this much (as `bin/calibrate` requires)."""


class CalibrationSource(StrEnum):
    """Where a compartment's calibration comes from: the config file, or a `bin/calibrate` request (persisted)."""

    CONFIG = "config"
    REQUEST = "request"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompartmentBackup(_Part):
    """One compartment: its calibration and counters."""

    empty_mm: float = Field(gt=0, le=5000)
    full_mm: float = Field(ge=0, le=5000)
    calibration_source: CalibrationSource = Field(description="config: restoring drops a request's override")
    calibrated_at: datetime | None = None
    items: int = Field(ge=0, le=10**9, description="items since the last emptying")
    items_total: int = Field(ge=0, le=10**12)
    emptied_at: datetime | None = None

    @model_validator(mode="after")
    def _span(self) -> CompartmentBackup:
        if self.empty_mm - self.full_mm < MIN_SPAN_MM:
            raise ValueError(f"empty_mm ({self.empty_mm:g}) must exceed full_mm ({self.full_mm:g}) by at least "
                             f"{MIN_SPAN_MM:g} mm")
        return self


class FillBackup(_Part):
    """`bin/restore` args and the document's `fill` part: the compartments by id."""

    compartments: dict[str, CompartmentBackup] = Field(min_length=1, max_length=16,
                                                        description="calibration and counters by compartment id")

    @model_validator(mode="after")
    def _ids(self) -> FillBackup:
        bad = [cid for cid in self.compartments if not COMPARTMENT_ID.match(cid)]
        if bad:
            raise ValueError(f"compartment ids must match {COMPARTMENT_ID.pattern}: {bad[0][:64]!r}")
        return self


class WorkflowBackup(_Part):
    """The workflow's persisted mode (items in flight and the error state are never restored)."""

    maintenance: bool


class BackupDocument(_Part):
    """The whole document `backup` answers and `restore` takes."""

    format: Literal["smartbin-backup"]
    format_version: int = Field(ge=1)
    device: str = Field(min_length=1, max_length=64)
    created_at: datetime
    daemon_version: str = Field(min_length=1, max_length=64)
    fill: FillBackup | None = None
    workflow: WorkflowBackup | None = None

