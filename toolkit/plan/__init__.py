"""``python -m toolkit plan``: the memory model of a training step and the advice built on it."""
