"""Tracking: the Tracker protocol the pipeline logs through, MLflow behind it, a null one for tests."""

from medxp.tracking.base import Tracker
from medxp.tracking.null import NullTracker

__all__ = ["Tracker", "NullTracker"]
