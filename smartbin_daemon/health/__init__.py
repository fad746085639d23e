"""System and GPU health: platform readers, pure scoring, and the HealthMonitor worker."""

from __future__ import annotations

from .monitor import HealthMonitor, health_entities
from .scoring import Assessment, Metrics, evaluate

__all__ = ["Assessment", "HealthMonitor", "Metrics", "evaluate", "health_entities"]
