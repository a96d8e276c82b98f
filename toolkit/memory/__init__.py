"""Memory features for long sequences: chunked loss, activation checkpointing/offload, tiled MLP, optimizers."""
