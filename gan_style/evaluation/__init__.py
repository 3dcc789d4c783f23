"""Evaluation of translations: metrics (``evaluate_images``) and the ``gan-style eval`` command.

The metrics module (and torch with it) is imported on first use of a name below, so importing
this package, or one of its commands' modules for ``gan-style --help``, stays fast; the heavy
dependencies (torchmetrics, torch-fidelity) are imported inside the functions that use them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["HIGHER_IS_BETTER", "METRICS", "METRIC_KEYS", "evaluate_images", "measure_speed"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("gan_style.evaluation.metrics"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
