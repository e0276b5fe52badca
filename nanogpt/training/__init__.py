"""Training: processes, the optimizer step, optimizers, learning-rate schedules and the run log."""
