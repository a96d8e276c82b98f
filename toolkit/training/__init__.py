"""The one training loop shared by every method and stage, and what it needs: schedule, objective,
checkpoints, metrics and fault handling."""
