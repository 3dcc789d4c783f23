"""Evaluation of translations: metrics (``evaluate_images``) and the ``gan-style eval`` command.

The heavy dependencies (torchmetrics, torch-fidelity) are imported inside the functions that use
them, so importing this package (and ``gan-style --help``) stays fast.
"""

from gan_style.evaluation.metrics import HIGHER_IS_BETTER, METRIC_KEYS, METRICS, evaluate_images, measure_speed

__all__ = ["HIGHER_IS_BETTER", "METRICS", "METRIC_KEYS", "evaluate_images", "measure_speed"]
