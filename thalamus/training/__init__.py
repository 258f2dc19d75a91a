"""Training: fit a named router on a dataset into an artifact directory, with optional CV tuning."""
