"""Many processes: what accelerate's engines (DDP, FSDP2, DeepSpeed) are handed, and sequence parallelism with
the data each process takes."""
