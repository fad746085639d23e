"""Bin sections: compartments, sensors, calibration, fill filtering, emptying and the sorting workflow."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from .base import TopicName, _Model

# --------------------------------------------------------------------------- bins (compartments, fill, workflow)


WASTE_CATEGORIES = ("plastic", "metal", "glass", "paper_cardboard", "organic", "e_waste", "hazardous", "residual")
"""The product's waste categories (the detector's class map sends every class to one of them)."""

WasteCategory = Literal["plastic", "metal", "glass", "paper_cardboard", "organic", "e_waste", "hazardous", "residual"]


class SensorRef(_Model):
    """Where a compartment's ultrasonic distance comes from."""

    source: Literal["arduino", "gpio"] = Field(default="arduino", description="arduino: TEL d=...; gpio: gpio.distance[]")
    channel: int = Field(ge=1, le=16, description="arduino: position in TEL d= (1-based); gpio: gpio.distance[].compartment")


class CalibrationConfig(_Model):
    """Distances (mm, sensor to surface) of an empty and of a full compartment; `bin/calibrate` overrides them."""

    empty_mm: float = Field(default=600.0, gt=0, le=5000)
    full_mm: float = Field(default=100.0, gt=0, le=5000)

    @model_validator(mode="after")
    def _ordered(self) -> CalibrationConfig:
        if self.empty_mm - self.full_mm < 20:
            raise ValueError(f"empty_mm ({self.empty_mm}) must exceed full_mm ({self.full_mm}) by at least 20 mm")
        return self


class CompartmentConfig(_Model):
    """One compartment: what it accepts, where its flap and its fill sensor are."""

    id: TopicName
    name: str = Field(min_length=1, max_length=64)
    categories: list[WasteCategory] = Field(min_length=1, description="waste categories routed here")
    flap: int | None = Field(default=None, ge=1, le=16,
                             description="Arduino ROUTE position; default: the sensor channel, else the list position")
    sensor: SensorRef | None = Field(default=None, description="null: no fill sensor (items are still counted)")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    capacity_l: float | None = Field(default=None, gt=0, le=10_000, description="volume, to report free litres")


class FillFilterConfig(_Model):
    """Cleaning ultrasonic readings: range limits, a median window, step confirmation, lid gating."""

    min_mm: float = Field(default=30.0, ge=0, le=1000, description="closer echoes are ringing/near-zero: rejected")
    max_mm: float = Field(default=2000.0, gt=0, le=10_000, description="echoes this far or farther are max-range: rejected")
    window: int = Field(default=15, ge=1, le=1000, description="median over this many accepted readings")
    min_samples: int = Field(default=5, ge=1, le=1000)
    max_age_s: float = Field(default=30.0, gt=0, le=3600)
    jump_pct: float = Field(default=15.0, gt=0, le=100, description="a bigger change (share of the empty-full span) ...")
    confirm_s: float = Field(default=20.0, ge=0, le=3600, description="... must hold this long to count (a hand, a lid)")
    settle_s: float = Field(default=5.0, ge=0, le=600, description="readings after the lid closes are ignored this long")

    @model_validator(mode="after")
    def _consistent(self) -> FillFilterConfig:
        if self.max_mm <= self.min_mm:
            raise ValueError("max_mm must exceed min_mm")
        if self.min_samples > self.window:
            raise ValueError(f"min_samples ({self.min_samples}) must not exceed window ({self.window})")
        return self


class EmptyingConfig(_Model):
    """Automatic emptying detection: a sustained drop to near empty after the compartment had filled."""

    near_empty_pct: float = Field(default=10.0, ge=0, le=50)
    min_drop_pct: float = Field(default=20.0, gt=0, le=100, description="it must have reached at least this fill first")
    confirm_s: float = Field(default=30.0, ge=0, le=3600)


