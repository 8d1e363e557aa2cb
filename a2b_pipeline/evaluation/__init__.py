"""Evaluating a trained model: metrics, baselines, scoring, the verdict against the baselines, predictions."""
