"""Scoring a model on a split exactly once across ranks: metrics, outliers, reports, predict."""
