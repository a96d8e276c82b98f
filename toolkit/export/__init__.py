"""Export a trained model for other runtimes: GGUF for llama.cpp and Ollama (:mod:`toolkit.export.to_gguf`), and
evaluation in llama.cpp on the exported file (:mod:`toolkit.export.llama_cpp_backend`, ``export --check``)."""
