"""Export a trained model for other runtimes: GGUF for llama.cpp and Ollama (:mod:`toolkit.export.to_gguf`)."""
