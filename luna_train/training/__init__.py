"""Training: assemble a run, the loop, checkpoints, schedule, distributed helpers, run log and plots."""
