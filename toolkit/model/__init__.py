"""The model: where it is found, loading (hub, folder, random init, GGUF), attention kernels, RoPE methods and
extension, LoRA, the weights saved at the end of a run and the copy sharded runs evaluate."""
