"""Training: the built-in loop that a run's worker drives."""
