"""Human-preference prediction with a run trained on ``format: arena`` data: ``python -m toolkit predict``."""
