"""Evaluating a trained model: metrics, baselines, scoring, the verdict against the baselines, predictions."""

# <run_dir>/evaluation-<split>.json: a run's latest evaluation of a split. Named here, in a module without
# torch, for the readers of reports that must start fast (the leaderboard).
REPORT_FILE = "evaluation-{split}.json"
