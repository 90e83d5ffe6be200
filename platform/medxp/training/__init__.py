"""Training: the epoch loop (no tracking), the trainer with callbacks, metrics and plots."""
