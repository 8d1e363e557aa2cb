"""Many runs of one question: sweeps, cross-validation, the leaderboard."""

# <cv dir>/cv_summary.json: a cross-validation's mean and std over folds. Named here, in a module without
# torch, for the readers that must start fast (the leaderboard).
CV_SUMMARY_FILE = "cv_summary.json"
