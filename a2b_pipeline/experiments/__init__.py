"""Many runs of one question: sweeps, cross-validation, the leaderboard."""
