"""Evaluation: metrics in millimetres, reports (CSV, JSON, Markdown), pictures and the model summary."""
from __future__ import annotations

from seg3d.evaluation.evaluate import evaluate_folder, load_labels, match_cases
from seg3d.evaluation.metrics import CONVENTIONS, ClassMetrics, case_metrics

__all__ = ["CONVENTIONS", "ClassMetrics", "case_metrics", "evaluate_folder", "load_labels", "match_cases"]