class FillConfig(_Model):
    """Fill tracking of every compartment."""

    almost_full_pct: float = Field(default=80.0, gt=0, le=100)
    full_pct: float = Field(default=95.0, gt=0, le=100)
    hysteresis_pct: float = Field(default=5.0, ge=0, le=50)
    temperature_compensation: bool = Field(default=True, description="correct the speed of sound with the MCU's t=")
    filter: FillFilterConfig = Field(default_factory=FillFilterConfig)
    emptying: EmptyingConfig = Field(default_factory=EmptyingConfig)
    history_interval_s: float = Field(default=300.0, ge=1, le=86400, description="one history point per compartment this often")
    history_retention_days: float = Field(default=90.0, gt=0, le=3650)
    forecast_min_span_s: float = Field(default=1800.0, ge=0, le=30 * 86400,
                                       description="history since the last emptying must span this before a forecast")
    forecast_min_points: int = Field(default=3, ge=2, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> FillConfig:
        if self.almost_full_pct >= self.full_pct:
            raise ValueError(f"almost_full_pct ({self.almost_full_pct}) must be below full_pct ({self.full_pct})")
        if self.emptying.near_empty_pct >= self.emptying.min_drop_pct:
            raise ValueError("emptying.near_empty_pct must be below emptying.min_drop_pct")
        return self


class WorkflowConfig(_Model):
    """The sorting workflow's timeouts and fault policies."""

    decision_timeout_s: float = Field(default=10.0, gt=0, le=300, description="no decision by then: the item goes to residual")
    route_timeout_s: float = Field(default=5.0, gt=0, le=120, description="no answer to ROUTE by then counts as no ACK")
    confirm_timeout_s: float = Field(default=8.0, gt=0, le=300, description="no drop/weight/fill change by then: unconfirmed")
    weight_step_g: float = Field(default=5.0, gt=0, le=10_000, description="a load change this big confirms a drop")
    fill_step_pct: float = Field(default=1.0, gt=0, le=100, description="a fill rise this big confirms a drop")
    fallback_compartment: TopicName | None = Field(
        default=None, description="where items go when their compartment is full; null: refuse them (lid locked)")
    degraded_policy: Literal["residual", "refuse"] = Field(
        default="residual", description="camera or detector down: send everything to residual, or refuse items")
    vision_grace_s: float = Field(default=10.0, ge=0, le=3600, description="a camera gap shorter than this is not 'down'")
    history_days: float = Field(default=90.0, gt=0, le=3650, description="item history (history/items, history/counts) "
                                                                          "kept this long")


class BinsConfig(_Model):
    """The bin itself: compartments, fill tracking and the sorting workflow."""

    enabled: bool = False
    compartments: list[CompartmentConfig] = Field(default_factory=list)
    fill: FillConfig = Field(default_factory=FillConfig)
    workflow: WorkflowConfig = Field(default_factory=WorkflowConfig)

    @model_validator(mode="after")
    def _consistent(self) -> BinsConfig:
        if not self.enabled:
            return self
        problems: list[str] = []
        if not self.compartments:
            problems.append("compartments: at least one compartment is needed when bins.enabled is true")
        ids = [c.id for c in self.compartments]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            problems.append(f"compartments: duplicate id(s) {', '.join(dupes)}")
        flaps = [self.flap_of(c) for c in self.compartments]
        dup_flaps = sorted({f for f in flaps if flaps.count(f) > 1})
        if dup_flaps:
            problems.append(f"compartments: two compartments share flap position(s) {dup_flaps}")
        sensors = [(c.sensor.source, c.sensor.channel) for c in self.compartments if c.sensor is not None]
        if len(set(sensors)) != len(sensors):
            problems.append("compartments: two compartments read the same sensor")
        if self.compartments and not any("residual" in c.categories for c in self.compartments):
            problems.append("compartments: one compartment must accept 'residual' (uncertain items go there)")
        fallback = self.workflow.fallback_compartment
        if fallback is not None and fallback not in ids:
            problems.append(f"workflow.fallback_compartment: {fallback!r} is not a compartment id ({', '.join(ids)})")
        if problems:
            raise ValueError("\n".join(problems + [""]))
        return self

    def flap_of(self, c: CompartmentConfig) -> int:
        """The Arduino ROUTE position of a compartment."""
        if c.flap is not None:
            return c.flap
        if c.sensor is not None:
            return c.sensor.channel
        return self.compartments.index(c) + 1

    def compartment_for(self, category: str) -> CompartmentConfig | None:
        """The first compartment accepting `category`, else the one accepting residual."""
        for c in self.compartments:
            if category in c.categories:
                return c
        for c in self.compartments:
            if "residual" in c.categories:
                return c
        return None


